package inbound

import (
	"strings"
	"testing"

	"github.com/mailhop/mailhop/relay/config"
)

// REQUIRETLS (RFC 8689) is offered once TLS is up, and a message sent with
// it is queued with Envelope.RequireTLS, which outbound delivery honours.
func TestRelay_REQUIRETLSOfferedOverTLSAndQueued(t *testing.T) {
	ts := startServer(t, trustLoopback)
	d := dial(t, ts.addr[config.ModeRelay])
	d.expect("220 ")
	d.write("EHLO client.test\r\n")
	if caps := strings.Join(d.replyLines(), "\n"); strings.Contains(caps, "REQUIRETLS") {
		t.Errorf("REQUIRETLS offered before TLS:\n%s", caps)
	}
	d.starttls() // reads the EHLO reply after TLS itself
	d.write("EHLO client.test\r\n")
	if caps := strings.Join(d.replyLines(), "\n"); !strings.Contains(caps, "REQUIRETLS") {
		t.Fatalf("REQUIRETLS not offered over TLS:\n%s", caps)
	}
	d.script(
		"C: MAIL FROM:<a@b.example> REQUIRETLS", "S: 250 ",
		"C: RCPT TO:<c@d.example>", "S: 250 ",
		"C: DATA", "S: 354 ",
		"C: Subject: secret", "C: ", "C: hello", "C: .", "S: 250 2.0.0 OK: queued as ",
		"C: MAIL FROM:<a@b.example>", "S: 250 ",
		"C: RCPT TO:<c@d.example>", "S: 250 ",
		"C: DATA", "S: 354 ",
		"C: Subject: plain", "C: ", "C: hello", "C: .", "S: 250 2.0.0 OK: queued as ",
	)
	n := 0
	for env, body := range ts.queued() {
		want := strings.Contains(body, "Subject: secret")
		if env.RequireTLS != want {
			t.Errorf("message %q: RequireTLS = %v, want %v", body[strings.Index(body, "Subject:"):], env.RequireTLS, want)
		}
		n++
	}
	if n != 2 {
		t.Errorf("%d messages queued, want 2", n)
	}
}

// REQUIRETLS asked for on a plain connection is refused (RFC 8689 §4.1).
func TestRelay_REQUIRETLSRefusedWithoutTLS(t *testing.T) {
	ts := startServer(t, trustLoopback)
	d := dial(t, ts.addr[config.ModeRelay])
	d.script(
		"S: 220 ",
		"C: EHLO client.test", "S: 250 ",
		"C: MAIL FROM:<a@b.example> REQUIRETLS", "S: 530 5.7.10 ",
		"C: MAIL FROM:<a@b.example>", "S: 250 ",
	)
}
