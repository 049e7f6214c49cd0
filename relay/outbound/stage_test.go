package outbound

import (
	"fmt"
	"strings"
	"sync/atomic"
	"testing"
	"time"

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

// A server that stops answering is given up at the timeout of the stage
// it stalled at, that stage is named in the log, and the next MX host
// gets the message, even after the end of data. With PIPELINING the replies to MAIL, RCPT and DATA
// are read in turn; the one that did not come names the stage. EHLO is
// awaited for command_timeout, not greeting_timeout.
func TestDelivery_StalledServer_StageNamed_NextMX(t *testing.T) {
	t.Parallel()
	for _, stall := range []string{"", "EHLO", "MAIL", "RCPT", "DATA", "."} {
		stage := map[string]string{"": "greeting", ".": "end of data"}[stall]
		if stage == "" {
			stage = strings.ToLower(stall)
		}
		t.Run(stage, func(t *testing.T) {
			t.Parallel()
			z := dnstest.Zone{}
			addMX(z, "example.test", 10, "mx1.example.test", "127.0.0.3")
			addMX(z, "example.test", 20, "mx2.example.test", "127.0.0.2")
			h := newHarness(t, smtptest.Behaviour{}, z)
			h.cfg.Delivery.GreetingTimeout.Duration = time.Second
			h.cfg.Delivery.CommandTimeout.Duration = time.Second
			h.cfg.Delivery.DataInitTimeout.Duration = time.Second
			h.cfg.Delivery.DataEndTimeout.Duration = time.Second
			replies := plainReplies(map[string]string{"EHLO": "250-mx1.example.test\r\n250-PIPELINING\r\n250 8BITMIME\r\n"})
			var stalled atomic.Bool
			scriptedServer(t, h, "127.0.0.3", func(verb, line string) string {
				if verb == stall || stalled.Load() {
					stalled.Store(true)
					return "" // no reply, now or later: the client waits
				}
				return replies(verb, line)
			})
			h.start()
			id := h.submit(testBody, []string{"a@example.test"})
			h.waitRecords(id, 1)
			// After the end of data the server may have the message; as
			// Postfix does, the next host is tried all the same, and the
			// log says it may arrive twice.
			want := fmt.Sprintf(`stage=%s err="4.4.2 timed out during %s"`, stage, stage)
			if stage == "end of data" {
				want = `stage="end of data" err="4.4.2 timed out during end of data" note="the message may be delivered more than once"`
			}
			if !strings.Contains(h.logs.String(), want) {
				t.Errorf("no log line with %s", want)
			}
			if o := h.outcome(id); o.state != queue.Delivered {
				t.Errorf("outcome %+v, want delivered by the second MX", o)
			}
		})
	}
}

// EHLO is awaited for command_timeout: a server slower to answer EHLO than
// greeting_timeout (but within command_timeout) gets the message.
func TestDelivery_EHLOWaitsCommandTimeout(t *testing.T) {
	t.Parallel()
	z := dnstest.Zone{}
	addMX(z, "example.test", 10, "mx1.example.test", "127.0.0.3")
	addMX(z, "example.test", 20, "mx2.example.test", "127.0.0.2")
	h := newHarness(t, smtptest.Behaviour{}, z)
	h.cfg.Delivery.GreetingTimeout.Duration = 100 * time.Millisecond
	h.cfg.Delivery.CommandTimeout.Duration = 5 * time.Second
	replies := plainReplies(map[string]string{"EHLO": "250-mx1.example.test\r\n250 PIPELINING\r\n"})
	got := scriptedServer(t, h, "127.0.0.3", func(verb, line string) string {
		if verb == "EHLO" {
			time.Sleep(500 * time.Millisecond) // the server's own pace
		}
		return replies(verb, line)
	})
	h.start()
	id := h.submit(testBody, []string{"a@example.test"})
	h.waitRecords(id, 1)
	if o := h.outcome(id); o.state != queue.Delivered || !strings.Contains(got.String(), "DATA") {
		t.Errorf("outcome %+v; first MX got %q; want delivered by it", o, got.String())
	}
}
