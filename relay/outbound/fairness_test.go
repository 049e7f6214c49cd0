package outbound

import (
	"context"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/emersion/go-smtp"
	"github.com/miekg/dns"

	"github.com/mailhop/mailhop/dnsmx"
	"github.com/mailhop/mailhop/queue"
	"github.com/mailhop/mailhop/relay/config"
	"github.com/mailhop/mailhop/relay/outbound/smtptest"
	"github.com/mailhop/mailhop/relay/smtperr"
)

// Mail waiting for a stalled domain's connection slots must not take the
// delivery slots (delivery.concurrency) of mail to other domains: with 20
// messages to a server that never greets, the 5 beyond per_domain_concurrency
// used to wait holding the other 5 of 10 slots, and a message to a healthy
// domain waited for the stalled ones' greeting timeout.
func TestDelivery_StalledDomain_NoHeadOfLineBlocking(t *testing.T) {
	t.Parallel()
	h := newHarness(t, smtptest.Behaviour{}, zone("example.test", "127.0.0.2", "stall.test", "127.0.0.3"))
	tarpit := h.server("127.0.0.3", smtptest.Behaviour{StallGreeting: true})
	h.cfg.Delivery.GreetingTimeout.Duration = time.Minute // longer than the test
	h.start()
	var stalled []string
	for range 20 {
		stalled = append(stalled, h.submit(testBody, []string{"a@stall.test"}))
	}
	id := h.submit(testBody, []string{"a@example.test"})
	h.first.Wait(t, 1) // 10 s at most
	h.waitRecords(id, 1)
	if n := tarpit.Conns(); n > h.cfg.Delivery.PerDomainConcurrency {
		t.Errorf("%d connections to the stalled domain, per_domain_concurrency %d", n, h.cfg.Delivery.PerDomainConcurrency)
	}
	for _, sid := range stalled {
		if env := h.envelope(sid); env == nil || env.Attempts != 0 {
			t.Errorf("%s: %+v, want still queued, no attempt", sid, env)
		}
	}
}

// The same for mail to several domains: a message with a recipient in a
// stalled domain whose slots are all taken must not hold a delivery slot
// while it waits for one. Messages to a stalled and a healthy domain each
// waited in limitedGroup for the stalled domain's slot, holding their
// delivery slots, until no delivery was left for any other domain (a soak
// run stalled all delivery for 10 s); now the wait is that of a single-domain
// message before it parks, and the stalled domain's recipients are deferred.
func TestDelivery_StalledDomain_SeveralDomains_NoHeadOfLineBlocking(t *testing.T) {
	t.Parallel()
	h := newHarness(t, smtptest.Behaviour{}, zone("example.test", "127.0.0.2", "stall.test", "127.0.0.3", "other.test", "127.0.0.4"))
	tarpit := h.server("127.0.0.3", smtptest.Behaviour{StallGreeting: true})
	other := h.server("127.0.0.4", smtptest.Behaviour{})
	h.cfg.Delivery.GreetingTimeout.Duration = time.Minute // longer than the test
	h.start()
	var both []string
	for range 20 {
		both = append(both, h.submit(testBody, []string{"a@stall.test", "b@other.test"}))
	}
	id := h.submit(testBody, []string{"a@example.test"})
	h.first.Wait(t, 1) // 10 s at most
	h.waitRecords(id, 1)
	other.Wait(t, 20)
	if n := tarpit.Conns(); n > h.cfg.Delivery.PerDomainConcurrency {
		t.Errorf("%d connections to the stalled domain, per_domain_concurrency %d", n, h.cfg.Delivery.PerDomainConcurrency)
	}
	// The messages beyond the stalled domain's slots end their attempt,
	// that domain's recipient deferred.
	want := len(both) - h.cfg.Delivery.PerDomainConcurrency
	timeout := time.NewTimer(15 * time.Second)
	defer timeout.Stop()
	for {
		h.mu.Lock()
		var done []string
		for _, sid := range both {
			if h.records[sid] > 0 {
				done = append(done, sid)
			}
		}
		ch := h.changed
		h.mu.Unlock()
		if len(done) >= want {
			for _, sid := range done {
				h.rcptPendingWith(sid, 0, "no connection slot to stall.test free")
			}
			return
		}
		select {
		case <-ch:
		case <-timeout.C:
			t.Fatalf("%d of the messages to both domains recorded after 15s, want %d", len(done), want)
		}
	}
}

// Parked mail past max_queue_age bounces after the attempt that finds it too
// old, as Postfix bounces expired mail (it waits in the active queue for a
// slot of its destination): behind a tarpit, when the stalled session times
// out and the domain is found dead. It bounced at max_queue_age without an
// attempt; before that, it waited past it for as long as the domain's
// slots stayed busy (a soak run: 375 s old with a max_queue_age of 180 s).
func TestDelivery_Parked_ExpiresAfterFinalAttempt(t *testing.T) {
	t.Parallel()
	h := newHarness(t, smtptest.Behaviour{}, zone("stall.test", "127.0.0.3"))
	tarpit := h.server("127.0.0.3", smtptest.Behaviour{StallGreeting: true})
	h.cfg.Delivery.GreetingTimeout.Duration = 4 * time.Second
	h.cfg.Delivery.PerDomainConcurrency = 1
	h.cfg.Delivery.MaxQueueAge.Duration = 2 * time.Second
	h.start()
	// One takes the slot and stalls; the other parks, and is past its
	// max_queue_age long before the first's greeting times out.
	ids := []string{h.submit(testBody, []string{"a@stall.test"}), h.submit(testBody, []string{"b@stall.test"})}
	for _, id := range ids {
		deadline := time.Now().Add(15 * time.Second)
		for h.envelope(id) != nil {
			h.mu.Lock()
			ch := h.changed
			h.mu.Unlock()
			select {
			case <-ch:
			case <-time.After(time.Until(deadline)):
				t.Fatalf("%s still queued 15 s on, past its max_queue_age", id)
			}
		}
	}
	// The line follows the outcome's record, which took the message out.
	for _, id := range ids {
		h.logs.WaitLine(5*time.Second, "msg=expired queue_id="+id)
	}
	logs := h.logs.String()
	dead := strings.Index(logs, "destination marked dead")
	for _, id := range ids {
		if i := strings.Index(logs, "msg=expired queue_id="+id); i < 0 || i < dead || dead < 0 {
			t.Errorf("%s: 'expired' line at %d, 'destination marked dead' at %d: want it expired after the domain's attempt", id, i, dead)
		}
	}
	if n := tarpit.Conns(); n != 1 {
		t.Errorf("%d connections to the tarpit, want 1 (the other deferred as suspended)", n)
	}
}

// A message past max_queue_age whose domain has no free connection slot
// waits for one and gets its final attempt then, as in Postfix: here it is
// delivered. It bounced at once, no server asked.
func TestDelivery_ExpiredWaitingForSlot_FinalAttempt(t *testing.T) {
	t.Parallel()
	h := newHarness(t, smtptest.Behaviour{}, zone("example.test", "127.0.0.2"))
	h.cfg.Delivery.PerDomainConcurrency = 1
	h.cfg.Delivery.MaxQueueAge.Duration = 48 * time.Hour
	h.start()
	hold, ok := h.agent.domains.tryAcquire("example.test", "") // the domain's one slot, busy
	if !ok {
		t.Fatal("no slot")
	}
	id := h.submit(testBody, []string{"a@example.test"}, func(e *queue.Envelope) { e.Arrived = time.Now().Add(-49 * time.Hour) })
	h.waitRecords(id, 1)
	env := h.envelope(id)
	if env == nil || env.Attempts != 0 || env.Recipients[0].State != queue.Pending {
		t.Fatalf("after waiting for a slot in vain: %+v; want still queued, no attempt counted", env)
	}
	hold()
	h.first.Wait(t, 1)
	h.waitRecords(id, 2)
	if env := h.envelope(id); env != nil {
		t.Errorf("still queued after its delivery: %+v", env)
	}
	if strings.Contains(h.logs.String(), "msg=expired") {
		t.Error("expired before its final attempt")
	}
}

// A message to several domains, one of which has no free connection slot,
// is not counted an attempt for it and does not wait for its next retry:
// it waits for the slot, parked, and goes as soon as one frees (Postfix
// keeps it in the active queue). With every domain busy, none is counted
// either. It was deferred 4.4.5 with an attempt counted, to the next retry
// interval (an hour here).
func TestDelivery_SeveralDomains_WaitForSlot_NoAttemptCounted(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name string
		busy []string // domains whose one slot the test holds, freed in turn
		free string   // a domain with a free slot, or ""
	}{
		{name: "one busy", busy: []string{"busy.test"}, free: "example.test"},
		{name: "all busy", busy: []string{"busy.test", "busy2.test"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			h := newHarness(t, smtptest.Behaviour{}, zone("example.test", "127.0.0.2", "busy.test", "127.0.0.3", "busy2.test", "127.0.0.4"))
			busy := []*smtptest.Server{h.server("127.0.0.3", smtptest.Behaviour{}), h.server("127.0.0.4", smtptest.Behaviour{})}
			h.cfg.Delivery.PerDomainConcurrency = 1
			h.start()
			var holds []func()
			var rcpts []string
			for _, d := range tc.busy {
				hold, ok := h.agent.domains.tryAcquire(d, "")
				if !ok {
					t.Fatal("no slot")
				}
				holds = append(holds, hold)
				rcpts = append(rcpts, "a@"+d)
			}
			if tc.free != "" {
				rcpts = append(rcpts, "b@"+tc.free)
			}
			id := h.submit(testBody, rcpts)
			records := 1
			h.waitRecords(id, records)
			for i, hold := range holds {
				env := h.envelope(id)
				if env == nil || env.Attempts != 0 {
					t.Fatalf("waiting for a slot of %s: %+v; want queued, no attempt counted", tc.busy[i], env)
				}
				h.rcptPendingWith(id, i, "no connection slot to "+tc.busy[i]+" free")
				hold()
				busy[i].Wait(t, 1)
				records++
				h.waitRecords(id, records)
			}
			if env := h.envelope(id); env != nil {
				t.Errorf("still queued: %+v", env)
			}
			if tc.free != "" {
				h.first.Wait(t, 1)
			}
		})
	}
}

// A message to several domains, each without a free connection slot, waits
// for a slot of every one of them: the recipients of the domain whose slot
// frees first go at once. It was parked for the first domain only, so its
// recipients in the others waited for that one's slot (a tarpit's session,
// minutes) however soon their own freed.
func TestDelivery_SeveralDomains_AllBusy_GoesWhenAnyFrees(t *testing.T) {
	t.Parallel()
	h := newHarness(t, smtptest.Behaviour{}, zone("busy.test", "127.0.0.3", "busy2.test", "127.0.0.4"))
	busy2 := h.server("127.0.0.4", smtptest.Behaviour{})
	h.server("127.0.0.3", smtptest.Behaviour{})
	h.cfg.Delivery.PerDomainConcurrency = 1
	h.start()
	var holds []func()
	for _, d := range []string{"busy.test", "busy2.test"} {
		hold, ok := h.agent.domains.tryAcquire(d, "")
		if !ok {
			t.Fatal("no slot")
		}
		holds = append(holds, hold)
	}
	defer holds[0]()
	id := h.submit(testBody, []string{"a@busy.test", "b@busy2.test"})
	h.waitRecords(id, 1)
	holds[1]() // busy.test stays taken
	busy2.Wait(t, 1)
	h.waitRecords(id, 2)
	h.rcptPendingWith(id, 0, "no connection slot to busy.test free")
	if env := h.envelope(id); env == nil || env.Attempts != 0 || env.Recipients[1].State != queue.Delivered {
		t.Fatalf("after busy2.test's slot freed: %+v; want b@busy2.test delivered, no attempt counted", env)
	}
}

// A domain's slot calls back only parked mail that still has recipients
// there: a message parked for several domains' slots stays in each one's
// list after it goes for one of them, and when that domain frees a slot
// later, while the message is parked for another, it kept the slot idle for
// it (callWait) and handed it out for nothing.
func TestDelivery_Parked_NotCalledByDomainDeliveredTo(t *testing.T) {
	t.Parallel()
	h := newHarness(t, smtptest.Behaviour{}, zone("example.test", "127.0.0.2", "busy.test", "127.0.0.3"))
	busy := h.server("127.0.0.3", smtptest.Behaviour{})
	h.cfg.Delivery.PerDomainConcurrency = 1
	h.start()
	hold, ok := h.agent.domains.tryAcquire("busy.test", "")
	if !ok {
		t.Fatal("no slot")
	}
	id := h.submit(testBody, []string{"a@example.test", "b@busy.test"})
	h.waitRecords(id, 1)
	h.first.Wait(t, 1)
	if _, parked := h.q.Activity(id); !parked {
		t.Fatal("not parked for busy.test")
	}
	// What its entry in example.test's list, had it waited there too,
	// does when a slot of example.test frees (one is free now).
	h.agent.domains.park("example.test", id)
	if _, parked := h.q.Activity(id); !parked {
		t.Fatal("called back by example.test, where it has no recipient left")
	}
	hold()
	busy.Wait(t, 1)
	h.waitRecords(id, 2)
	if env := h.envelope(id); env != nil {
		t.Errorf("still queued: %+v", env)
	}
}

// After an attempt in which no host of a domain answered, its other mail is
// deferred at once ("delivery temporarily suspended"), not sent to wait for
// the same timeout each; a flush tries the domain again.
func TestDelivery_DeadDestination_Suspended(t *testing.T) {
	t.Parallel()
	h := newHarness(t, smtptest.Behaviour{}, zone("example.test", "127.0.0.2", "stall.test", "127.0.0.3"))
	tarpit := h.server("127.0.0.3", smtptest.Behaviour{StallGreeting: true})
	h.cfg.Delivery.GreetingTimeout.Duration = 300 * time.Millisecond
	h.start()
	first := h.submit(testBody, []string{"a@stall.test"})
	h.waitRecords(first, 1)
	var ids []string
	for range 10 {
		ids = append(ids, h.submit(testBody, []string{"a@stall.test"}))
	}
	for _, id := range ids {
		h.waitRecords(id, 1)
		env := h.envelope(id)
		if env == nil || env.Recipients[0].State != queue.Pending || !strings.Contains(env.LastError, "delivery temporarily suspended") ||
			!strings.Contains(env.LastError, "timed out during greeting") {
			t.Errorf("%s: %+v, want pending, suspended for the greeting timeout", id, env)
		}
	}
	if n := tarpit.Conns(); n != 1 {
		t.Errorf("%d connections to the dead destination, want 1", n)
	}
	// Other domains are not affected.
	ok := h.submit(testBody, []string{"a@example.test"})
	h.first.Wait(t, 1)
	h.waitRecords(ok, 1)
	// A flush retries the dead destination.
	h.q.Flush("stall.test")
	h.waitRecords(first, 2)
	if n := tarpit.Conns(); n < 2 {
		t.Errorf("%d connections after a flush, want a new attempt", n)
	}
}

// A domain whose MX lookup gets no answer (SERVFAIL, a timeout) is dead as
// one none of whose hosts answered: its other mail is deferred at once,
// without a lookup each, as Postfix suspends it ("Host or domain name not
// found ... try again"). Each message waited for its own lookup in turn,
// holding one of the domain's connection slots (a DNS server that does not
// answer: 5 s each).
func TestDelivery_DNSFailure_DestinationSuspended(t *testing.T) {
	t.Parallel()
	h := newHarness(t, smtptest.Behaviour{}, zone("example.test", "127.0.0.2"))
	h.dns.SetRcode("servfail.test.", dns.RcodeServerFailure)
	h.start()
	first := h.submit(testBody, []string{"a@servfail.test"})
	h.waitRecords(first, 1)
	queries := h.dns.Queries()
	var ids []string
	for range 5 {
		ids = append(ids, h.submit(testBody, []string{"a@servfail.test"}))
	}
	for _, id := range ids {
		h.waitRecords(id, 1)
		env := h.envelope(id)
		if env == nil || env.Recipients[0].State != queue.Pending || !strings.Contains(env.LastError, "delivery temporarily suspended") ||
			!strings.Contains(env.LastError, "dns servfail.test") {
			t.Errorf("%s: %+v, want pending, suspended for the failed lookup", id, env)
		}
	}
	if n := h.dns.Queries() - queries; n != 0 {
		t.Errorf("%d more DNS queries for the suspended domain, want none", n)
	}
	// Other domains are not affected.
	ok := h.submit(testBody, []string{"a@example.test"})
	h.first.Wait(t, 1)
	h.waitRecords(ok, 1)
}

// An attempt whose lookup began before a queue flush does not mark the
// domain dead when it fails after it: the operator repairs DNS (or the
// network) and flushes, the lookups under way before still time out, and
// their mark, made with the flush already counted, deferred the flushed
// mail "delivery temporarily suspended" without a lookup.
func TestDelivery_DNSFailure_FlushDuringLookup_NotDead(t *testing.T) {
	t.Parallel()
	h := newHarness(t, smtptest.Behaviour{}, zone("example.test", "127.0.0.2"))
	held := heldDNS(t, h.dns, "slow.test.")
	h.editOpts = func(o *Options) {
		r, err := dnsmx.NewResolver([]string{held.addr}, 5*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		o.Resolver = r
	}
	h.start()
	first := h.submit(testBody, []string{"a@slow.test"})
	<-held.asked // its MX lookup is under way
	h.q.Flush("")
	held.answer() // SERVFAIL, to this lookup and every later one
	h.waitRecords(first, 1)
	asked := held.queries.Load()
	second := h.submit(testBody, []string{"b@slow.test"})
	h.waitRecords(second, 1)
	if env := h.envelope(second); env == nil || strings.Contains(env.LastError, "suspended") {
		t.Errorf("mail queued after the flush: %+v, want it tried, not suspended by an attempt from before", env)
	}
	if held.queries.Load() == asked {
		t.Error("no lookup for the mail queued after the flush")
	}
}

// heldDNSServer answers queries for one name with SERVFAIL once answer is
// called, holding them until then, and passes the others to a dnstest
// server.
type heldDNSServer struct {
	addr    string
	asked   chan struct{} // a query for the name came (buffered: the first)
	queries atomic.Int64  // queries for the name
	release chan struct{}
	once    sync.Once
}

func (s *heldDNSServer) answer() { s.once.Do(func() { close(s.release) }) }

func heldDNS(t *testing.T, next dns.Handler, name string) *heldDNSServer {
	t.Helper()
	s := &heldDNSServer{asked: make(chan struct{}, 1), release: make(chan struct{})}
	pc, err := net.ListenPacket("udp", "127.0.24.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s.addr = pc.LocalAddr().String()
	srv := &dns.Server{PacketConn: pc, Handler: dns.HandlerFunc(func(w dns.ResponseWriter, req *dns.Msg) {
		if len(req.Question) != 1 || dns.CanonicalName(req.Question[0].Name) != name {
			next.ServeDNS(w, req)
			return
		}
		s.queries.Add(1)
		select {
		case s.asked <- struct{}{}:
		default:
		}
		<-s.release
		m := new(dns.Msg)
		m.SetRcode(req, dns.RcodeServerFailure)
		w.WriteMsg(m)
	})}
	started := make(chan struct{})
	srv.NotifyStartedFunc = func() { close(started) }
	go srv.ActivateAndServe()
	<-started
	t.Cleanup(func() { s.answer(); srv.Shutdown() })
	return s
}

// A server that answers, even with 4xx to a recipient, is not dead.
func TestDelivery_TempFailedRecipient_NotDead(t *testing.T) {
	t.Parallel()
	h := newHarness(t, smtptest.Behaviour{Rcpt: func(to string, _ *smtp.RcptOptions) error {
		if strings.HasPrefix(to, "busy@") {
			return smtptest.Reply(451, "4.2.0", "mailbox busy")
		}
		return nil
	}}, zone("example.test", "127.0.0.2"))
	h.start()
	id := h.submit(testBody, []string{"busy@example.test"})
	h.waitRecords(id, 1)
	id2 := h.submit(testBody, []string{"a@example.test"})
	h.first.Wait(t, 1)
	h.waitRecords(id2, 1)
	if strings.Contains(h.logs.String(), "marked dead") {
		t.Error("a domain whose server answered was marked dead")
	}
}

// A server that limits connections per client answers the ones beyond
// with 421 while its other sessions deliver: the destination is not dead,
// and mail to it is not suspended (Postfix declares a destination dead
// only after a whole window of failures without a success). One 421 made
// the domain dead for the first retry interval while two sessions to it
// worked.
func TestDelivery_ConnectionLimit421_NotDead(t *testing.T) {
	t.Parallel()
	inData := make(chan struct{}, 1)
	finish := make(chan struct{})
	h := newHarness(t, smtptest.Behaviour{Greeting421After: 1, Data: func(m *smtptest.Message) error {
		select {
		case inData <- struct{}{}:
			<-finish
		default:
		}
		return nil
	}}, zone("example.test", "127.0.0.2"))
	h.cfg.Delivery.DataEndTimeout.Duration = time.Minute
	h.start()
	busy := h.submit(testBody, []string{"a@example.test"})
	<-inData // its session stays open until finish
	refused := h.submit(testBody, []string{"b@example.test"})
	h.waitRecords(refused, 1)
	later := h.submit(testBody, []string{"c@example.test"})
	h.waitRecords(later, 1)
	close(finish)
	h.waitRecords(busy, 1)
	if strings.Contains(h.logs.String(), "marked dead") {
		t.Error("a destination with a session delivering was marked dead")
	}
	if env := h.envelope(later); env == nil || strings.Contains(env.LastError, "suspended") {
		t.Errorf("%s: %+v, want tried, not suspended", later, env)
	}
}

// Attempts under way when a destination was marked dead that fail after
// do not lengthen its dead time: the mail deferred by the first failure
// is tried for real at its next attempt (a second failure 300 ms later
// suspended it again, and it waited for its second retry interval).
func TestDeadDestination_NotLengthened(t *testing.T) {
	t.Parallel()
	var mu sync.Mutex
	now := time.Date(2026, 11, 26, 4, 0, 0, 0, time.UTC)
	h := newHarness(t, smtptest.Behaviour{}, zone("example.test", "127.0.0.2"))
	h.cfg.Delivery.RetryIntervals = []config.Duration{{Duration: time.Minute}}
	h.editOpts = func(o *Options) {
		o.Now = func() time.Time { mu.Lock(); defer mu.Unlock(); return now }
	}
	h.start()
	e := smtperr.New(0, "4.4.2", "timed out during greeting")
	h.agent.markDeadNow("stall.test", e)
	want := now.Add(54 * time.Second)
	mu.Lock()
	now = now.Add(300 * time.Millisecond)
	mu.Unlock()
	h.agent.markDeadNow("stall.test", e)
	h.agent.mu.Lock()
	got := h.agent.dead["stall.test"].until
	h.agent.mu.Unlock()
	if !got.Equal(want) {
		t.Errorf("dead until %v, want %v (the first failure's)", got, want)
	}
}

// A connection its server greeted, idle in the pool, keeps the domain
// alive too: against a server that limits connections per client, the
// 421s that the other sessions of a burst got after the first delivered
// and pooled its connection made the domain dead, and mail was deferred
// "delivery temporarily suspended" beside a working connection.
func TestDeadDestination_NotWithAnIdleGreetedConnection(t *testing.T) {
	t.Parallel()
	h := newHarness(t, smtptest.Behaviour{}, zone("example.test", "127.0.0.2"))
	h.cfg.Delivery.IdleConnTimeout.Duration = time.Minute
	h.start()
	id := h.submit(testBody, []string{"a@example.test"})
	h.first.Wait(t, 1)
	h.waitRecords(id, 1)
	h.agent.markDeadNow("example.test", smtperr.New(421, "4.7.0", "too many connections from your address"))
	if err := h.agent.deadErr("example.test"); err != nil {
		t.Errorf("dead with a greeted connection idle in the pool: %v", err)
	}
}

// A flush of one domain ends that domain's dead mark only: a flush of
// example.test made every dead destination alive again, and their mail
// went to wait for their timeouts once more. A flush of everything ends
// them all.
func TestDeadDestination_DomainFlushEndsItsMarkOnly(t *testing.T) {
	t.Parallel()
	h := newHarness(t, smtptest.Behaviour{}, zone("example.test", "127.0.0.2"))
	h.start()
	e := smtperr.New(0, "4.4.2", "timed out during greeting")
	h.agent.markDeadNow("a.test", e)
	h.agent.markDeadNow("b.test", e)
	h.q.Flush("A.test")
	if err := h.agent.deadErr("a.test"); err != nil {
		t.Errorf("a.test still dead after its flush: %v", err)
	}
	if err := h.agent.deadErr("b.test"); err == nil {
		t.Error("b.test alive again after a flush of a.test")
	}
	h.agent.markDeadNow("a.test", e)
	h.q.Flush("")
	for _, d := range []string{"a.test", "b.test"} {
		if err := h.agent.deadErr(d); err != nil {
			t.Errorf("%s still dead after a flush of everything: %v", d, err)
		}
	}
}

// A flush of an internationalized domain ends its dead mark whichever form
// the operator names it in: the agent marks the A-label, and `queue flush
// --domain bücher.test` (the form its recipients were queued in) left it
// dead, its mail deferred "delivery temporarily suspended" at once.
func TestDeadDestination_FlushOfUnicodeDomain(t *testing.T) {
	t.Parallel()
	h := newHarness(t, smtptest.Behaviour{}, zone("example.test", "127.0.0.2"))
	h.start()
	e := smtperr.New(0, "4.4.2", "timed out during greeting")
	const alabel = "xn--bcher-kva.test"
	for _, form := range []string{"bücher.test", "BÜCHER.test", alabel} {
		h.agent.markDeadNow(alabel, e)
		h.q.Flush(form)
		if err := h.agent.deadErr(alabel); err != nil {
			t.Errorf("%s still dead after a flush of %s: %v", alabel, form, err)
		}
	}
}

// Messages parked for a domain's slots while its one attempt stalls are all
// tried (deferred as suspended) once that attempt finds the domain dead: a
// slot's release unparks only as many messages as it frees slots, and the
// ones the dead destination defers take no slot, so the rest stayed parked
// until a restart (out of the schedule, past flush and max_queue_age).
func TestDelivery_DeadDestination_UnparksAll(t *testing.T) {
	t.Parallel()
	h := newHarness(t, smtptest.Behaviour{}, zone("stall.test", "127.0.0.3"))
	tarpit := h.server("127.0.0.3", smtptest.Behaviour{StallGreeting: true})
	h.cfg.Delivery.PerDomainConcurrency = 1
	h.cfg.Delivery.GreetingTimeout.Duration = 2 * parkAfter // the others park meanwhile
	h.start()
	var ids []string
	for range 5 {
		ids = append(ids, h.submit(testBody, []string{"a@stall.test"}))
	}
	suspended := 0
	for _, id := range ids {
		h.waitRecords(id, 1)
		if env := h.envelope(id); env != nil && strings.Contains(env.LastError, "delivery temporarily suspended") {
			suspended++
		}
	}
	if n := tarpit.Conns(); n != 1 || suspended != 4 {
		t.Errorf("%d connections, %d messages suspended; want 1 and the other 4", n, suspended)
	}
}

// A message unparked for a freed slot but deleted before it is handed out
// takes no slot, so no release of its unparks the next: the rest of the
// domain's parked mail must still go, with no other mail to the domain.
func TestDelivery_UnparkedThenDeleted_OthersNotStranded(t *testing.T) {
	t.Parallel()
	h := newHarness(t, smtptest.Behaviour{}, zone("example.test", "127.0.0.2", "stall.test", "127.0.0.3"))
	h.server("127.0.0.3", smtptest.Behaviour{StallGreeting: true})
	h.cfg.Delivery.Concurrency = 1 // one message handed out at a time
	h.cfg.Delivery.PerDomainConcurrency = 1
	h.cfg.Delivery.GreetingTimeout.Duration = 2 * parkAfter
	h.start()
	l := h.agent.domains
	hold, ok := l.tryAcquire("example.test", "") // the domain's one slot, taken
	if !ok {
		t.Fatal("no slot")
	}
	m1 := h.submit(testBody, []string{"a@example.test"})
	m2 := h.submit(testBody, []string{"b@example.test"})
	// Polls of state that signals nothing, bounded.
	poll := func(what string, cond func() bool) {
		for deadline := time.Now().Add(10 * time.Second); !cond(); time.Sleep(10 * time.Millisecond) {
			if time.Now().After(deadline) {
				t.Fatalf("not %s after 10s", what)
			}
		}
	}
	var first string
	poll("both parked", func() bool {
		l.mu.Lock()
		defer l.mu.Unlock()
		if s := l.m["example.test"]; s != nil && len(s.parked) == 2 {
			first = s.parked[0]
			return true
		}
		return false
	})
	// The one delivery slot busy elsewhere, so the first, unparked, is not
	// handed out before it is deleted.
	stall := h.submit(testBody, []string{"a@stall.test"})
	poll("stalled", func() bool { return h.q.InFlight(stall) })
	hold()
	if err := h.q.Delete(first); err != nil {
		t.Fatal(err)
	}
	if first == m2 {
		m2 = m1 // the other one
	}
	h.waitRecords(m2, 1)
	if env := h.envelope(m2); env != nil {
		t.Errorf("still queued: %+v", env)
	}
}

// A parked message called back for a freed slot of its domain takes that
// slot even when it comes out at its delay warning (or expiry): it skipped
// the slot kept for it, waited for another while the kept one sat idle
// until callWait, and was deferred "no connection slot free" — at its
// expiry, bounced — though a slot was there for it.
func TestClaimDomain_Overdue_TakesKeptSlot(t *testing.T) {
	t.Parallel()
	a, advance := memAgent(t, func(cfg *config.Config) { cfg.Delivery.DelayWarning.Duration = time.Hour })
	q := a.q
	env := &queue.Envelope{From: "sender@sender.test", Recipients: []queue.Recipient{{Address: "b@x.test"}}}
	if err := q.Enqueue(env, strings.NewReader(testBody)); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	got, err := q.Next(ctx)
	if err != nil {
		t.Fatal(err)
	}
	// Another delivery holds the domain's only slot; the message parks.
	other, ok := a.domains.tryAcquire("x.test", "other")
	if !ok {
		t.Fatal("no slot")
	}
	if _, ok := a.domains.acquireOrPark("x.test", got.ID, func() bool { return q.Park(got.ID, time.Time{}) == nil }); ok {
		t.Fatal("slot taken while the only one is held")
	}
	other() // frees the slot, kept for the parked message, which is called
	if got, err = q.Next(ctx); err != nil {
		t.Fatal(err)
	}
	advance(2 * time.Hour) // its delay warning is due as it comes out
	release, parked := a.claimDomain(ctx, got)
	if parked || release == nil {
		t.Fatalf("claimDomain = %v, parked %v; want the slot kept for it", release != nil, parked)
	}
	release()
}

// A message to several domains parked for a slot of one that is found dead
// meanwhile, and called back for a freed slot, gives that slot back when its
// recipients there are deferred as suspended: it kept it, idle, until
// callWait, and the domain's other parked mail was called one by one, each
// after the last one's callWait.
func TestDelivery_SeveralDomains_CalledForDeadDomain_GivesSlotBack(t *testing.T) {
	t.Parallel()
	h := newHarness(t, smtptest.Behaviour{}, zone("busy.test", "127.0.0.2", "busy2.test", "127.0.0.3"))
	h.cfg.Delivery.PerDomainConcurrency = 1
	h.start()
	l := h.agent.domains
	var holds []func()
	for _, d := range []string{"busy.test", "busy2.test"} { // each domain's one slot, busy
		hold, ok := l.tryAcquire(d, "")
		if !ok {
			t.Fatal("no slot")
		}
		holds = append(holds, hold)
	}
	defer holds[1]()
	id := h.submit(testBody, []string{"a@busy.test", "b@busy2.test"})
	h.waitRecords(id, 1) // parked for busy.test
	h.agent.markDeadNow("busy.test", smtperr.New(0, "4.4.1", "no host answered"))
	holds[0]() // the slot is kept for the parked message, which is called back
	h.waitRecords(id, 2)
	h.rcptPendingWith(id, 0, "delivery temporarily suspended")
	release, ok := l.tryAcquire("busy.test", "")
	if !ok {
		t.Fatal("the slot of busy.test is still kept for a message deferred without it")
	}
	release()
}
