package outbound

import (
	"context"
	"strings"
	"testing"

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
	l := newLimiter(1, func(id string) bool {
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
	if len(l.m) != 0 {
		t.Errorf("limiter keeps %d idle domains", len(l.m))
	}
}

// A sweep unparks for a slot that is free with mail still parked (the
// message unparked for it never came to take it), and forgets the domain
// once nothing is left.
func TestLimiter_SweepUnparksForFreeSlot(t *testing.T) {
	var unparked []string
	l := newLimiter(1, func(id string) bool {
		unparked = append(unparked, id)
		return true
	})
	r1, _ := l.acquireOrPark("a.test", "m1", nil)
	for _, id := range []string{"m2", "m3"} {
		l.acquireOrPark("a.test", id, func() bool { return true })
	}
	r1() // unparks m2, which is then deleted: it takes no slot
	l.sweep()
	if strings.Join(unparked, " ") != "m2 m3" {
		t.Errorf("unparked %v, want m2 then, by the sweep, m3", unparked)
	}
	if len(l.m) != 0 {
		t.Errorf("limiter keeps %d idle domains", len(l.m))
	}
}
