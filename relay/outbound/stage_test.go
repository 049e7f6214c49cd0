package outbound

import (
	"strings"
	"testing"

	"github.com/mailhop/mailhop/dnsmx/dnstest"
	"github.com/mailhop/mailhop/internal/testpki"
	"github.com/mailhop/mailhop/queue"
	"github.com/mailhop/mailhop/relay/outbound/smtptest"
)

// A server that refuses the session in its greeting (554) is sent QUIT
// before the connection closes (RFC 5321 §3.1); the mail stays queued.
func TestDelivery_Greeting554_QuitSent(t *testing.T) {
	t.Parallel()
	h := newHarness(t, smtptest.Behaviour{}, zone("example.test", "127.0.0.3"))
	got := rawServer(t, h, "127.0.0.3", "554 5.7.1 mx.example.test no service", "unused")
	h.start()
	id := h.submit(testBody, []string{"a@example.test"})
	h.waitRecords(id, 1)
	if c := got.String(); c != "QUIT\r\n" {
		t.Errorf("the refusing server got %q, want QUIT", c)
	}
	if o := h.outcome(id); o.state != queue.Pending {
		t.Errorf("outcome %+v, want pending", o)
	}
}

// The attempt line names the TLS version when STARTTLS succeeded and the
// session failed afterwards: AUTH refused, REQUIRETLS not offered.
func TestDelivery_TLSLoggedWhenLaterStageFails(t *testing.T) {
	t.Parallel()
	ca := testpki.NewCA(t)
	z := zone("noext.test", "127.0.0.3")
	z["smart.test."] = append(z["smart.test."], dnstest.A("smart.test", "127.0.0.2"))
	h := newHarness(t, smtptest.Behaviour{TLS: serverTLS(ca.Issue(t, "smart.test")), Users: map[string]string{"app": "other"}}, z)
	h.server("127.0.0.3", smtptest.Behaviour{TLS: serverTLS(ca.Issue(t, "mx.noext.test"))})
	h.server("127.0.0.250", smtptest.Behaviour{})
	h.cfg.Delivery.ExtraRootsFile = ca.File
	r := routeTo(h, []string{"smart.test"}, "starttls", ca.File) // password s3cret: refused
	r.Domains = []string{"routed.test"}
	h.cfg.Route = append(h.cfg.Route, r)
	h.start()

	id := h.submit(testBody, []string{"a@routed.test"})
	h.waitRecords(id, 1)
	h.deferredWith(id, "4.7.8")
	if line := h.lastAttempt("routed.test"); !strings.Contains(line, `tls="TLS 1.3"`) || !strings.Contains(line, "tls_verified=true") {
		t.Errorf("AUTH refused after STARTTLS: %s", line)
	}

	id = h.submit(testBody, []string{"a@noext.test"}, func(e *queue.Envelope) { e.RequireTLS = true })
	h.waitRecords(id, 1)
	if line := h.lastAttempt("noext.test"); !strings.Contains(line, `tls="TLS 1.3"`) || !strings.Contains(line, "5.7.30") {
		t.Errorf("no REQUIRETLS after STARTTLS: %s", line)
	}
}
