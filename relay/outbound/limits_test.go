package outbound

import (
	"context"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-smtp"

	"github.com/mailhop/mailhop/dnsmx/dnstest"
	"github.com/mailhop/mailhop/relay/outbound/smtptest"
)

func TestLimiter_PerDomain(t *testing.T) {
	l := newLimiter(2, nil)
	ctx := context.Background()
	r1, err1 := l.acquire(ctx, "a.test")
	r2, err2 := l.acquire(ctx, "a.test")
	if err1 != nil || err2 != nil {
		t.Fatal(err1, err2)
	}
	done, cancel := context.WithCancel(ctx)
	cancel()
	if _, err := l.acquire(done, "a.test"); err == nil {
		t.Fatal("third slot granted with a limit of 2")
	}
	r3, err := l.acquire(ctx, "b.test") // other domains are not affected
	if err != nil {
		t.Fatal(err)
	}
	r1()
	r4, err := l.acquire(ctx, "a.test")
	if err != nil {
		t.Fatal(err)
	}
	r2()
	r3()
	r4()
	if len(l.m) != 0 {
		t.Errorf("limiter keeps %d idle domains", len(l.m))
	}
}

func TestDelivery_ImplicitMX(t *testing.T) {
	t.Parallel()
	z := dnstest.Zone{"implicit.test.": {dnstest.A("implicit.test", "127.0.0.2")}}
	h := newHarness(t, smtptest.Behaviour{}, z)
	h.start()
	id := h.submit(testBody, []string{"a@implicit.test"})
	h.waitRecords(id, 1)
	if len(h.first.Messages()) != 1 {
		t.Fatal("not delivered to the implicit MX")
	}
}

func TestDelivery_5xxIsAnAnswer_421MovesOn(t *testing.T) {
	t.Parallel()
	z := dnstest.Zone{}
	addMX(z, "reject.test", 10, "mx1.reject.test", "127.0.0.2")
	addMX(z, "reject.test", 20, "mx2.reject.test", "127.0.0.3")
	addMX(z, "closing.test", 10, "mx1.closing.test", "127.0.0.4")
	addMX(z, "closing.test", 20, "mx2.closing.test", "127.0.0.3")
	h := newHarness(t, smtptest.Behaviour{Rcpt: func(string, *smtp.RcptOptions) error {
		return smtptest.Reply(550, "5.1.1", "no such user")
	}}, z)
	h.server("127.0.0.4", smtptest.Behaviour{Mail: func(string, *smtp.MailOptions) error {
		return smtptest.Reply(421, "4.3.2", "shutting down")
	}})
	backup := h.server("127.0.0.3", smtptest.Behaviour{})
	h.start()
	id := h.submit(testBody, []string{"a@reject.test"})
	h.waitRecords(id, 1)
	if backup.Conns() != 0 {
		t.Fatal("a 5xx to RCPT made the agent try the next MX")
	}
	id = h.submit(testBody, []string{"a@closing.test"})
	h.waitRecords(id, 1)
	if m := backup.Messages(); len(m) != 1 || m[0].To[0] != "a@closing.test" {
		t.Fatalf("a 421 to MAIL did not move on to the next MX: %+v", m)
	}
}

// A message parked for a full domain is unparked when a slot frees;
// one that no longer waits is skipped for the next.
func TestLimiter_ParkUnpark(t *testing.T) {
	var unparked []string
	gone := map[string]bool{"m2": true}
	l := newLimiter(1, func(_, id string) bool {
		unparked = append(unparked, id)
		return !gone[id]
	})
	r1, ok := l.acquireOrPark("a.test", "m1", func() bool { t.Fatal("parked with a free slot"); return false })
	if !ok {
		t.Fatal("no slot")
	}
	for _, id := range []string{"m2", "m3", "m4"} {
		if _, ok := l.acquireOrPark("a.test", id, func() bool { return true }); ok {
			t.Fatalf("%s got a second slot with a limit of 1", id)
		}
	}
	if _, ok := l.acquireOrPark("a.test", "m5", func() bool { return false }); ok {
		t.Fatal("slot for m5")
	}
	r1()
	if strings.Join(unparked, " ") != "m2 m3" {
		t.Errorf("unparked %v, want m2 (gone) then m3", unparked)
	}
	r3, ok := l.acquireOrPark("a.test", "m3", nil)
	if !ok {
		t.Fatal("m3 unparked without a slot")
	}
	r3()
	if strings.Join(unparked, " ") != "m2 m3 m4" {
		t.Errorf("unparked %v", unparked)
	}
	r4, ok := l.tryAcquire("a.test", "m4")
	if !ok {
		t.Fatal("m4 unparked without a slot")
	}
	r4()
	if len(l.m) != 0 {
		t.Errorf("limiter keeps %d idle domains", len(l.m))
	}
}

// A message unparked for a freed slot gets that slot when it comes back:
// mail that arrived meanwhile does not take it (parked mail was overtaken
// by newer mail for as long as that kept coming: one message waited 48 s
// behind 18 newer ones on a loopback rig). A slot kept for a message that
// does not come is given to the next parked one.
func TestLimiter_UnparkedKeepsItsSlot(t *testing.T) {
	var unparked []string
	l := newLimiter(1, func(_, id string) bool {
		unparked = append(unparked, id)
		return true
	})
	r1, ok := l.tryAcquire("a.test", "m1")
	if !ok {
		t.Fatal("no slot")
	}
	for _, id := range []string{"m2", "m3"} {
		if _, ok := l.acquireOrPark("a.test", id, func() bool { return true }); ok {
			t.Fatalf("%s got a second slot with a limit of 1", id)
		}
	}
	r1()
	if strings.Join(unparked, " ") != "m2" {
		t.Fatalf("unparked %v, want m2", unparked)
	}
	if _, ok := l.tryAcquire("a.test", "new"); ok {
		t.Fatal("newer mail took the slot freed for m2")
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel() // acquire takes a free slot before it looks at ctx
	if _, err := l.acquire(ctx, "a.test"); err == nil {
		t.Fatal("a waiter took the slot freed for m2")
	}
	r2, ok := l.tryAcquire("a.test", "m2")
	if !ok {
		t.Fatal("m2 came back to no slot")
	}
	r2()
	if strings.Join(unparked, " ") != "m2 m3" {
		t.Fatalf("unparked %v, want m2 m3", unparked)
	}
	l.unreserve("a.test", "m3") // m3 does not come back (its timer)
	r, ok := l.tryAcquire("a.test", "new")
	if !ok {
		t.Fatal("the slot kept for m3 was not given back")
	}
	r()
	if len(l.m) != 0 {
		t.Errorf("limiter keeps %d idle domains", len(l.m))
	}
}

// Waiters get slots in the order they came, a release hands its slot to
// one waiter (the others stay asleep), and a waiter that gives up as it is
// handed a slot passes the slot on.
func TestSem_FIFOHandOff(t *testing.T) {
	s := newSem(1)
	ctx := context.Background()
	if err := s.acquire(ctx); err != nil {
		t.Fatal(err)
	}
	got := make(chan int, 3)
	for i := range 3 {
		go func() {
			if s.acquire(ctx) == nil {
				got <- i
			}
		}()
		for { // wait until waiter i is queued, so the order is known
			s.mu.Lock()
			n := len(s.waiters)
			s.mu.Unlock()
			if n == i+1 {
				break
			}
			runtime.Gosched()
		}
	}
	for want := range 3 {
		s.release()
		if i := <-got; i != want {
			t.Fatalf("slot %d went to waiter %d", want, i)
		}
		select {
		case i := <-got:
			t.Fatalf("one release let waiter %d in as well", i)
		default:
		}
	}
	if s.tryAcquire() {
		t.Fatal("a slot free while the last waiter holds the only one")
	}
	s.release()

	// A waiter whose context ends passes a slot handed to it on.
	if err := s.acquire(ctx); err != nil {
		t.Fatal(err)
	}
	cctx, cancel := context.WithCancel(ctx)
	errc := make(chan error, 1)
	go func() { errc <- s.acquire(cctx) }()
	for {
		s.mu.Lock()
		n := len(s.waiters)
		s.mu.Unlock()
		if n == 1 {
			break
		}
		runtime.Gosched()
	}
	cancel()
	if err := <-errc; err == nil {
		t.Fatal("acquire succeeded after its context ended")
	}
	s.release()
	if !s.tryAcquire() {
		t.Fatalf("slot lost: n=%d max=%d waiters=%d", s.n, s.max, len(s.waiters))
	}
}

// A wait that runs out gives errWaitedTooLong and leaves no waiter behind.
func TestSem_WaitRunsOut(t *testing.T) {
	s := newSem(1)
	if !s.tryAcquire() {
		t.Fatal("empty semaphore refused")
	}
	fired := make(chan time.Time, 1)
	fired <- time.Now()
	if err := s.acquireWithin(context.Background(), fired); err != errWaitedTooLong {
		t.Fatalf("acquireWithin = %v, want errWaitedTooLong", err)
	}
	if len(s.waiters) != 0 || s.n != 1 {
		t.Fatalf("after the wait: %d waiters, %d taken", len(s.waiters), s.n)
	}
	s.release()
	if !s.tryAcquire() {
		t.Fatal("slot lost")
	}
}

// A freed slot goes to the oldest parked message (kept for it) before a
// delivery that waits in acquire: parked mail is the older.
func TestLimiter_ParkedBeforeWaiters(t *testing.T) {
	var called []string
	l := newLimiter(1, func(_, id string) bool { called = append(called, id); return true })
	r1, ok := l.tryAcquire("a.test", "m1")
	if !ok {
		t.Fatal("first slot refused")
	}
	if _, ok := l.acquireOrPark("a.test", "m2", func() bool { return true }); ok {
		t.Fatal("m2 got a slot while m1 holds the only one")
	}
	got := make(chan func(), 1)
	go func() {
		r, err := l.acquire(context.Background(), "a.test")
		if err != nil {
			t.Error(err)
		}
		got <- r
	}()
	for { // until the waiter is queued
		l.mu.Lock()
		sm := l.m["a.test"].sem
		l.mu.Unlock()
		sm.mu.Lock()
		n := len(sm.waiters)
		sm.mu.Unlock()
		if n == 1 {
			break
		}
		runtime.Gosched()
	}
	r1()
	if len(called) != 1 || called[0] != "m2" {
		t.Fatalf("called back %v, want [m2]", called)
	}
	select {
	case <-got:
		t.Fatal("the waiter got the slot kept for m2")
	default:
	}
	r2, ok := l.tryAcquire("a.test", "m2")
	if !ok {
		t.Fatal("m2 did not get the slot kept for it")
	}
	r2()
	(<-got)() // then the waiter's turn
}

// A sweep unparks for a slot that is free with mail still parked, a slot
// that freed with no release to call the next parked message (here freed
// behind the limiter's back), and keeps the slot for it.
func TestLimiter_SweepUnparksForFreeSlot(t *testing.T) {
	var unparked []string
	l := newLimiter(1, func(_, id string) bool {
		unparked = append(unparked, id)
		return true
	})
	if _, ok := l.acquireOrPark("a.test", "m1", nil); !ok {
		t.Fatal("no slot")
	}
	for _, id := range []string{"m2", "m3"} {
		l.acquireOrPark("a.test", id, func() bool { return true })
	}
	l.m["a.test"].sem.release() // m1's slot, freed without a call
	l.sweep()
	if strings.Join(unparked, " ") != "m2" {
		t.Fatalf("unparked %v, want m2 by the sweep", unparked)
	}
	l.sweep() // the slot is kept for m2: nothing more
	if len(unparked) != 1 {
		t.Fatalf("unparked %v, want only m2", unparked)
	}
	r2, ok := l.tryAcquire("a.test", "m2")
	if !ok {
		t.Fatal("m2 came back to no slot")
	}
	r2()
	if strings.Join(unparked, " ") != "m2 m3" {
		t.Fatalf("unparked %v, want m2 m3", unparked)
	}
}

// After a reload lowered the limit, a freed slot goes to parked mail only
// once the domain is within the new limit.
func TestLimiter_LoweredLimitNotRefilled(t *testing.T) {
	var unparked []string
	l := newLimiter(2, func(_, id string) bool { unparked = append(unparked, id); return true })
	r1, ok1 := l.tryAcquire("a.test", "m1")
	r2, ok2 := l.tryAcquire("a.test", "m2")
	if !ok1 || !ok2 {
		t.Fatal("slots refused")
	}
	if _, ok := l.acquireOrPark("a.test", "m3", func() bool { return true }); ok {
		t.Fatal("third slot with a limit of 2")
	}
	l.setMax(1)
	r1()
	if len(unparked) != 0 {
		t.Fatalf("unparked %v with 1 slot taken and a limit of 1", unparked)
	}
	r2()
	if len(unparked) != 1 || unparked[0] != "m3" {
		t.Fatalf("unparked %v, want m3 once the domain is within its limit", unparked)
	}
	r3, ok := l.tryAcquire("a.test", "m3")
	if !ok {
		t.Fatal("m3 came back to no slot")
	}
	r3()
}

// A wait with a limit for a domain that has parked mail gives up at once:
// every slot that frees goes to the parked mail first, so the wait could
// only run out, holding one of the delivery.concurrency delivery slots the
// whole time. Under a burst of mail due for a stalled domain (its dead mark
// ended), the deliveries beyond its slots each waited a second in turn, and
// mail to every other domain waited behind them (servfail and 451 retries
// of other domains 4 to 7 s late on a loopback rig, concurrency 10).
func TestLimiter_NoWaitBehindParked(t *testing.T) {
	l := newLimiter(1, func(_, _ string) bool { return true })
	r1, ok := l.tryAcquire("a.test", "m1")
	if !ok {
		t.Fatal("first slot refused")
	}
	defer r1()
	if _, ok := l.acquireOrPark("a.test", "m2", func() bool { return true }); ok {
		t.Fatal("m2 got a slot while m1 holds the only one")
	}
	got := make(chan error, 1)
	go func() {
		_, err := l.acquireWithin(context.Background(), "a.test", time.Minute)
		got <- err
	}()
	select {
	case err := <-got:
		if err != errWaitedTooLong {
			t.Fatalf("got %v, want errWaitedTooLong", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the wait did not give up at once with m2 parked for the domain")
	}
	l.mu.Lock()
	users := l.m["a.test"].users
	l.mu.Unlock()
	if users != 2 {
		t.Fatalf("domain entry has %d users, want 2 (m1 and parked m2)", users)
	}
}

// acquire waits for key's slot without a time limit (delivery itself always
// gives one: parkAfter).
func (l *limiter) acquire(ctx context.Context, key string) (func(), error) {
	return l.acquireWithin(ctx, key, 0)
}
