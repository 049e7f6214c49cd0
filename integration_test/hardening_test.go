package integration_test

// Hardening (issue 4): the attacks a relay on the internet sees, tried
// against the real binary. Each test names the defence it proves; each
// fails when that defence is taken out.
//
//	attacker (127.0.0.1 untrusted, or 127.0.0.x) ──▶ mailhop ──▶ tap (127.0.0.2:P) ──▶ smtptest (127.0.0.3:P)
//	                                                              records the raw bytes mailhop sends
//
// Addresses: 127.0.0.1 is the normal client; 127.0.0.2–127.0.0.40 hold the
// idle connections of the load test; 127.0.0.50–127.0.0.99 are attackers
// of the AUTH and limit tests; 127.0.1.x are the timing test's clients.

import (
	"bufio"
	"bytes"
	"crypto/tls"
	"encoding/base64"
	"fmt"
	"io"
	"net"
	"net/textproto"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/mailhop/mailhop/dnsmx/dnstest"
	"github.com/mailhop/mailhop/internal/testlog"
	"github.com/mailhop/mailhop/internal/testpki"
	"github.com/mailhop/mailhop/relay/admin"
	"github.com/mailhop/mailhop/relay/outbound/smtptest"
)

// dialogFrom opens a dialog with addr from the local address ip and reads
// the greeting (which must be 220).
func dialogFrom(t testing.TB, ip, addr string) *dialog {
	t.Helper()
	raw, err := dialFrom(ip, addr, 10*time.Second)
	if err != nil {
		t.Fatalf("dial %s from %s: %v", addr, ip, err)
	}
	raw.SetDeadline(time.Now().Add(60 * time.Second))
	d := &dialog{t: t, raw: raw, c: textproto.NewConn(raw)}
	t.Cleanup(func() { d.raw.Close() })
	d.expect(220, "", "")
	return d
}

// write sends raw bytes (several pipelined commands, or data).
func (d *dialog) write(s string) {
	d.t.Helper()
	if _, err := io.WriteString(d.raw, s); err != nil {
		d.t.Fatalf("writing: %v", err)
	}
}

// closedAfter reads what is left and reports whether the server closed the
// connection within limit.
func (d *dialog) closedAfter(limit time.Duration) bool {
	d.raw.SetReadDeadline(time.Now().Add(limit))
	_, err := io.Copy(io.Discard, d.c.R)
	return err == nil // EOF, not a timeout
}

// ---------------------------------------------------------------------
// 1. Never an open relay.

// TestHardeningOpenRelay tries every address trick from a client that is
// neither trusted nor authenticated. Each is refused at RCPT (554 5.7.1) or
// as bad syntax (501 5.1.3), never accepted; the session goes on; nothing
// is queued. Defence: the relay decision in relay/inbound/session.go Rcpt
// and the strict parser in addr.go.
func TestHardeningOpenRelay(t *testing.T) {
	t.Parallel()
	r := startRelay(t, relayOpts{Policy: "trusted_networks = [\"10.0.0.0/8\"]\n"})

	t.Run("out of sequence", func(t *testing.T) {
		d := dial(t, r.Relay, false)
		d.expect(503, "5.5.1", "MAIL FROM:<someone@example.com>")
		d.expect(503, "5.5.1", "RCPT TO:<victim@remote.test>")
		d.expect(503, "5.5.1", "DATA")
		d.ehlo()
		d.expect(503, "5.5.1", "RCPT TO:<victim@remote.test>")
		d.expect(250, "", "MAIL FROM:<someone@example.com>")
		d.expect(503, "5.5.1", "MAIL FROM:<someone@example.com>")
		d.expect(503, "5.5.1", "DATA")
		d.quit()
	})

	tricks := []struct {
		name, rcpt string
		utf8       bool // MAIL FROM with SMTPUTF8
	}{
		{"plain remote", "victim@remote.test", false},
		{"percent hack", "user%remote.test@mx.relay.test", false},
		{"percent hack to an IP literal", "user%remote.test@[127.0.0.1]", false},
		{"double percent", "user%remote.test%other.test@mx.relay.test", false},
		{"source route", "@mx.relay.test:user@remote.test", false},
		{"source route, two hops", "@mx.relay.test,@hop.test:user@remote.test", false},
		{"bang path", "remote.test!user@mx.relay.test", false},
		{"bang path without domain", "remote.test!user", false},
		{"quoted @", `"user@remote.test"@mx.relay.test`, false},
		{"quoted %", `"user%remote.test"@mx.relay.test`, false},
		{"quoted !", `"remote.test!user"@mx.relay.test`, false},
		{"quoted escaped @", `"user\@remote.test"@mx.relay.test`, false},
		{"quoted, nothing after", `"user@remote.test"`, false},
		{"IPv4 literal", "user@[127.0.0.1]", false},
		{"IPv6 literal", "user@[IPv6:::1]", false},
		{"general literal", "user@[x-tag:foo]", false},
		{"dotted quad without brackets", "user@127.0.0.1", false},
		{"trailing dot", "user@remote.test.", false},
		{"trailing dot, relay's name", "user@mx.relay.test.", false},
		{"leading dot", "user@.remote.test", false},
		{"mixed case", "User@REMOTE.Test", false},
		{"mixed case, relay's name", "user@MX.Relay.TEST", false},
		{"relay's own name", "postmaster@mx.relay.test", false},
		{"localhost", "root@localhost", false},
		{"two @", "user@remote.test@mx.relay.test", false},
		{"@@", "user@@remote.test", false},
		{"no domain", "postmaster", false},
		{"empty", "", false},
		{"empty local part", "@remote.test", false},
		{"space inside", "user @remote.test", false},
		{"control character", "us\ter@remote.test", false},
		{"UTF-8 look-alike domain, no SMTPUTF8", "user@remote.t\u0435st", false},
		{"UTF-8 look-alike domain", "user@remote.t\u0435st", true},
		{"fullwidth @, no SMTPUTF8", "user\uff20remote.test@mx.relay.test", false},
		{"fullwidth @", "user\uff20remote.test@mx.relay.test", true},
		{"fullwidth percent", "user\uff05remote.test@mx.relay.test", true},
		{"UTF-8 local part, no SMTPUTF8", "\u00fcser@remote.test", false},
		{"UTF-8 local part", "\u00fcser@remote.test", true},
		{"invalid UTF-8", "us\xff\xfeer@remote.test", true},
	}
	for _, tr := range tricks {
		t.Run(tr.name, func(t *testing.T) {
			d := dial(t, r.Relay, false)
			d.ehlo()
			mail := "MAIL FROM:<someone@example.com>"
			if tr.utf8 {
				mail += " SMTPUTF8"
			}
			d.expect(250, "", "%s", mail)
			code, msg := d.cmd("RCPT TO:<%s>", tr.rcpt)
			switch {
			case code == 554 && strings.HasPrefix(msg, "5.7.1 "):
			case code == 501 && strings.HasPrefix(msg, "5.1.3 "):
			case code == 553 && strings.HasPrefix(msg, "5.6.7 ") && !tr.utf8:
				// A UTF-8 address without SMTPUTF8 (RFC 6531 §3.5).
			default:
				t.Fatalf("RCPT TO:<%s>: %d %s; want 554 5.7.1, 501 5.1.3 (or 553 5.6.7 without SMTPUTF8)", tr.rcpt, code, msg)
			}
			// The same address, unbracketed.
			if tr.rcpt != "" {
				if code, msg := d.cmd("RCPT TO:%s", tr.rcpt); code < 500 {
					t.Fatalf("RCPT TO:%s (no brackets): %d %s", tr.rcpt, code, msg)
				}
			}
			// The session goes on.
			d.expect(250, "", "RSET")
			d.expect(250, "", "MAIL FROM:<someone@example.com>")
			d.expect(554, "5.7.1", "RCPT TO:<victim@remote.test>")
			d.quit()
		})
	}

	t.Run("malformed MAIL, then a valid one", func(t *testing.T) {
		d := dial(t, r.Relay, false)
		d.ehlo()
		for _, from := range []string{"a@b@remote.test", "a@remote.test.", "@hop.test:a@remote.test", `"unterminated@remote.test`, "a@[300.0.0.1]", "a b@remote.test"} {
			d.expect(501, "5.1.3", "MAIL FROM:<%s>", from)
		}
		d.expect(250, "", "MAIL FROM:<someone@example.com>")
		d.quit()
	})

	t.Run("pipelined tricks", func(t *testing.T) {
		// RFC 2920: all at once; every reply still comes, none is 250 for RCPT.
		d := dial(t, r.Relay, false)
		d.ehlo()
		d.write("MAIL FROM:<someone@example.com>\r\nRCPT TO:<a%remote.test@mx.relay.test>\r\nRCPT TO:<remote.test!b@mx.relay.test>\r\nDATA\r\n")
		d.expect(250, "", "")
		d.expect(554, "5.7.1", "")
		d.expect(554, "5.7.1", "")
		d.expect(503, "5.5.1", "")
		d.quit()
	})

	if msgs := r.list(); len(msgs) != 0 {
		t.Errorf("queue holds %d message(s) from an untrusted client: %+v", len(msgs), msgs)
	}
	if !r.waitLine(`msg="rcpt refused"`, "reason=relay_denied", "client=127.0.0.1") {
		t.Errorf("no log line for a refused relay attempt")
	}
}

// ---------------------------------------------------------------------
// 2. SMTP smuggling.

// wireTap is a TCP proxy that records every byte its clients send.
type wireTap struct {
	mu    sync.Mutex
	conns []*bytes.Buffer
}

// startTapOn forwards every connection ln accepts to target.
func startTapOn(t testing.TB, ln net.Listener, target string) *wireTap {
	t.Helper()
	tap := &wireTap{}
	var wg sync.WaitGroup
	var open sync.Map
	t.Cleanup(func() {
		ln.Close()
		open.Range(func(k, _ any) bool { k.(net.Conn).Close(); return true })
		wg.Wait()
	})
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			up, err := net.DialTimeout("tcp", target, 5*time.Second)
			if err != nil {
				c.Close()
				continue
			}
			open.Store(c, true)
			open.Store(up, true)
			rec := &lockedBuffer{mu: &tap.mu}
			tap.mu.Lock()
			tap.conns = append(tap.conns, &rec.b)
			tap.mu.Unlock()
			wg.Add(2)
			go func() {
				defer wg.Done()
				io.Copy(up, io.TeeReader(c, rec))
				up.Close()
				c.Close()
			}()
			go func() {
				defer wg.Done()
				io.Copy(c, up)
				c.Close()
				up.Close()
			}()
		}
	}()
	return tap
}

type lockedBuffer struct {
	mu *sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

// streams returns a copy of what each connection sent so far.
func (w *wireTap) streams() [][]byte {
	w.mu.Lock()
	defer w.mu.Unlock()
	var out [][]byte
	for _, b := range w.conns {
		out = append(out, bytes.Clone(b.Bytes()))
	}
	return out
}

// bareLineEnding returns the offset of the first CR not followed by LF or
// LF not preceded by CR in b, or -1.
func bareLineEnding(b []byte) int {
	for i, c := range b {
		switch {
		case c == '\r' && (i+1 >= len(b) || b[i+1] != '\n'):
			return i
		case c == '\n' && (i == 0 || b[i-1] != '\r'):
			return i
		}
	}
	return -1
}

// TestHardeningSmuggling submits, from a trusted client, a message whose
// body holds a fake end of data followed by a second, smuggled transaction,
// for every known variant of the fake end and in three forms (DATA,
// pipelined DATA, BDAT). mailhop must refuse the carrier (550 5.6.11) and
// stay in step, so that the legitimate message sent after it on the same
// connection is the only one that reaches the next server; and no byte
// mailhop sends to that server is a bare CR or LF. Defence: go-smtp's
// dataReader and lineChecker (MAILHOP-PATCHES.md item 4).
func TestHardeningSmuggling(t *testing.T) {
	t.Parallel()
	w := newMXWorld(t, dnstest.Zone{
		"dest.test.":    {dnstest.MX("dest.test", 10, "mx.dest.test")},
		"mx.dest.test.": {dnstest.A("mx.dest.test", "127.0.0.2")},
	})
	next := w.mx("127.0.0.3", smtptest.Behaviour{Hostname: "next.test"})
	tap := startTapOn(t, w.listen("127.0.0.2"), next.Addr)
	r := w.start("1h", "", "")

	fakeEnds := []struct{ name, eod string }{
		{"LF.CRLF", "\n.\r\n"},
		{"CR.CRLF", "\r.\r\n"},
		{"LF.LF", "\n.\n"},
		{"CR.CR", "\r.\r"},
		{"CRLF.CR", "\r\n.\r"},
		{"LF.CR", "\n.\r"},
		{"CRLF.LF", "\r\n.\n"},
	}
	header := func(to, subject, id string) string {
		return "From: <" + senderAddr + ">\r\nTo: <" + to + ">\r\nSubject: " + subject +
			"\r\nMessage-ID: <" + id + "@client.test>\r\n\r\n"
	}
	// carrier returns a body (ending in the real CRLF.CRLF) that ends early
	// at eod for a server that takes eod as the end of data; what follows
	// is a smuggled transaction to victim@dest.test.
	carrier := func(n int, eod string) string {
		return header("bob@dest.test", fmt.Sprintf("carrier %d", n), fmt.Sprintf("carrier-%d", n)) +
			"carrier body" + eod +
			"MAIL FROM:<" + senderAddr + ">\r\nRCPT TO:<victim@dest.test>\r\nDATA\r\n" +
			header("victim@dest.test", fmt.Sprintf("smuggled %d", n), fmt.Sprintf("smuggled-%d", n)) +
			"smuggled body\r\n.\r\n"
	}
	legit := func(n int) string {
		return header("bob@dest.test", fmt.Sprintf("legit %d", n), fmt.Sprintf("legit-%d", n)) + "legit body\r\n.\r\n"
	}
	envelope := "MAIL FROM:<" + senderAddr + ">\r\nRCPT TO:<bob@dest.test>\r\n"

	n := 0
	for _, form := range []string{"DATA", "pipelined", "BDAT"} {
		for _, fe := range fakeEnds {
			n++
			n := n
			t.Run(form+" "+fe.name, func(t *testing.T) {
				d := dial(t, r.Relay, false)
				d.ehlo()
				switch form {
				case "DATA":
					d.expect(250, "", "MAIL FROM:<%s>", senderAddr)
					d.expect(250, "", "RCPT TO:<bob@dest.test>")
					d.expect(354, "", "DATA")
					d.write(carrier(n, fe.eod))
					d.expect(550, "5.6.11", "")
					d.expect(250, "", "MAIL FROM:<%s>", senderAddr)
					d.expect(250, "", "RCPT TO:<bob@dest.test>")
					d.expect(354, "", "DATA")
					d.write(legit(n))
					d.expect(250, "2.0.0", "")
				case "pipelined":
					// Everything in one write, the way an attacker's
					// client would: two transactions and QUIT.
					d.write(envelope + "DATA\r\n" + carrier(n, fe.eod) + envelope + "DATA\r\n" + legit(n) + "QUIT\r\n")
					for _, want := range []int{250, 250, 354, 550, 250, 250, 354, 250, 221} {
						d.expect(want, "", "")
					}
				case "BDAT":
					chunk := strings.TrimSuffix(carrier(n, fe.eod), ".\r\n")
					d.write(envelope + fmt.Sprintf("BDAT %d LAST\r\n", len(chunk)) + chunk)
					d.expect(250, "", "")
					d.expect(250, "", "")
					d.expect(550, "5.6.11", "")
					d.expect(250, "", "MAIL FROM:<%s>", senderAddr)
					d.expect(250, "", "RCPT TO:<bob@dest.test>")
					body := strings.TrimSuffix(legit(n), ".\r\n")
					d.write(fmt.Sprintf("BDAT %d LAST\r\n", len(body)) + body)
					d.expect(250, "2.0.0", "")
				}
				d.quit()
			})
		}
	}

	msgs := waitMsgs(t, next, n, 60*time.Second)
	waitQueueEmpty(t, r, 30*time.Second)
	msgs = next.Messages()
	seen := map[string]int{}
	for _, m := range msgs {
		if bytes.Contains(m.Data, []byte("smuggled")) || slices.Contains(m.To, "victim@dest.test") {
			t.Errorf("a smuggled message reached the next server: to %v\n%q", m.To, m.Data)
		}
		if !slices.Equal(m.To, []string{"bob@dest.test"}) {
			t.Errorf("message to %v", m.To)
		}
		if i := bareLineEnding(m.Data); i >= 0 {
			t.Errorf("a message with a bare CR or LF at %d reached the next server: %q", i, m.Data)
		}
		for i := 1; i <= n; i++ {
			if bytes.Contains(m.Data, []byte(fmt.Sprintf("Message-ID: <legit-%d@client.test>\r\n", i))) {
				seen[fmt.Sprint(i)]++
			}
		}
	}
	if len(msgs) != n || len(seen) != n {
		t.Errorf("the next server got %d messages (%d distinct legitimate ones); want exactly the %d legitimate ones", len(msgs), len(seen), n)
	}
	for k, c := range seen {
		if c != 1 {
			t.Errorf("legit-%s arrived %d times", k, c)
		}
	}
	// What mailhop put on the wire, byte for byte.
	streams := tap.streams()
	if len(streams) == 0 {
		t.Fatalf("the tap saw no connection")
	}
	for i, s := range streams {
		if j := bareLineEnding(s); j >= 0 {
			t.Errorf("connection %d: mailhop sent a bare CR or LF at offset %d: %q", i, j, s[max(0, j-40):min(len(s), j+40)])
		}
		if bytes.Contains(s, []byte("victim")) || bytes.Contains(s, []byte("smuggled")) {
			t.Errorf("connection %d: smuggled text on the wire", i)
		}
	}
	if got := len(w.senderMX.Messages()); got != 0 {
		t.Errorf("%d bounce(s) to the sender", got)
	}
	// The log reaches the test through a pipe: wait (bounded) for it.
	waitFor(t, fmt.Sprintf("%d refusals logged with reason=bare_line_ending", n), 10*time.Second, func() bool {
		return strings.Count(r.logs.String(), "reason=bare_line_ending") >= n
	})
}

// ---------------------------------------------------------------------
// 3. AUTH abuse.

// tlsDialogFrom opens a dialog with a submission listener from ip and
// brings it to the point of AUTH: EHLO, STARTTLS, EHLO.
func tlsDialogFrom(t testing.TB, ip, addr string) *dialog {
	t.Helper()
	d := dialogFrom(t, ip, addr)
	d.ehlo()
	d.starttls()
	d.ehlo()
	return d
}

// timed sends one command and returns the reply and how long it took.
func (d *dialog) timed(format string, args ...any) (int, string, time.Duration) {
	d.t.Helper()
	t0 := time.Now()
	code, msg := d.cmd(format, args...)
	return code, msg, time.Since(t0)
}

// readLine reads one raw line from a connection (a refusal at connect).
func readLine(t testing.TB, c net.Conn) string {
	t.Helper()
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil && line == "" {
		t.Fatalf("reading from %s: %v", c.RemoteAddr(), err)
	}
	return line
}

func median(ds []time.Duration) time.Duration {
	s := slices.Clone(ds)
	slices.Sort(s)
	return s[len(s)/2]
}

// TestHardeningAuthAbuse guesses passwords through the binary with the
// default limits (3 free failures, then one more second per failure, 421
// and a 10-minute block at the 10th). Defences: relay/inbound/auth.go
// authFailed and limits.go authFailures; go-smtp's AUTH replies
// (MAILHOP-PATCHES.md item 2); the dummy bcrypt compare for unknown users.
func TestHardeningAuthAbuse(t *testing.T) {
	t.Parallel()
	r := startRelay(t, relayOpts{Policy: "trusted_networks = [\"127.0.0.1/32\"]\n"})

	t.Run("malformed AUTH", func(t *testing.T) {
		// No TLS: AUTH is refused on every listener that is not encrypted.
		for _, addr := range []string{r.Sub, r.Relay} {
			d := dialogFrom(t, "127.0.0.52", addr)
			d.ehlo()
			d.expect(530, "5.7.0", "AUTH PLAIN %s", plainResp(testUser, testPassword))
			d.expect(530, "5.7.0", "AUTH LOGIN")
			d.expect(250, "", "NOOP")
			d.quit()
		}
		d := tlsDialogFrom(t, "127.0.0.52", r.Sub)
		d.expect(501, "5.5.2", "AUTH PLAIN !!!not-base64!!!")
		d.expect(504, "5.5.4", "AUTH CRAM-MD5")
		d.expect(504, "5.5.4", "AUTH X-\x01\x02")
		d.expect(501, "", "AUTH")
		d.expect(334, "", "AUTH LOGIN")
		d.expect(501, "5.5.2", "%%%%%%")
		d.expect(334, "", "AUTH PLAIN")
		d.expect(501, "", "*") // cancelled (RFC 4954 §4)
		d.expect(501, "5.5.2", "AUTH PLAIN %s", base64.StdEncoding.EncodeToString([]byte("no NUL separators")))
		d.expect(250, "", "NOOP")
		d.quit()

		// Over-long lines: an AUTH command or a SASL response over 12288
		// octets (RFC 4954 §4: up to that, an AUTH line with its initial
		// response is read, here a malformed one). The session goes on.
		d = tlsDialogFrom(t, "127.0.0.53", r.Sub)
		d.expect(501, "5.5.2", "AUTH PLAIN %s", strings.Repeat("QUFB", 1000))
		d.expect(500, "5.5.2", "AUTH PLAIN %s", strings.Repeat("QUFB", 3300))
		d.expect(334, "", "AUTH LOGIN")
		d.expect(500, "5.5.2", "%s", strings.Repeat("QUFB", 3300))
		d.expect(250, "", "NOOP")
		d.expect(235, "", "AUTH PLAIN %s", plainResp(testUser, testPassword))
		d.quit()
		if strings.Contains(r.logs.String(), "panic") {
			t.Errorf("the relay logged a panic:\n%s", r.logs.String())
		}
	})

	t.Run("unknown user takes as long as a wrong password", func(t *testing.T) {
		// One client address per try, so the failure delay never applies.
		var known, unknown []time.Duration
		for i := 0; i < 20; i++ {
			d := tlsDialogFrom(t, fmt.Sprintf("127.0.1.%d", i+1), r.Sub)
			user := testUser
			if i%2 == 1 {
				user = fmt.Sprintf("nosuchuser%d", i)
			}
			code, msg, dur := d.timed("AUTH PLAIN %s", plainResp(user, "wrong-password"))
			if code != 535 {
				t.Fatalf("AUTH as %s: %d %s", user, code, msg)
			}
			if user == testUser {
				known = append(known, dur)
			} else {
				unknown = append(unknown, dur)
			}
			d.quit()
		}
		mk, mu := median(known), median(unknown)
		t.Logf("median AUTH reply: known user, wrong password %v; unknown user %v", mk, mu)
		if mu > 3*mk || mk > 3*mu {
			t.Errorf("an unknown user is told apart by time: median %v vs %v for a known user", mu, mk)
		}
	})

	t.Run("guessing slows down, then 421, then the address is refused", func(t *testing.T) {
		const attacker = "127.0.0.50"
		wrong := func(d *dialog, i int) (int, string, time.Duration) {
			return d.timed("AUTH PLAIN %s", plainResp(testUser, fmt.Sprintf("guess-%d", i)))
		}
		d := tlsDialogFrom(t, attacker, r.Sub)
		var durs []time.Duration
		for i := 1; i <= 5; i++ {
			code, msg, dur := wrong(d, i)
			if code != 535 {
				t.Fatalf("failure %d: %d %s, want 535", i, code, msg)
			}
			durs = append(durs, dur)
		}
		t.Logf("failures 1-5 answered in %v", durs)
		if durs[3] < 900*time.Millisecond || durs[4] < 1900*time.Millisecond {
			t.Errorf("failures 4 and 5 answered in %v and %v; want a delay of 1 s and 2 s", durs[3], durs[4])
		}
		if slices.Max(durs[:3]) >= durs[4] {
			t.Errorf("the first failures (%v) are not faster than the 5th (%v)", durs[:3], durs[4])
		}
		// Failures 6-9 at once on four connections (each waits 3-6 s).
		par := make([]*dialog, 4)
		for i := range par {
			par[i] = tlsDialogFrom(t, attacker, r.Sub)
		}
		pdurs := make([]time.Duration, len(par))
		var wg sync.WaitGroup
		var mu sync.Mutex
		var errs []string
		for i, pd := range par {
			wg.Add(1)
			go func() {
				defer wg.Done()
				t0 := time.Now()
				pd.c.PrintfLine("AUTH PLAIN %s", plainResp(testUser, "parallel-guess"))
				code, msg, err := pd.c.ReadResponse(0)
				pdurs[i] = time.Since(t0)
				if err != nil || code != 535 {
					mu.Lock()
					errs = append(errs, fmt.Sprintf("%d %s %v", code, msg, err))
					mu.Unlock()
				}
			}()
		}
		wg.Wait()
		if len(errs) > 0 {
			t.Fatalf("failures 6-9: %q", errs)
		}
		slices.Sort(pdurs)
		t.Logf("failures 6-9 answered in %v", pdurs)
		for i, dur := range pdurs {
			if want := time.Duration(3+i)*time.Second - 100*time.Millisecond; dur < want {
				t.Errorf("failures 6-9: reply %d after %v, want at least %v", i, dur, want)
			}
		}
		// The 10th: 421 and disconnect.
		code, msg, _ := wrong(d, 10)
		if code != 421 || !strings.HasPrefix(msg, "4.7.0 ") {
			t.Fatalf("failure 10: %d %s, want 421 4.7.0", code, msg)
		}
		if !d.closedAfter(5 * time.Second) {
			t.Errorf("connection still open after 421")
		}
		// The address is refused at connect on every listener, even with
		// the right password in hand.
		for _, addr := range []string{r.Sub, r.Relay, r.Subs} {
			c, err := dialFrom(attacker, addr, 5*time.Second)
			if err != nil {
				t.Fatal(err)
			}
			if addr == r.Subs {
				// Implicit TLS: the refusal comes after the handshake
				// (RFC 8314 §3.3), never in plain text.
				c = tls.Client(c, &tls.Config{InsecureSkipVerify: true})
			}
			if line := readLine(t, c); !strings.HasPrefix(line, "421 4.7.0 ") {
				t.Errorf("%s from the blocked address: %q, want 421 4.7.0", addr, line)
			}
			c.Close()
		}
		// Another address is served, and its password works.
		d2 := tlsDialogFrom(t, "127.0.0.51", r.Sub)
		d2.expect(235, "", "AUTH PLAIN %s", plainResp(testUser, testPassword))
		d2.quit()
		if !r.waitLine("address blocked", "client="+attacker, "failures=10") {
			t.Errorf("no log line for the blocked address")
		}
		if !r.waitLine("connection refused", "client="+attacker, "reason=auth_blocked") {
			t.Errorf("no log line for the refused connection")
		}
	})
}

// ---------------------------------------------------------------------
// 4. Resource abuse.

// TestHardeningResourceLimits checks each limit on what one client may use.
// Defences: go-smtp's MaxCommandLength, MaxLineLength, MaxErrors and
// ReadTimeout (MAILHOP-PATCHES.md items 3, 5, 7, 9), and the per-address
// connection limit in relay/inbound/limits.go.
func TestHardeningResourceLimits(t *testing.T) {
	t.Parallel()
	r := startRelay(t, relayOpts{
		Policy: "trusted_networks = [\"127.0.0.1/32\"]\n",
		Extra:  "[limits]\nidle_timeout = \"2s\"\nmax_connections_per_ip = 5\nmax_line_length = 998\n",
	})

	t.Run("command line too long", func(t *testing.T) {
		d := dial(t, r.Relay, false)
		d.ehlo()
		d.expect(500, "5.5.2", "NOOP %s", strings.Repeat("x", 3000))
		d.expect(500, "5.5.2", "RCPT TO:<%s@example.net>", strings.Repeat("a", 100000))
		d.expect(501, "5.1.3", "MAIL FROM:<%s@example.com>", strings.Repeat("a", 243)) // path over 254 octets
		// A local part over RFC 5321's 64 octets (an SRS or VERP sender)
		// is taken, as Postfix takes it.
		d.expect(250, "", "MAIL FROM:<SRS0=%s=forwarded.example=user@forwarder.example>", strings.Repeat("a", 60))
		d.expect(250, "", "RSET")
		d.expect(250, "", "NOOP")
		d.expect(250, "", "MAIL FROM:<long@example.com>")
		d.expect(250, "", "RCPT TO:<after-long-command@example.net>")
		if code, msg := d.data(smallMessage("after long command")); code != 250 {
			t.Fatalf("DATA: %d %s", code, msg)
		}
		d.quit()
	})

	t.Run("text line too long in DATA", func(t *testing.T) {
		d := dial(t, r.Relay, false)
		d.ehlo()
		d.expect(250, "", "MAIL FROM:<long@example.com>")
		d.expect(250, "", "RCPT TO:<long-line@example.net>")
		body := append(smallMessage("long line"), []byte(strings.Repeat("y", 999)+"\r\n")...)
		if code, msg := d.data(body); code != 500 || !strings.HasPrefix(msg, "5.5.2 ") {
			t.Fatalf("a 999-octet line: %d %s, want 500 5.5.2", code, msg)
		}
		// At the limit it is fine, on the same connection.
		d.expect(250, "", "MAIL FROM:<long@example.com>")
		d.expect(250, "", "RCPT TO:<line-at-limit@example.net>")
		body = append(smallMessage("line at limit"), []byte(strings.Repeat("y", 998)+"\r\n")...)
		if code, msg := d.data(body); code != 250 {
			t.Fatalf("a 998-octet line: %d %s, want 250", code, msg)
		}
		d.quit()
		for _, m := range r.list() {
			if queuedFor([]admin.Message{m}, "long-line@example.net") != nil {
				t.Errorf("the message with a 999-octet line was queued")
			}
		}
	})

	t.Run("errors per session", func(t *testing.T) {
		d := dialogFrom(t, "127.0.0.60", r.Relay)
		d.write(strings.Repeat("XYZZY\r\n", 20))
		for i := 1; i <= 10; i++ {
			if code, msg := d.cmd(""); code/100 != 5 {
				t.Fatalf("error %d: %d %s, want 5xx", i, code, msg)
			}
		}
		d.expect(421, "4.7.0", "")
		if !d.closedAfter(5 * time.Second) {
			t.Errorf("connection open after too many errors")
		}
	})

	t.Run("slow client", func(t *testing.T) {
		// Stops in the middle of a command, in the middle of DATA, and
		// right after the greeting: each is cut after idle_timeout (2s).
		for _, c := range []struct{ name, send string }{
			{"mid-command", "EHLO client.test\r\nMAIL FROM:<slow@exa"},
			{"mid-DATA", "EHLO client.test\r\nMAIL FROM:<slow@example.com>\r\nRCPT TO:<slow@example.net>\r\nDATA\r\nSubject: slow\r\n\r\nhalf a li"},
			{"silent", ""},
		} {
			t.Run(c.name, func(t *testing.T) {
				t.Parallel()
				d := dial(t, r.Relay, false)
				d.raw.SetDeadline(time.Now().Add(15 * time.Second))
				t0 := time.Now()
				d.write(c.send)
				var last string
				for {
					line, err := d.c.ReadLine()
					if err != nil {
						break
					}
					last = line
				}
				el := time.Since(t0)
				if el < 1500*time.Millisecond || el > 15*time.Second {
					t.Errorf("closed after %v, want about 2s", el)
				}
				if !strings.HasPrefix(last, "421 4.4.2") {
					t.Errorf("last reply %q, want 421 4.4.2", last)
				}
			})
		}
	})

	t.Run("slow client's message not queued", func(t *testing.T) {
		for _, m := range r.list() {
			if queuedFor([]admin.Message{m}, "slow@example.net") != nil {
				t.Errorf("the slow client's half message was queued")
			}
		}
	})

	t.Run("connections per address", func(t *testing.T) {
		const ip = "127.0.0.70"
		var held []*dialog
		for i := 0; i < 5; i++ {
			held = append(held, dialogFrom(t, ip, r.Relay))
		}
		c, err := dialFrom(ip, r.Sub, 5*time.Second) // the limit counts every listener
		if err != nil {
			t.Fatal(err)
		}
		if line := readLine(t, c); !strings.HasPrefix(line, "421 4.7.0 ") {
			t.Errorf("6th connection from %s: %q, want 421 4.7.0", ip, line)
		}
		c.Close()
		// Other addresses are served; the trusted one is exempt.
		dialogFrom(t, "127.0.0.71", r.Relay).quit()
		var trusted []*dialog
		for i := 0; i < 8; i++ {
			trusted = append(trusted, dialogFrom(t, "127.0.0.1", r.Relay))
		}
		for _, d := range trusted {
			d.quit()
		}
		// A freed slot can be used again.
		held[0].quit()
		waitFor(t, "a slot for "+ip, 10*time.Second, func() bool {
			c, err := dialFrom(ip, r.Relay, 5*time.Second)
			if err != nil {
				return false
			}
			defer c.Close()
			return strings.HasPrefix(readLine(t, c), "220 ")
		})
		for _, d := range held[1:] {
			d.quit()
		}
	})

	t.Run("pipelined flood", func(t *testing.T) {
		const rounds = 3000
		before, _ := procMem(t, r.pid())
		// A trusted client: 12,000 commands in one write, every reply 250.
		d := dial(t, r.Relay, false)
		d.ehlo()
		var flood strings.Builder
		for i := 0; i < rounds; i++ {
			fmt.Fprintf(&flood, "MAIL FROM:<flood@example.com>\r\nRCPT TO:<r%d@example.net>\r\nNOOP\r\nRSET\r\n", i)
		}
		werr := make(chan error, 1)
		go func() { _, err := io.WriteString(d.raw, flood.String()); werr <- err }()
		for i := 0; i < 4*rounds; i++ {
			code, msg, err := d.c.ReadResponse(0)
			if err != nil || code != 250 {
				t.Fatalf("reply %d to the flood: %d %s %v", i, code, msg, err)
			}
		}
		if err := <-werr; err != nil {
			t.Fatal(err)
		}
		d.expect(250, "", "NOOP")
		d.quit()
		// An untrusted client's flood of refused RCPTs ends at the error limit.
		u := dialogFrom(t, "127.0.0.61", r.Relay)
		u.ehlo()
		var bad strings.Builder
		bad.WriteString("MAIL FROM:<flood@example.com>\r\n")
		for i := 0; i < rounds; i++ {
			fmt.Fprintf(&bad, "RCPT TO:<r%d@remote.test>\r\nNOOP\r\n", i)
		}
		go func() { io.WriteString(u.raw, bad.String()) }() // fails once the server closes
		u.expect(250, "", "")
		// The server closes after the 10th refusal with the rest of the
		// flood unread, so the kernel may reset the connection before the
		// client has read every reply: count the refusals in the log.
		replies := 0
		for {
			if _, _, err := u.c.ReadResponse(0); err != nil {
				break
			}
			replies++
		}
		if replies > 30 {
			t.Errorf("%d replies to the untrusted flood; want it cut after 10 errors", replies)
		}
		// Wait for the connection to be closed (so no refusal is still on
		// its way to the log), then count.
		waitFor(t, "the flooding connection to close", 10*time.Second, func() bool {
			return r.hasLine("client=127.0.0.61", "connection closed")
		})
		if n := countLines(r.logs.String(), `msg="rcpt refused"`, "client=127.0.0.61"); n != 10 {
			t.Errorf("%d refused RCPTs logged for the flood, want 10 (max_errors)", n)
		}
		after, _ := procMem(t, r.pid())
		t.Logf("VmRSS before the floods %d KiB, after %d KiB", before, after)
		if after > 200<<10 {
			t.Errorf("VmRSS %d MiB after the floods, want < 200 MiB", after>>10)
		}
	})
}

// countLines counts the lines of logs that contain every part.
func countLines(logs string, parts ...string) int {
	return len(testlog.Lines(logs, parts...))
}

// raiseFileLimit makes sure this process (and the relay it starts, which
// inherits it) may open n files.
func raiseFileLimit(t testing.TB, n uint64) {
	t.Helper()
	var rl syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &rl); err != nil {
		t.Fatal(err)
	}
	if rl.Cur >= n {
		return
	}
	if rl.Max < n {
		t.Skipf("RLIMIT_NOFILE hard limit %d < %d", rl.Max, n)
	}
	rl.Cur = n
	if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &rl); err != nil {
		t.Fatalf("raising RLIMIT_NOFILE to %d: %v", n, err)
	}
}

// TestHardeningManyConnections holds 1,000 idle connections from 39
// addresses and runs 200 rapid connect/disconnect cycles while a normal
// client sends mail: every transaction completes promptly, the idle
// connections are still served, and the relay's memory stays bounded.
func TestHardeningManyConnections(t *testing.T) {
	t.Parallel()
	const idle, cycles = 1000, 200
	raiseFileLimit(t, 4*idle)
	r := startRelay(t, relayOpts{Policy: "trusted_networks = [\"127.0.0.1/32\"]\n"})

	conns := make([]net.Conn, idle)
	t.Cleanup(func() {
		for _, c := range conns {
			if c != nil {
				c.Close()
			}
		}
	})
	// Dial from 127.0.0.2-127.0.0.40 (about 26 each, under the 50 per address).
	work := make(chan int)
	errc := make(chan error, idle)
	var wg sync.WaitGroup
	for w := 0; w < 16; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range work {
				c, err := dialFrom(fmt.Sprintf("127.0.0.%d", 2+i%39), r.Relay, 10*time.Second)
				if err != nil {
					errc <- err
					continue
				}
				conns[i] = c
				c.SetReadDeadline(time.Now().Add(30 * time.Second))
				line, err := bufio.NewReader(c).ReadString('\n')
				if err != nil || !strings.HasPrefix(line, "220 ") {
					errc <- fmt.Errorf("connection %d: greeting %q %v", i, line, err)
				}
			}
		}()
	}
	t0 := time.Now()
	for i := 0; i < idle; i++ {
		work <- i
	}
	close(work)
	wg.Wait()
	close(errc)
	for err := range errc {
		t.Fatal(err)
	}
	t.Logf("%d idle connections open in %v", idle, time.Since(t0).Round(time.Millisecond))

	// Churn: 200 connect/disconnect cycles, half of them without reading
	// the greeting, from 127.0.0.41-127.0.0.45 ...
	churnDone := make(chan error, 1)
	go func() {
		var cwg sync.WaitGroup
		cerr := make(chan error, 4)
		for w := 0; w < 4; w++ {
			cwg.Add(1)
			go func() {
				defer cwg.Done()
				for i := w; i < cycles; i += 4 {
					c, err := dialFrom(fmt.Sprintf("127.0.0.%d", 41+i%5), r.Relay, 10*time.Second)
					if err != nil {
						cerr <- err
						return
					}
					if i%2 == 0 {
						c.SetReadDeadline(time.Now().Add(10 * time.Second))
						bufio.NewReader(c).ReadString('\n')
					}
					c.Close()
				}
			}()
		}
		cwg.Wait()
		close(cerr)
		churnDone <- <-cerr
	}()

	// ... while a normal client sends mail: at least 5 messages, and on
	// until the cycles are done.
	sent := 0
	for churning := true; churning || sent < 5; sent++ {
		select {
		case err := <-churnDone:
			if err != nil {
				t.Fatalf("connect/disconnect cycles: %v", err)
			}
			churning = false
		default:
		}
		if sent >= 100 {
			t.Fatalf("the connect/disconnect cycles did not end")
		}
		t0 := time.Now()
		c, err := dialRelayClient(r.Relay)
		if err != nil {
			t.Fatalf("message %d: %v", sent, err)
		}
		err = sendMailOn(c, submission{From: "app@example.com", To: []string{fmt.Sprintf("busy%d@example.net", sent)}},
			smallMessage(fmt.Sprintf("busy %d", sent)))
		if err == nil {
			err = c.Quit()
		}
		c.Close()
		el := time.Since(t0)
		if err != nil {
			t.Fatalf("message %d: %v", sent, err)
		}
		if el > 5*time.Second {
			t.Errorf("message %d took %v with %d idle connections open", sent, el, idle)
		}
	}
	t.Logf("%d messages sent during %d connect/disconnect cycles", sent, cycles)
	// The idle connections are still served.
	for i := 0; i < idle; i += 97 {
		c := conns[i]
		c.SetDeadline(time.Now().Add(10 * time.Second))
		if _, err := io.WriteString(c, "NOOP\r\n"); err != nil {
			t.Fatalf("idle connection %d: %v", i, err)
		}
		line, err := bufio.NewReader(c).ReadString('\n')
		if err != nil || !strings.HasPrefix(line, "250 ") {
			t.Errorf("idle connection %d: NOOP answered %q %v", i, line, err)
		}
	}
	rss, hwm := procMem(t, r.pid())
	t.Logf("relay VmRSS %d MiB, VmHWM %d MiB with %d idle connections", rss>>10, hwm>>10, idle)
	if rss > 200<<10 {
		t.Errorf("relay VmRSS %d MiB with %d idle connections, want < 200 MiB", rss>>10, idle)
	}
	if n := len(r.list()); n != sent {
		t.Errorf("queue holds %d messages, want the %d sent", n, sent)
	}
}

// ---------------------------------------------------------------------
// 5. Secrets.

// TestHardeningSecrets runs the binary with a world-readable configuration
// holding a user (a warning is logged), routes whose passwords come from a
// file and from the environment (the smarthosts see the logins), and AUTH
// exchanges at debug level: no password, hash or AUTH payload is logged.
func TestHardeningSecrets(t *testing.T) {
	t.Parallel()
	w := newMXWorld(t, nil)
	pki := newTestPKI(t, "secrets")
	const filePass, envPass, envName = "file-pw-7Hq2", "env-pw-9Zx4", "MAILHOP_IT_ROUTE_PASSWORD"
	shFile := w.mx("127.0.0.2", smtptest.Behaviour{Hostname: "file.smarthost.test", TLS: pki.tlsConfig(), Users: map[string]string{"fileuser": filePass}})
	shEnv := w.mx("127.0.0.3", smtptest.Behaviour{Hostname: "env.smarthost.test", TLS: pki.tlsConfig(), Users: map[string]string{"envuser": envPass}})
	pwFile := filepath.Join(t.TempDir(), "route.pw")
	if err := os.WriteFile(pwFile, []byte(filePass+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	routes := fmt.Sprintf(`[[route]]
domains = ["file.test"]
smarthost = %q
tls = "starttls"
ca_file = %q
username = "fileuser"
password_file = %q

[[route]]
domains = ["env.test"]
smarthost = %q
tls = "starttls"
ca_file = %q
username = "envuser"
password_env = %q
`, w.addr("127.0.0.2"), pki.caFile, pwFile, w.addr("127.0.0.3"), pki.caFile, envName)
	r := startRelay(t, relayOpts{
		Delivery:   fmt.Sprintf("resolvers = [%q]\nmx_port = %d\nretry_intervals = [\"1h\"]\n", w.dns.Addr, w.port),
		NoRoute:    true,
		Extra:      routes,
		ConfigMode: 0o644,
		Env:        []string{envName + "=" + envPass},
	})
	if !r.waitLine("readable by every user", "mode=-rw-r--r--") {
		t.Errorf("no warning about the world-readable configuration")
	}

	// Inbound AUTH at debug level: PLAIN and LOGIN, wrong and right.
	const wrongPass = "wr0ng-Pass-3Kd"
	d := tlsDialogFrom(t, "127.0.0.1", r.Sub)
	d.expect(535, "", "AUTH PLAIN %s", plainResp(testUser, wrongPass))
	d.expect(334, "", "AUTH LOGIN")
	d.expect(334, "", "%s", base64.StdEncoding.EncodeToString([]byte(testUser)))
	d.expect(535, "", "%s", base64.StdEncoding.EncodeToString([]byte(wrongPass)))
	d.expect(334, "", "AUTH LOGIN %s", base64.StdEncoding.EncodeToString([]byte(testUser)))
	d.expect(235, "", "%s", base64.StdEncoding.EncodeToString([]byte(testPassword)))
	d.quit()
	d = tlsDialogFrom(t, "127.0.0.1", r.Sub)
	d.expect(235, "", "AUTH PLAIN %s", plainResp(testUser, testPassword))
	d.expect(250, "", "MAIL FROM:<app@example.com>")
	d.expect(250, "", "RCPT TO:<bob@file.test>")
	d.expect(250, "", "RCPT TO:<carol@env.test>")
	if code, msg := d.data(smallMessage("secrets")); code != 250 {
		t.Fatalf("DATA: %d %s", code, msg)
	}
	d.quit()

	for _, c := range []struct {
		s    *smtptest.Server
		user string
	}{{shFile, "fileuser"}, {shEnv, "envuser"}} {
		m := waitMsgs(t, c.s, 1, 30*time.Second)[0]
		if m.User != c.user || !m.TLS {
			t.Errorf("%s: logged in as %q (TLS %v), want %s over TLS", c.s.Addr, m.User, m.TLS, c.user)
		}
	}
	waitQueueEmpty(t, r, 10*time.Second)
	r.stop()

	logs := r.logs.String()
	b64 := func(s string) string { return base64.StdEncoding.EncodeToString([]byte(s)) }
	for _, secret := range []string{
		testPassword, b64(testPassword), plainResp(testUser, testPassword),
		wrongPass, b64(wrongPass), plainResp(testUser, wrongPass),
		filePass, b64(filePass), b64("\x00fileuser\x00" + filePass),
		envPass, b64(envPass), b64("\x00envuser\x00" + envPass),
		testHash(),
	} {
		if strings.Contains(logs, secret) {
			t.Errorf("the log holds a secret (%q)", secret)
		}
	}
	// Half a base64 string would still leak: look for any long run of
	// a password's base64 forms, shifted by one and two bytes too.
	for _, pw := range []string{testPassword, wrongPass, filePass, envPass} {
		for shift := 0; shift < 3; shift++ {
			enc := b64(strings.Repeat("\x00", shift) + pw)
			if part := enc[4 : len(enc)-4]; strings.Contains(logs, part) {
				t.Errorf("the log holds part of a base64-encoded password (%q)", part)
			}
		}
	}
}

// ---------------------------------------------------------------------
// 6. TLS.

// handshake connects to addr (through STARTTLS when starttls) with cfg
// and returns the connection state, or the handshake error.
func handshake(t testing.TB, addr string, starttls bool, cfg *tls.Config) (tls.ConnectionState, error) {
	t.Helper()
	raw, err := net.DialTimeout("tcp", addr, 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer raw.Close()
	raw.SetDeadline(time.Now().Add(30 * time.Second))
	if starttls {
		tc := textproto.NewConn(raw)
		for _, step := range []struct {
			cmd  string
			code int
		}{{"", 220}, {"EHLO client.test", 250}, {"STARTTLS", 220}} {
			if step.cmd != "" {
				tc.PrintfLine("%s", step.cmd)
			}
			if _, _, err := tc.ReadResponse(step.code); err != nil {
				t.Fatalf("%s before STARTTLS: %v", addr, err)
			}
		}
	}
	c := tls.Client(raw, cfg)
	err = c.Handshake()
	return c.ConnectionState(), err
}

// TestHardeningTLS checks the protocol floor (TLS 1.2) on STARTTLS and
// implicit TLS, and that SIGHUP loads a replaced certificate without a
// restart. Defences: relay/inbound/tlscert.go newTLSConfig MinVersion and
// ReloadCertificate, called by cmd/mailhop's reload through SetConfig.
func TestHardeningTLS(t *testing.T) {
	t.Parallel()
	ca := testpki.NewCA(t)
	dir := t.TempDir()
	certFile, keyFile := filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	testpki.WriteFiles(t, ca.IssueNamed(t, "certificate A", "mx.relay.test"), certFile, keyFile)
	r := startRelay(t, relayOpts{Extra: fmt.Sprintf("[tls]\ncert_file = %q\nkey_file = %q\n", certFile, keyFile)})

	listeners := []struct {
		name     string
		addr     string
		starttls bool
	}{{"submission", r.Sub, true}, {"relay", r.Relay, true}, {"submissions", r.Subs, false}}

	t.Run("versions", func(t *testing.T) {
		for _, l := range listeners {
			for _, v := range []uint16{tls.VersionTLS10, tls.VersionTLS11} {
				_, err := handshake(t, l.addr, l.starttls, &tls.Config{MinVersion: v, MaxVersion: v, InsecureSkipVerify: true})
				if err == nil {
					t.Errorf("%s: a %s handshake succeeded", l.name, tls.VersionName(v))
				}
			}
			st, err := handshake(t, l.addr, l.starttls, &tls.Config{MaxVersion: tls.VersionTLS12, InsecureSkipVerify: true})
			if err != nil || st.Version != tls.VersionTLS12 {
				t.Errorf("%s: TLS 1.2: %v (version %x)", l.name, err, st.Version)
			}
			st, err = handshake(t, l.addr, l.starttls, &tls.Config{InsecureSkipVerify: true})
			if err != nil || st.Version != tls.VersionTLS13 {
				t.Errorf("%s: TLS 1.3: %v (version %x)", l.name, err, st.Version)
			}
		}
	})

	t.Run("STARTTLS command injection", func(t *testing.T) {
		// CVE-2011-0411 family: commands sent in plain text right behind
		// STARTTLS (by a man in the middle) must not run inside the TLS
		// session. Each later command gets its own reply, in order.
		d := dial(t, r.Relay, false)
		d.ehlo()
		d.write("STARTTLS\r\nMAIL FROM:<injected@example.com>\r\nRCPT TO:<injected@example.net>\r\n")
		d.expect(220, "", "")
		tc := tls.Client(d.raw, &tls.Config{InsecureSkipVerify: true})
		if err := tc.Handshake(); err != nil {
			t.Logf("handshake after injected commands: %v (refusing is a defence too)", err)
			return
		}
		d.raw, d.c = tc, textproto.NewConn(tc)
		d.expect(250, "", "EHLO client.test") // not a reply to the injected MAIL
		d.expect(250, "", "MAIL FROM:<app@example.com>")
		d.expect(250, "", "RCPT TO:<after-injection@example.net>")
		if code, msg := d.data(smallMessage("after injection")); code != 250 {
			t.Fatalf("DATA: %d %s", code, msg)
		}
		d.quit()
		m := queuedFor(r.list(), "after-injection@example.net")
		if m == nil || m.From != "app@example.com" || len(m.Recipients) != 1 {
			t.Errorf("queued: %+v; want one message from app@example.com to after-injection@example.net only", m)
		}
	})

	verified := &tls.Config{RootCAs: ca.Pool, ServerName: "mx.relay.test"}
	presented := func(l struct {
		name     string
		addr     string
		starttls bool
	}) string {
		st, err := handshake(t, l.addr, l.starttls, verified)
		if err != nil {
			t.Fatalf("%s: handshake: %v", l.name, err)
		}
		return st.PeerCertificates[0].Subject.CommonName
	}

	t.Run("certificate reloaded on SIGHUP", func(t *testing.T) {
		for _, l := range listeners {
			if cn := presented(l); cn != "certificate A" {
				t.Fatalf("%s presents %q before the reload", l.name, cn)
			}
		}
		// A session open across the reload keeps going.
		open := dial(t, r.Relay, false)
		open.ehlo()
		pid := r.pid()
		testpki.WriteFiles(t, ca.IssueNamed(t, "certificate B", "mx.relay.test"), certFile, keyFile)
		n := strings.Count(r.logs.String(), "configuration reloaded")
		r.signal(syscall.SIGHUP)
		waitFor(t, "the reload", 20*time.Second, func() bool {
			return strings.Count(r.logs.String(), "configuration reloaded") > n
		})
		for _, l := range listeners {
			if cn := presented(l); cn != "certificate B" {
				t.Errorf("%s presents %q after SIGHUP, want certificate B", l.name, cn)
			}
		}
		if r.pid() != pid {
			t.Errorf("the relay restarted")
		}
		select {
		case <-r.exited:
			t.Fatalf("the relay exited")
		default:
		}
		open.expect(250, "", "NOOP")
		open.quit()
	})
}
