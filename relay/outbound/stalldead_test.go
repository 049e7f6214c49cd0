package outbound

import (
	"context"
	"fmt"
	"io"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/emersion/go-smtp"
	"github.com/miekg/dns"

	"github.com/mailhop/mailhop/dnsmx/dnstest"
	"github.com/mailhop/mailhop/queue"
	"github.com/mailhop/mailhop/relay/config"
	"github.com/mailhop/mailhop/relay/dsn"
	"github.com/mailhop/mailhop/relay/outbound/smtptest"
)

// stallUntilEnd returns a callback for smtptest's Mail or Rcpt that tells
// entered of each call (the address) and then never answers until the
// test ends: a server that greets, answers EHLO and stalls there.
func stallUntilEnd(t *testing.T) (stall func(addr string) error, entered <-chan string) {
	ch := make(chan string, 100)
	release := make(chan struct{})
	t.Cleanup(func() { close(release) }) // before the server's Close (registered earlier)
	return func(addr string) error {
		ch <- addr
		<-release
		return smtptest.Reply(421, "4.3.0", "closing")
	}, ch
}

// next waits for the next value from ch, or fails the test after 10 s.
func next(t *testing.T, ch <-chan string, what string) string {
	t.Helper()
	select {
	case v := <-ch:
		return v
	case <-time.After(10 * time.Second):
		t.Fatalf("no %s after 10s", what)
		return ""
	}
}

// connRecorder dials as the agent does and keeps every connection, so that
// a test can make the read a session waits on time out when it chooses
// (expire): a real timeout of the socket, at a moment the test controls.
type connRecorder struct {
	mu    sync.Mutex
	conns []net.Conn
}

func (r *connRecorder) dial(ctx context.Context, network, addr string) (net.Conn, error) {
	var d net.Dialer
	c, err := d.DialContext(ctx, network, addr)
	if err == nil {
		r.mu.Lock()
		r.conns = append(r.conns, c)
		r.mu.Unlock()
	}
	return c, err
}

// expire makes the read the i-th connection waits on (from 0) time out now.
func (r *connRecorder) expire(t *testing.T, i int) {
	t.Helper()
	r.mu.Lock()
	defer r.mu.Unlock()
	if i >= len(r.conns) {
		t.Fatalf("connection %d not dialled (%d so far)", i, len(r.conns))
	}
	r.conns[i].SetReadDeadline(time.Unix(1, 0))
}

// A session its server greeted that then times out or loses its
// connection, no reply, before any of its transactions was answered is a
// site failure of the host, as a refused connection is: the attempt marks
// the domain dead, and its other mail is deferred "delivery temporarily
// suspended: <host>: <what happened, at which stage>" without a connection
// (Postfix throttles the destination after "conversation with X timed out
// while ..." or "lost connection with X while ..."). A session stalled after
// the server accepted a recipient (after RCPT, in DATA, after the body)
// counted as no failure at all: each message to such a domain took a slot
// for a whole timeout, and the domain was never suspended.
func TestDeadDestination_GreetedThenStalled(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name  string
		b     func(t *testing.T) smtptest.Behaviour
		rcpts []string
		text  string // what the deferral says after the host's name
	}{
		{name: "mail", b: func(t *testing.T) smtptest.Behaviour {
			stall, _ := stallUntilEnd(t)
			return smtptest.Behaviour{Mail: func(from string, _ *smtp.MailOptions) error { return stall(from) }}
		}, text: "timed out during mail"},
		// With PIPELINING the server holds its reply to MAIL back while
		// the RCPT it stalls on waits: the client sees it stall at MAIL
		// as above. Without, the replies come one by one.
		{name: "rcpt", b: func(t *testing.T) smtptest.Behaviour {
			stall, _ := stallUntilEnd(t)
			return smtptest.Behaviour{NoPipelining: true, Rcpt: func(to string, _ *smtp.RcptOptions) error { return stall(to) }}
		}, text: "timed out during rcpt"},
		{name: "rcpt after another recipient's reply", b: func(t *testing.T) smtptest.Behaviour {
			stall, _ := stallUntilEnd(t)
			return smtptest.Behaviour{NoPipelining: true, Rcpt: func(to string, _ *smtp.RcptOptions) error {
				if strings.HasPrefix(to, "z@") {
					return stall(to)
				}
				return nil
			}}
		}, rcpts: []string{"a@stall.test", "z@stall.test"}, text: "timed out during rcpt"},
		{name: "end of data", b: func(*testing.T) smtptest.Behaviour {
			return smtptest.Behaviour{StallData: true}
		}, text: "timed out during end of data"},
		{name: "dropped in data", b: func(*testing.T) smtptest.Behaviour {
			return smtptest.Behaviour{DropInData: true}
		}, text: "connection "}, // closed, or reset, "by the server during" the body or its end
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			h := newHarness(t, smtptest.Behaviour{}, zone("example.test", "127.0.0.2", "stall.test", "127.0.0.3"))
			tarpit := h.server("127.0.0.3", tc.b(t))
			// The replies to pipelined commands are waited for as long as
			// the 354 to DATA (data_init_timeout).
			h.cfg.Delivery.DataInitTimeout.Duration = 2 * time.Second
			h.start()
			rcpts := tc.rcpts
			if rcpts == nil {
				rcpts = []string{"a@stall.test"}
			}
			first := h.submit(testBody, rcpts)
			h.waitRecords(first, 1)
			host := fmt.Sprintf("mx.stall.test[127.0.0.3]:%d: ", h.port)
			for i := range rcpts {
				h.rcptPendingWith(first, i, host+tc.text)
			}
			if !strings.Contains(h.logs.String(), "destination marked dead") {
				t.Error("the domain was not marked dead")
			}
			second := h.submit(testBody, []string{"b@stall.test"})
			h.waitRecords(second, 1)
			h.rcptPendingWith(second, 0, "delivery temporarily suspended: "+host+tc.text)
			if n := tarpit.Conns(); n != 1 {
				t.Errorf("%d connections to the stalled server, want 1 (the second message suspended)", n)
			}
			// Other domains are not affected.
			ok := h.submit(testBody, []string{"a@example.test"})
			h.first.Wait(t, 1)
			h.waitRecords(ok, 1)
		})
	}
}

// Sessions that stall do not keep each other's domain alive: the first to
// time out marks it dead though a second session, started while the first
// stalled, is stalling too. A greeted session under way kept the domain
// alive whatever it was doing, so with mail coming in, each slot that a
// timeout freed started a session that kept the domain alive for the next
// timeout: it was never marked dead, and every message to it (an expired
// one's final attempt included) waited for a slot and then a whole timeout.
func TestDeadDestination_StalledSessionsDoNotKeepEachOtherAlive(t *testing.T) {
	t.Parallel()
	stall, entered := stallUntilEnd(t)
	h := newHarness(t, smtptest.Behaviour{}, zone("stall.test", "127.0.0.3"))
	tarpit := h.server("127.0.0.3", smtptest.Behaviour{NoPipelining: true, Rcpt: func(to string, _ *smtp.RcptOptions) error { return stall(to) }})
	rec := &connRecorder{}
	h.editOpts = func(o *Options) { o.Dial = rec.dial }
	h.cfg.Delivery.CommandTimeout.Duration = time.Minute // no timeout but expire's
	h.start()
	first := h.submit(testBody, []string{"a@stall.test"})
	next(t, entered, "RCPT of the first message")
	second := h.submit(testBody, []string{"b@stall.test"})
	next(t, entered, "RCPT of the second message")
	rec.expire(t, 0) // the first session times out; the second stalls on
	h.waitRecords(first, 1)
	host := fmt.Sprintf("mx.stall.test[127.0.0.3]:%d: ", h.port)
	h.rcptPendingWith(first, 0, host+"timed out during rcpt")
	if e := h.agent.deadErr("stall.test"); e == nil {
		t.Error("not dead after a session timed out, with only a stalling session under way")
	}
	third := h.submit(testBody, []string{"c@stall.test"})
	h.waitRecords(third, 1)
	h.rcptPendingWith(third, 0, "delivery temporarily suspended: "+host+"timed out during rcpt")
	if n := tarpit.Conns(); n != 2 {
		t.Errorf("%d connections, want 2 (the third message suspended)", n)
	}
	if env := h.envelope(second); env == nil || env.Attempts != 0 {
		t.Errorf("second message: %+v, want still in its stalled attempt", env)
	}
}

// A transaction its server answered during the attempt (here every
// recipient deferred, 451: a server that answers is not dead) keeps the
// domain alive when a session of that attempt times out: the server works
// for some sessions. The timeout made the domain dead once that other
// session had ended.
func TestDeadDestination_AnsweredDuringTheStall_NotDead(t *testing.T) {
	t.Parallel()
	stall, entered := stallUntilEnd(t)
	h := newHarness(t, smtptest.Behaviour{}, zone("stall.test", "127.0.0.3"))
	tarpit := h.server("127.0.0.3", smtptest.Behaviour{NoPipelining: true, Rcpt: func(to string, _ *smtp.RcptOptions) error {
		if strings.HasPrefix(to, "busy@") {
			return smtptest.Reply(451, "4.2.0", "mailbox busy")
		}
		return stall(to)
	}})
	rec := &connRecorder{}
	h.editOpts = func(o *Options) { o.Dial = rec.dial }
	h.cfg.Delivery.CommandTimeout.Duration = time.Minute // no timeout but expire's
	h.start()
	first := h.submit(testBody, []string{"a@stall.test"})
	next(t, entered, "RCPT of the first message")
	busy := h.submit(testBody, []string{"busy@stall.test"})
	h.waitRecords(busy, 1)
	h.rcptPendingWith(busy, 0, "mailbox busy")
	rec.expire(t, 0)
	h.waitRecords(first, 1)
	if e := h.agent.deadErr("stall.test"); e != nil {
		t.Errorf("dead though its server answered a transaction during the attempt: %v", e)
	}
	later := h.submit(testBody, []string{"busy@stall.test"})
	h.waitRecords(later, 1)
	h.rcptPendingWith(later, 0, "mailbox busy")
	if n := tarpit.Conns(); n != 3 {
		t.Errorf("%d connections, want 3 (none suspended)", n)
	}
}

// A session that carried mail before (a connection reused from the pool)
// and then loses its connection is no site failure: the server took mail
// on it, and a pooled connection going stale says nothing of the server.
// The domain stays alive and the next message goes out.
func TestDeadDestination_ReusedConnectionDropped_NotDead(t *testing.T) {
	t.Parallel()
	h := newHarness(t, smtptest.Behaviour{DropInData: true, DropInDataAfter: 1}, zone("example.test", "127.0.0.2"))
	h.start()
	first := h.submit(testBody, []string{"a@example.test"})
	h.first.Wait(t, 1)
	h.waitRecords(first, 1)
	second := h.submit(testBody, []string{"b@example.test"}) // on the pooled connection, dropped in its body
	h.waitRecords(second, 1)
	h.rcptPendingWith(second, 0, "by the server during")
	if n := h.first.Conns(); n != 1 {
		t.Fatalf("%d connections, want the second message on the first's", n)
	}
	third := h.submit(testBody, []string{"c@example.test"})
	h.first.Wait(t, 2)
	h.waitRecords(third, 1)
	if strings.Contains(h.logs.String(), "marked dead") {
		t.Error("marked dead for a reused connection that was dropped")
	}
}

// Mail past max_queue_age to a domain whose server greets and then stalls
// bounces (a DSN to its sender) once the stalled session's timeout makes
// the domain dead, without a connection of its own: parked for its final
// attempt behind the stalled session, it is called back and deferred as
// suspended, which expires it. It waited for the slot and then made its own
// connection, to stall for another whole timeout: with a steady inflow, a
// domain's expired mail got two final attempts a minute (10 slots, a
// 5-minute timeout) and its queue grew without end.
func TestDeadDestination_ExpiredMailToStalledDomain_BouncesWithoutConnection(t *testing.T) {
	t.Parallel()
	h := newHarness(t, smtptest.Behaviour{}, zone("stall.test", "127.0.0.3"))
	tarpit := h.server("127.0.0.3", smtptest.Behaviour{StallData: true})
	h.cfg.Delivery.PerDomainConcurrency = 1
	h.cfg.Delivery.MaxQueueAge.Duration = 48 * time.Hour
	h.cfg.Delivery.DataEndTimeout.Duration = 2 * time.Second
	h.start()
	stalled := h.submit(testBody, []string{"a@stall.test"})
	select {
	case <-tarpit.Stalled():
	case <-time.After(10 * time.Second):
		t.Fatal("the first message's session did not reach the stall after 10s")
	}
	old := h.submit(testBody, []string{"b@stall.test"}, func(e *queue.Envelope) { e.Arrived = time.Now().Add(-49 * time.Hour) })
	h.waitRecords(stalled, 1)
	for h.envelope(old) != nil {
		h.mu.Lock()
		ch := h.changed
		h.mu.Unlock()
		select {
		case <-ch:
		case <-time.After(15 * time.Second):
			t.Fatalf("expired message still queued 15 s after the stalled session's timeout:\n%s", h.logs.String())
		}
	}
	h.logs.WaitLine(5*time.Second, "msg=expired queue_id="+old)
	if n := tarpit.Conns(); n != 1 {
		t.Errorf("%d connections to the stalled server, want 1 (none for the expired message)", n)
	}
	// The bounce is queued to the sender, and says why.
	var report *queue.Envelope
	for _, env := range h.q.List() {
		if env.From == "" && len(env.Recipients) == 1 && env.Recipients[0].Address == "sender@sender.test" {
			report = env
		}
	}
	if report == nil {
		t.Fatal("no report queued to the sender")
	}
	body, err := h.q.Body(report.ID)
	if err != nil {
		t.Fatal(err)
	}
	defer body.Close()
	rep, err := dsn.Parse(io.NewSectionReader(body, 0, body.Size()))
	if err != nil {
		t.Fatal(err)
	}
	if len(rep.Recipients) != 1 || rep.Recipients[0].Action != "failed" || rep.Recipients[0].FinalRecipient != "rfc822; b@stall.test" {
		t.Fatalf("report recipients %+v, want b@stall.test failed", rep.Recipients)
	}
	if !strings.Contains(rep.Human+rep.Recipients[0].DiagnosticCode, "delivery temporarily suspended") {
		t.Errorf("the report does not say the destination was suspended:\n%s\n%+v", rep.Human, rep.Recipients[0])
	}
}

// A session whose server answered one of its transactions and that then
// loses its connection in a later one (max_recipients_per_transaction
// splits a message's recipients) is no site failure: the server took mail
// on it. The delivered recipient stays delivered, the other waits, and the
// domain is not marked dead.
func TestDeadDestination_DroppedAfterAnAnsweredTransaction_NotDead(t *testing.T) {
	t.Parallel()
	h := newHarness(t, smtptest.Behaviour{DropInData: true, DropInDataAfter: 1}, zone("example.test", "127.0.0.2"))
	h.cfg.Delivery.MaxRecipientsPerTransaction = 1
	h.start()
	id := h.submit(testBody, []string{"a@example.test", "b@example.test"})
	h.first.Wait(t, 1)
	h.waitRecords(id, 1)
	h.rcptPendingWith(id, 1, "by the server during")
	if env := h.envelope(id); env == nil || env.Recipients[0].State != queue.Delivered {
		t.Fatalf("first recipient not delivered: %+v", env)
	}
	if e := h.agent.deadErr("example.test"); e != nil {
		t.Errorf("dead though its server answered the session's first transaction: %v", e)
	}
}

// A timeout that no greeted session waited out (a host that never greeted,
// or whose address did not answer) does not let the attempt ignore the
// greeted sessions under way: they were not stalling with it. Here the
// first MX never greets and the second takes one connection per client
// (421 to the others) and is busy with a slow message: the second
// message's attempt, its greeting timeout at the first MX and its 421 at
// the second, left the domain alive before the dead rule took in stalls;
// with every timeout counted as one, it was suspended while its server
// delivered.
func TestDeadDestination_GreetingTimeoutThen421_SessionUnderWay_NotDead(t *testing.T) {
	t.Parallel()
	inData, release := make(chan struct{}), make(chan struct{})
	var once sync.Once
	h := newHarness(t, smtptest.Behaviour{Greeting421After: 1, Data: func(*smtptest.Message) error {
		once.Do(func() { close(inData) })
		<-release
		return nil
	}}, mxZone("127.0.0.3", "127.0.0.2"))
	h.server("127.0.0.3", smtptest.Behaviour{StallGreeting: true})
	h.cfg.Delivery.DataEndTimeout.Duration = time.Minute // the slow message is not cut
	h.start()
	slow := h.submit(testBody, []string{"a@example.test"})
	select {
	case <-inData:
	case <-time.After(15 * time.Second):
		t.Fatal("the first message did not reach the second MX's DATA after 15s")
	}
	other := h.submit(testBody, []string{"b@example.test"})
	h.waitRecords(other, 1)
	h.rcptPendingWith(other, 0, "not available now")
	if e := h.agent.deadErr("example.test"); e != nil {
		t.Errorf("dead while a session its server greeted delivers: %v", e)
	}
	close(release)
	h.waitRecords(slow, 1)
	if h.envelope(slow) != nil {
		t.Error("the slow message is still queued")
	}
	if strings.Contains(h.logs.String(), "marked dead") {
		t.Error("marked dead")
	}
}

// A smarthost of a [[route]] is one destination for every domain routed to
// it (Postfix suspends the nexthop): once a session to it that it greeted
// stalls and times out, mail to every domain routed there is deferred
// "delivery temporarily suspended" without a connection. Marked under the
// recipient domain, each other domain's mail stalled for a whole timeout
// first, holding a connection slot (with "*", one per domain, up to
// delivery.concurrency). A flush of any domain routed there ends the mark.
func TestDeadDestination_StalledSmarthost_SuspendsEveryRoutedDomain(t *testing.T) {
	t.Parallel()
	stall, _ := stallUntilEnd(t)
	z := zone("example.test", "127.0.0.2")
	z["smart.test."] = append(z["smart.test."], dnstest.A("smart.test", "127.0.0.3"))
	h := newHarness(t, smtptest.Behaviour{}, z)
	tarpit := h.server("127.0.0.3", smtptest.Behaviour{Mail: func(from string, _ *smtp.MailOptions) error { return stall(from) }})
	r := routeTo(h, []string{"smart.test"}, "none", "")
	r.Domains, r.Username, r.Password = []string{"one.test", "two.test"}, "", ""
	h.cfg.Route = append(h.cfg.Route, r)
	h.cfg.Delivery.DataInitTimeout.Duration = 2 * time.Second
	h.start()
	first := h.submit(testBody, []string{"a@one.test"})
	h.waitRecords(first, 1)
	host := fmt.Sprintf("smart.test[127.0.0.3]:%d: ", h.port)
	h.rcptPendingWith(first, 0, host+"timed out during mail")
	second := h.submit(testBody, []string{"b@two.test"})
	h.waitRecords(second, 1)
	h.rcptPendingWith(second, 0, "delivery temporarily suspended: "+host+"timed out during mail")
	if n := tarpit.Conns(); n != 1 {
		t.Errorf("%d connections to the stalled smarthost, want 1 (two.test's mail suspended)", n)
	}
	// A domain delivered by MX is another destination.
	ok := h.submit(testBody, []string{"c@example.test"})
	h.first.Wait(t, 1)
	h.waitRecords(ok, 1)
	// The operator flushes one routed domain: its mail goes to the
	// smarthost again, which ends the mark for the others too.
	h.q.Flush("two.test")
	if e := h.agent.deadErr("two.test"); e != nil {
		t.Errorf("flushed domain still suspended: %v", e)
	}
	if e := h.agent.deadErr("one.test"); e != nil {
		t.Errorf("still suspended after a flush of a domain routed to the same smarthost: %v", e)
	}
}

// The other way round: a smarthost that answers other domains' mail while
// a session to it stalls works, so the domain whose session stalled is not
// suspended. Marked under the recipient domain, it was, because no
// transaction of that domain was answered meanwhile: one message a
// smarthost was slow with (a big attachment scanned, a slow recipient
// check) suspended all of that domain's mail through a working smarthost.
func TestDeadDestination_SmarthostAnsweringOtherDomains_NotDead(t *testing.T) {
	t.Parallel()
	stall, entered := stallUntilEnd(t)
	z := dnstest.Zone{"smart.test.": {dnstest.A("smart.test", "127.0.0.3")}}
	h := newHarness(t, smtptest.Behaviour{}, z)
	smart := h.server("127.0.0.3", smtptest.Behaviour{NoPipelining: true, Rcpt: func(to string, _ *smtp.RcptOptions) error {
		if strings.HasPrefix(to, "stall@") {
			return stall(to)
		}
		return nil
	}})
	r := routeTo(h, []string{"smart.test"}, "none", "")
	r.Username, r.Password = "", ""
	h.cfg.Route = append(h.cfg.Route, r) // "*"
	rec := &connRecorder{}
	h.editOpts = func(o *Options) { o.Dial = rec.dial }
	h.cfg.Delivery.CommandTimeout.Duration = time.Minute // no timeout but expire's
	h.start()
	stalled := h.submit(testBody, []string{"stall@one.test"})
	next(t, entered, "RCPT of the stalled message")
	other := h.submit(testBody, []string{"x@two.test"})
	smart.Wait(t, 1)
	h.waitRecords(other, 1)
	rec.expire(t, 0)
	h.waitRecords(stalled, 1)
	h.rcptPendingWith(stalled, 0, "timed out during rcpt")
	if e := h.agent.deadErr("one.test"); e != nil {
		t.Errorf("suspended though its smarthost answered a transaction during the attempt: %v", e)
	}
	later := h.submit(testBody, []string{"y@one.test"})
	smart.Wait(t, 2)
	h.waitRecords(later, 1)
}

// A reload that sends a dead domain's mail elsewhere (a [[route]] to a
// smarthost, when its own MX stalls) takes effect at once: the mark is the
// MX destination's, not the smarthost's, so the domain's next message goes
// out instead of being suspended for the rest of the mark.
func TestDeadDestination_ReloadRoutesDeadDomain_NotSuspended(t *testing.T) {
	t.Parallel()
	z := zone("stall.test", "127.0.0.3")
	z["smart.test."] = append(z["smart.test."], dnstest.A("smart.test", "127.0.0.2"))
	h := newHarness(t, smtptest.Behaviour{}, z)
	h.server("127.0.0.3", smtptest.Behaviour{StallData: true})
	h.start()
	first := h.submit(testBody, []string{"a@stall.test"})
	h.waitRecords(first, 1)
	if e := h.agent.deadErr("stall.test"); e == nil {
		t.Fatal("the stalled domain was not marked dead")
	}
	h.agent.SetConfig(h.reloaded(func(c *config.Config) {
		r := routeTo(h, []string{"smart.test"}, "none", "")
		r.Domains, r.Username, r.Password = []string{"stall.test"}, "", ""
		c.Route = append(c.Route, r)
	}))
	second := h.submit(testBody, []string{"b@stall.test"})
	h.first.Wait(t, 1)
	h.waitRecords(second, 1)
	if h.envelope(second) != nil {
		t.Error("the routed message is still queued")
	}
}

// The per-destination state of attempts under way (doms) is gone once they
// end, however they end: delivered, refused, stalled and timed out, a DNS
// failure, a dead destination's deferral, a smarthost's, and attempts the
// shutdown cut short; nothing of a domain is kept after its last attempt.
func TestDeadDestination_AttemptStateGoneAfterAttempts(t *testing.T) {
	t.Parallel()
	z := zone("example.test", "127.0.0.2", "refused.test", "127.0.0.9", "stall.test", "127.0.0.3", "cut.test", "127.0.0.4")
	z["smart.test."] = append(z["smart.test."], dnstest.A("smart.test", "127.0.0.2"))
	h := newHarness(t, smtptest.Behaviour{}, z)
	h.dns.SetRcode("servfail.test", dns.RcodeServerFailure)
	h.server("127.0.0.3", smtptest.Behaviour{StallData: true})
	cut := h.server("127.0.0.4", smtptest.Behaviour{StallData: true})
	r := routeTo(h, []string{"smart.test"}, "none", "")
	r.Domains, r.Username, r.Password = []string{"routed.test"}, "", ""
	h.cfg.Route = append(h.cfg.Route, r)
	h.start()
	var ids []string
	for i := range 4 {
		for _, d := range []string{"example.test", "refused.test", "stall.test", "servfail.test", "routed.test"} {
			ids = append(ids, h.submit(testBody, []string{fmt.Sprintf("r%d@%s", i, d)}))
		}
		ids = append(ids, h.submit(testBody, []string{fmt.Sprintf("m%d@example.test", i), fmt.Sprintf("m%d@stall.test", i), fmt.Sprintf("m%d@refused.test", i)}))
	}
	for _, id := range ids {
		h.waitRecords(id, 1)
	}
	doms := func() int {
		h.agent.mu.Lock()
		defer h.agent.mu.Unlock()
		return len(h.agent.doms)
	}
	if n := doms(); n != 0 {
		t.Errorf("%d destinations with attempt state after every attempt ended, want 0", n)
	}
	h.agent.SetConfig(h.reloaded(func(c *config.Config) { c.Delivery.DataEndTimeout.Duration = time.Hour }))
	last := h.submit(testBody, []string{"x@cut.test"})
	select {
	case <-cut.Stalled():
	case <-time.After(10 * time.Second):
		t.Fatal("the last message did not reach its server's stall after 10s")
	}
	h.stop()
	h.waitRecords(last, 1)
	if n := doms(); n != 0 {
		t.Errorf("%d destinations with attempt state after the shutdown cut the last attempt, want 0", n)
	}
}

// Two routes to the same smarthost with other credentials (or TLS) are two
// destinations: a route whose password the smarthost refuses is marked
// dead, not the other route's domains, which it takes mail for.
func TestDeadDestination_RoutesToOneSmarthostWithOtherCredentials_Apart(t *testing.T) {
	t.Parallel()
	pki := newPKI(t, "smart.test")
	z := dnstest.Zone{"smart.test.": {dnstest.A("smart.test", "127.0.0.2")}}
	h := newHarness(t, smtptest.Behaviour{TLS: pki.serverConfig(), Users: map[string]string{"app": "s3cret"}}, z)
	bad := routeTo(h, []string{"smart.test"}, "starttls", pki.caFile)
	bad.Domains, bad.Username, bad.Password = []string{"bad.test"}, "old", "expired"
	good := routeTo(h, []string{"smart.test"}, "starttls", pki.caFile)
	good.Domains = []string{"good.test"}
	h.cfg.Route = append(h.cfg.Route, bad, good)
	h.start()
	refused := h.submit(testBody, []string{"a@bad.test"})
	h.waitRecords(refused, 1)
	h.rcptPendingWith(refused, 0, "4.7.8")
	ok := h.submit(testBody, []string{"b@good.test"})
	h.first.Wait(t, 1)
	h.waitRecords(ok, 1)
	if h.envelope(ok) != nil {
		t.Error("the other route's message is still queued")
	}
}
