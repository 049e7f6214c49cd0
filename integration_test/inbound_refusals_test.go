package integration_test

import (
	"crypto/tls"
	"encoding/base64"
	"fmt"
	"net"
	"net/textproto"
	"strings"
	"testing"
	"time"
)

// dialog is a hand-driven SMTP client for tests that check exact replies.
type dialog struct {
	t   testing.TB
	raw net.Conn
	c   *textproto.Conn
}

// dial connects to addr (with implicit TLS when tlsOn) and reads the greeting.
func dial(t testing.TB, addr string, tlsOn bool) *dialog {
	t.Helper()
	raw, err := net.DialTimeout("tcp", addr, 10*time.Second)
	if err != nil {
		t.Fatalf("dial %s: %v", addr, err)
	}
	raw.SetDeadline(time.Now().Add(60 * time.Second))
	d := &dialog{t: t, raw: raw}
	if tlsOn {
		tc := tls.Client(raw, &tls.Config{InsecureSkipVerify: true})
		if err := tc.Handshake(); err != nil {
			raw.Close()
			t.Fatalf("TLS handshake with %s: %v", addr, err)
		}
		d.raw = tc
	}
	d.c = textproto.NewConn(d.raw)
	t.Cleanup(func() { d.raw.Close() })
	d.expect(220, "", "")
	return d
}

// cmd sends one command line (none when format is "") and returns the reply.
func (d *dialog) cmd(format string, args ...any) (int, string) {
	d.t.Helper()
	if format != "" {
		if err := d.c.PrintfLine(format, args...); err != nil {
			d.t.Fatalf("sending %q: %v", format, err)
		}
	}
	code, msg, err := d.c.ReadResponse(0)
	if err != nil {
		d.t.Fatalf("reply to %q: %v", format, err)
	}
	return code, msg
}

// expect sends a command and fails the test unless the reply has code and
// (when enh is not empty) starts with the enhanced status code enh.
func (d *dialog) expect(code int, enh, format string, args ...any) string {
	d.t.Helper()
	got, msg := d.cmd(format, args...)
	if got != code || (enh != "" && !strings.HasPrefix(msg, enh+" ")) {
		d.t.Fatalf("%q: got %d %s, want %d %s", strings.TrimSpace(format), got, msg, code, enh)
	}
	return msg
}

// ehlo sends EHLO and returns the extensions offered, upper-cased.
func (d *dialog) ehlo() []string {
	d.t.Helper()
	msg := d.expect(250, "", "EHLO client.test")
	lines := strings.Split(msg, "\n")
	var exts []string
	for _, l := range lines[1:] {
		exts = append(exts, strings.ToUpper(l))
	}
	return exts
}

// starttls upgrades the connection.
func (d *dialog) starttls() {
	d.t.Helper()
	d.expect(220, "", "STARTTLS")
	tc := tls.Client(d.raw, &tls.Config{InsecureSkipVerify: true})
	if err := tc.Handshake(); err != nil {
		d.t.Fatalf("STARTTLS handshake: %v", err)
	}
	d.raw = tc
	d.c = textproto.NewConn(tc)
}

// data sends DATA and the body (dot-stuffed here; body must end in CRLF)
// and returns the final reply. A refusal of DATA itself is returned as is.
func (d *dialog) data(body []byte) (int, string) {
	d.t.Helper()
	code, msg := d.cmd("DATA")
	if code != 354 {
		return code, msg
	}
	w := d.c.DotWriter()
	if _, err := w.Write(body); err != nil {
		d.t.Fatalf("writing body: %v", err)
	}
	if err := w.Close(); err != nil {
		d.t.Fatalf("ending body: %v", err)
	}
	return d.cmd("")
}

// plainResp is the AUTH PLAIN response for user and pass.
func plainResp(user, pass string) string {
	return base64.StdEncoding.EncodeToString([]byte("\x00" + user + "\x00" + pass))
}

// quit ends a dialog politely; the reply is not checked (the server may
// already have closed the connection after a refusal).
func (d *dialog) quit() {
	d.c.PrintfLine("QUIT")
	d.c.ReadResponse(0)
	d.raw.Close()
}

// hasExt reports whether an EHLO reply offers ext (a keyword, or a keyword
// with a parameter such as "AUTH PLAIN").
func hasExt(exts []string, ext string) bool {
	for _, e := range exts {
		if e == ext || strings.HasPrefix(e, ext+" ") {
			return true
		}
		// "AUTH PLAIN LOGIN" offers "AUTH LOGIN" too.
		if k, v, ok := strings.Cut(ext, " "); ok && strings.HasPrefix(e, k+" ") {
			for _, p := range strings.Fields(e)[1:] {
				if p == v {
					return true
				}
			}
		}
	}
	return false
}

// smallMessage is a minimal complete message.
func smallMessage(subject string) []byte {
	return []byte("From: <app@example.com>\r\nTo: <x@example.net>\r\nSubject: " + subject +
		"\r\nMessage-ID: <" + strings.ReplaceAll(subject, " ", "-") + "@client.test>\r\n" +
		"Date: Tue, 2 Jan 2024 03:04:05 +0100\r\n\r\nhello\r\n")
}

// TestRefusalsPolicy runs a relay that does not trust 127.0.0.1 and checks
// every refusal about who may send what, then that nothing refused was
// queued.
func TestRefusalsPolicy(t *testing.T) {
	t.Parallel()
	r := startRelay(t, relayOpts{Policy: "trusted_networks = [\"10.0.0.0/8\"]\n"})

	t.Run("relay from untrusted address without AUTH", func(t *testing.T) {
		d := dial(t, r.Relay, false)
		d.ehlo()
		d.expect(250, "", "MAIL FROM:<someone@example.com>")
		d.expect(554, "5.7.1", "RCPT TO:<victim@example.net>")
		// Also with STARTTLS but still without AUTH.
		d2 := dial(t, r.Relay, false)
		if !hasExt(d2.ehlo(), "STARTTLS") {
			t.Errorf("relay listener does not offer STARTTLS")
		}
		d2.starttls()
		d2.ehlo()
		d2.expect(250, "", "MAIL FROM:<someone@example.com>")
		d2.expect(554, "5.7.1", "RCPT TO:<victim@example.net>")
		d.quit()
		d2.quit()
	})

	t.Run("relay listener: AUTH after STARTTLS relays", func(t *testing.T) {
		d := dial(t, r.Relay, false)
		d.ehlo()
		d.starttls()
		d.ehlo()
		d.expect(235, "", "AUTH PLAIN %s", plainResp(testUser, testPassword))
		d.expect(250, "", "MAIL FROM:<app@example.com>")
		d.expect(250, "", "RCPT TO:<allowed@example.net>")
		code, msg := d.data(smallMessage("relay auth"))
		if code != 250 || !strings.HasPrefix(msg, "2.0.0 OK: queued as ") {
			t.Fatalf("DATA: %d %s", code, msg)
		}
		d.quit()
	})

	for _, addr := range []struct{ name, addr string }{{"submission", r.Sub}, {"relay", r.Relay}} {
		t.Run("AUTH before STARTTLS on "+addr.name, func(t *testing.T) {
			d := dial(t, addr.addr, false)
			exts := d.ehlo()
			if hasExt(exts, "AUTH PLAIN") || hasExt(exts, "AUTH LOGIN") {
				t.Errorf("AUTH offered before STARTTLS: %q", exts)
			}
			if !hasExt(exts, "STARTTLS") {
				t.Errorf("STARTTLS not offered: %q", exts)
			}
			d.expect(530, "5.7.0", "AUTH PLAIN %s", plainResp(testUser, testPassword))
			d.expect(530, "5.7.0", "AUTH LOGIN")
			if addr.name == "submission" {
				// And no mail without AUTH.
				d.expect(530, "5.7.0", "MAIL FROM:<app@example.com>")
			}
			d.quit()
		})
	}

	t.Run("submission: MAIL after STARTTLS without AUTH", func(t *testing.T) {
		d := dial(t, r.Sub, false)
		d.ehlo()
		d.starttls()
		exts := d.ehlo()
		if !hasExt(exts, "AUTH PLAIN") || !hasExt(exts, "AUTH LOGIN") {
			t.Errorf("AUTH PLAIN and LOGIN not both offered after STARTTLS: %q", exts)
		}
		d.expect(530, "5.7.0", "MAIL FROM:<app@example.com>")
		d.quit()
	})

	t.Run("submissions: MAIL without AUTH", func(t *testing.T) {
		d := dial(t, r.Subs, true)
		d.ehlo()
		d.expect(530, "5.7.0", "MAIL FROM:<app@example.com>")
		d.quit()
	})

	t.Run("wrong password", func(t *testing.T) {
		d := dial(t, r.Sub, false)
		d.ehlo()
		d.starttls()
		d.ehlo()
		d.expect(535, "5.7.8", "AUTH PLAIN %s", plainResp(testUser, "wrong-pass"))
		d.expect(535, "5.7.8", "AUTH PLAIN %s", plainResp("nobody", testPassword))
		// AUTH LOGIN, step by step.
		d.expect(334, "", "AUTH LOGIN")
		d.expect(334, "", "%s", base64.StdEncoding.EncodeToString([]byte(testUser)))
		d.expect(535, "5.7.8", "%s", base64.StdEncoding.EncodeToString([]byte("s3cret-pasS")))
		// Still unauthenticated.
		d.expect(530, "5.7.0", "MAIL FROM:<app@example.com>")
		// The right password still works on the same connection.
		d.expect(235, "", "AUTH PLAIN %s", plainResp(testUser, testPassword))
		d.quit()
	})

	t.Run("wrong password on submissions", func(t *testing.T) {
		d := dial(t, r.Subs, true)
		d.ehlo()
		d.expect(535, "5.7.8", "AUTH PLAIN %s", plainResp(testUser, testPassword+"x"))
		d.quit()
	})

	t.Run("sender the user may not use", func(t *testing.T) {
		d := dial(t, r.Subs, true)
		d.ehlo()
		d.expect(235, "", "AUTH PLAIN %s", plainResp(testUser, testPassword))
		for _, from := range []string{"someone@example.net", "other@example.org", "app@sub.example.com",
			"app@example.com.evil.test"} {
			d.expect(553, "5.7.1", "MAIL FROM:<%s>", from)
		}
		// The null sender is anyone's (read receipts, RFC 8098), as Postfix's
		// reject_sender_login_mismatch skips it.
		d.expect(250, "", "MAIL FROM:<>")
		d.expect(250, "", "RSET")
		// Allowed: any address at example.com (any case of the domain), and boss@example.org.
		d.expect(250, "", "MAIL FROM:<anyone@EXAMPLE.com>")
		d.expect(250, "", "RSET")
		d.expect(250, "", "MAIL FROM:<boss@example.org>")
		d.expect(250, "", "RCPT TO:<x@example.net>")
		d.expect(250, "", "RSET")
		d.quit()
	})

	r.stop()
	for _, l := range [][]string{
		{`msg="rcpt refused"`, "code=554", "client=127.0.0.1"},
		{`msg="auth failed"`, "user=app", "client=127.0.0.1"},
		{`msg="mail refused"`, "code=553", "user=app"},
		{`msg="mail refused"`, "code=530"},
		{`msg="message accepted"`, "queue_id=", "user=app", "from=app@example.com", "rcpts=1", "tls=TLS"},
	} {
		if !r.waitLine(l...) {
			t.Errorf("no log line with %q", l)
		}
	}
	q := r.openQueue()
	list := q.List()
	if len(list) != 1 || len(list[0].Recipients) != 1 || list[0].Recipients[0].Address != "allowed@example.net" {
		var got []string
		for _, e := range list {
			got = append(got, fmt.Sprintf("%s from %q to %v", e.ID, e.From, e.Recipients))
		}
		t.Errorf("queue: want only the authenticated message to allowed@example.net, got %q", got)
	}
	if len(list) == 1 && list[0].User != testUser {
		t.Errorf("user %q, want %q", list[0].User, testUser)
	}
}

// TestRefusalsLimits checks the size and recipient limits on a trusted
// connection.
func TestRefusalsLimits(t *testing.T) {
	t.Parallel()
	const limit = 10000
	r := startRelay(t, relayOpts{Policy: fmt.Sprintf("trusted_networks = [\"127.0.0.0/8\"]\nmax_recipients = 3\nmax_message_size = %d\n", limit)})

	big := func(n int) []byte {
		b := smallMessage("big")
		line := strings.Repeat("x", 70) + "\r\n"
		for len(b) < n {
			b = append(b, line...)
		}
		return b
	}

	t.Run("SIZE advertised", func(t *testing.T) {
		d := dial(t, r.Relay, false)
		if exts := d.ehlo(); !hasExt(exts, fmt.Sprintf("SIZE %d", limit)) {
			t.Errorf("EHLO does not offer SIZE %d: %q", limit, exts)
		}
		d.quit()
	})

	t.Run("over-size by SIZE parameter", func(t *testing.T) {
		d := dial(t, r.Relay, false)
		d.ehlo()
		d.expect(552, "5.3.4", "MAIL FROM:<a@example.com> SIZE=%d", limit+1)
		// A SIZE within the limit is fine.
		d.expect(250, "", "MAIL FROM:<a@example.com> SIZE=%d", limit/2)
		d.quit()
	})

	t.Run("over-size by SIZE parameter beyond 32 bits", func(t *testing.T) {
		// RFC 1870 allows up to 20 digits; 1 TiB is too big, not malformed.
		d := dial(t, r.Relay, false)
		d.ehlo()
		d.expect(552, "5.3.4", "MAIL FROM:<a@example.com> SIZE=%d", int64(1)<<40)
		d.quit()
	})

	t.Run("over-size by data", func(t *testing.T) {
		d := dial(t, r.Relay, false)
		d.ehlo()
		d.expect(250, "", "MAIL FROM:<a@example.com>")
		d.expect(250, "", "RCPT TO:<toobig@example.net>")
		code, msg := d.data(big(3 * limit))
		if code != 552 || !strings.HasPrefix(msg, "5.3.4 ") {
			t.Fatalf("DATA of %d bytes over a limit of %d: got %d %s, want 552 5.3.4", 3*limit, limit, code, msg)
		}
		d.quit()
	})

	t.Run("over-size by data, lying SIZE", func(t *testing.T) {
		d := dial(t, r.Relay, false)
		d.ehlo()
		d.expect(250, "", "MAIL FROM:<a@example.com> SIZE=100")
		d.expect(250, "", "RCPT TO:<toobig2@example.net>")
		code, msg := d.data(big(limit + 500))
		if code != 552 || !strings.HasPrefix(msg, "5.3.4 ") {
			t.Fatalf("DATA of %d bytes over a limit of %d: got %d %s, want 552 5.3.4", limit+500, limit, code, msg)
		}
		d.quit()
	})

	t.Run("under the size limit", func(t *testing.T) {
		d := dial(t, r.Relay, false)
		d.ehlo()
		d.expect(250, "", "MAIL FROM:<a@example.com>")
		d.expect(250, "", "RCPT TO:<fits@example.net>")
		code, msg := d.data(big(limit / 2))
		if code != 250 || !strings.HasPrefix(msg, "2.0.0 OK: queued as ") {
			t.Fatalf("DATA of %d bytes, limit %d: got %d %s", limit/2, limit, code, msg)
		}
		d.quit()
	})

	t.Run("too many recipients", func(t *testing.T) {
		d := dial(t, r.Relay, false)
		d.ehlo()
		d.expect(250, "", "MAIL FROM:<a@example.com>")
		for i := 1; i <= 3; i++ {
			d.expect(250, "", "RCPT TO:<r%d@example.net>", i)
		}
		d.expect(452, "4.5.3", "RCPT TO:<r4@example.net>")
		d.expect(452, "4.5.3", "RCPT TO:<r5@example.net>")
		code, msg := d.data(smallMessage("three recipients"))
		if code != 250 {
			t.Fatalf("DATA after the refused recipients: %d %s", code, msg)
		}
		d.quit()
	})

	r.stop()
	// The transaction log: one line per transaction, and the refusals.
	for _, l := range [][]string{
		{`msg="mail refused"`, "code=552"},
		{`msg="message refused"`, "code=552", "client=127.0.0.1", "from=a@example.com", "rcpts=1", "tls=", "reply=\"5.3.4 "},
		{`msg="rcpt refused"`, "code=452"},
		{`msg="message accepted"`, "queue_id=", "client=127.0.0.1", "from=a@example.com", "rcpts=3", "size=", "tls=", "code=250"},
	} {
		if !r.waitLine(l...) {
			t.Errorf("no log line with %q", l)
		}
	}
	q := r.openQueue()
	got := map[string][]string{}
	for _, e := range q.List() {
		var rc []string
		for _, x := range e.Recipients {
			rc = append(rc, x.Address)
		}
		got[rc[0]] = rc
	}
	want := map[string][]string{
		"fits@example.net": {"fits@example.net"},
		"r1@example.net":   {"r1@example.net", "r2@example.net", "r3@example.net"},
	}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("queue: got %v, want %v", got, want)
	}
}
