package outbound

import (
	"fmt"
	"strings"
	"sync"
	"testing"

	"github.com/mailhop/mailhop/dnsmx/dnstest"
	"github.com/mailhop/mailhop/queue"
	"github.com/mailhop/mailhop/relay/outbound/smtptest"
)

// TestDelivery_MXGreetsAsUs_Bounces546: an MX host whose greeting names
// our hostname (any case) is this relay: the mail is not sent, the
// domain's recipients bounce with 5.4.6, the next MX is not tried, and the
// session ends with QUIT.
func TestDelivery_MXGreetsAsUs_Bounces546(t *testing.T) {
	t.Parallel()
	z := dnstest.Zone{}
	addMX(z, "example.test", 10, "mx1.example.test", "127.0.0.2")
	addMX(z, "example.test", 20, "mx2.example.test", "127.0.0.3")
	h := newHarness(t, smtptest.Behaviour{Hostname: "RELAY.test"}, z)
	next := h.server("127.0.0.3", smtptest.Behaviour{})
	senderMX := h.server("127.0.0.250", smtptest.Behaviour{})
	h.start()
	id := h.submit(testBody, []string{"a@example.test", "b@example.test"})
	h.waitRecords(id, 1)
	d := parseBounce(t, senderMX.Wait(t, 1)[0])
	if len(d.Recipients) != 2 || d.Recipients[0].Status != "5.4.6" || !strings.Contains(d.Human, "mail for example.test loops back to myself") {
		t.Errorf("bounce: %+v\n%s", d.Recipients, d.Human)
	}
	if h.envelope(id) != nil || len(h.first.Messages()) != 0 || next.Conns() != 0 {
		t.Errorf("queued %v, delivered %d, next MX saw %d connections", h.envelope(id) != nil, len(h.first.Messages()), next.Conns())
	}
	if got := h.first.Received(); strings.Contains(got, "MAIL FROM") || !strings.HasSuffix(got, "QUIT\r\n") {
		t.Errorf("the looping server got %q", got)
	}
}

// rawServer answers with a fixed greeting line (code included) and EHLO
// reply on ip at the harness port, and records the commands it gets.
func rawServer(t *testing.T, h *harness, ip, greeting, ehlo string) *lockedBuilder {
	return scriptedServer(t, h, ip, func(verb, _ string) string {
		switch verb {
		case "":
			return greeting + "\r\n"
		case "EHLO":
			return fmt.Sprintf("250-%s\r\n250 PIPELINING\r\n", ehlo)
		case "QUIT":
			return "221 bye\r\n"
		}
		return "502 no\r\n"
	})
}

// A server that greets with another name but answers EHLO with ours is
// this relay too.
func TestDelivery_EHLOReplyNamesUs_Bounces546(t *testing.T) {
	t.Parallel()
	h := newHarness(t, smtptest.Behaviour{}, zone("example.test", "127.0.0.3"))
	got := rawServer(t, h, "127.0.0.3", "220 gateway.test ESMTP", "relay.test. Hello relay.test")
	senderMX := h.server("127.0.0.250", smtptest.Behaviour{})
	h.start()
	id := h.submit(testBody, []string{"a@example.test"})
	h.waitRecords(id, 1)
	if r := parseBounce(t, senderMX.Wait(t, 1)[0]).Recipients[0]; r.Status != "5.4.6" {
		t.Errorf("bounce: %+v", r)
	}
	if c := got.String(); c != "EHLO relay.test\r\nQUIT\r\n" {
		t.Errorf("the looping server got %q", c)
	}
}

// A smarthost that is this relay is a configuration mistake: skipped,
// the next smarthost used; with none left the mail stays queued (4.4.6).
func TestRoute_SmarthostIsUs_Deferred446(t *testing.T) {
	t.Parallel()
	pki := newPKI(t, "smart2.test")
	z := dnstest.Zone{
		"smart1.test.": {dnstest.A("smart1.test", "127.0.0.3")},
		"smart2.test.": {dnstest.A("smart2.test", "127.0.0.2")},
	}
	h := newHarness(t, smtptest.Behaviour{TLS: pki.serverConfig(), Users: map[string]string{"app": "s3cret"}}, z)
	self := h.server("127.0.0.3", smtptest.Behaviour{Hostname: "relay.test", TLS: pki.serverConfig(), Users: map[string]string{"app": "s3cret"}})
	r := routeTo(h, []string{"smart1.test", "smart2.test"}, "starttls", pki.caFile)
	r.Domains = []string{"two.test"}
	h.cfg.Route = append(h.cfg.Route, r)
	r = routeTo(h, []string{"smart1.test"}, "starttls", pki.caFile)
	r.Domains = []string{"one.test"}
	h.cfg.Route = append(h.cfg.Route, r)
	h.start()
	id := h.submit(testBody, []string{"a@two.test"})
	h.waitRecords(id, 1)
	if h.envelope(id) != nil || len(h.first.Messages()) != 1 || len(self.Messages()) != 0 {
		t.Errorf("two smarthosts: queued %v, delivered %d, to ourselves %d", h.envelope(id) != nil, len(h.first.Messages()), len(self.Messages()))
	}
	id = h.submit(testBody, []string{"a@one.test"})
	h.waitRecords(id, 1)
	h.deferredWith(id, "4.4.6")
	if !strings.Contains(h.logs.String(), "smarthost loops back to myself") {
		t.Error("not logged")
	}
}

type lockedBuilder struct {
	mu sync.Mutex
	b  strings.Builder
}

func (l *lockedBuilder) add(s string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.b.WriteString(s)
}

func (l *lockedBuilder) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// TestDelivery_BackupMXIsUs_Defers: when this relay is a backup MX of the
// domain (a less preferred MX greets with our hostname) and the preferred
// MX is down, RFC 5321 §5.1 leaves out the hosts from our own preference
// on: the mail waits for the preferred MX instead of bouncing 5.4.6, and
// no less preferred host is tried.
func TestDelivery_BackupMXIsUs_Defers(t *testing.T) {
	t.Parallel()
	z := dnstest.Zone{}
	addMX(z, "example.test", 10, "mx1.example.test", "127.0.0.3") // nothing listens: down
	addMX(z, "example.test", 20, "mx2.example.test", "127.0.0.2") // this relay
	addMX(z, "example.test", 30, "mx3.example.test", "127.0.0.4")
	h := newHarness(t, smtptest.Behaviour{Hostname: "relay.test"}, z)
	worse := h.server("127.0.0.4", smtptest.Behaviour{})
	senderMX := h.server("127.0.0.250", smtptest.Behaviour{})
	h.start()
	id := h.submit(testBody, []string{"a@example.test"})
	h.waitRecords(id, 1)
	env := h.envelope(id)
	if env == nil {
		t.Fatalf("message left the queue; want it deferred (bounces: %d)", len(senderMX.Messages()))
	}
	if r := env.Recipients[0]; r.State != queue.Pending || !strings.Contains(r.Reply, "mx1.example.test") {
		t.Errorf("recipient %s %q, want pending with the preferred MX's error", r.State, r.Reply)
	}
	if worse.Conns() != 0 || len(senderMX.Messages()) != 0 {
		t.Errorf("less preferred MX saw %d connections, %d bounces sent; want none", worse.Conns(), len(senderMX.Messages()))
	}
	if !strings.Contains(h.logs.String(), "this relay is a backup MX") {
		t.Errorf("no log line says why:\n%s", h.logs.String())
	}
}
