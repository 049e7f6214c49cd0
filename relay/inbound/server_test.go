package inbound

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/mailhop/mailhop/queue"
	"github.com/mailhop/mailhop/relay/config"
)

func TestSelfSignedCertificate_GeneratedOnceAndReused(t *testing.T) {
	cfg := testConfig(t)
	var logs bytes.Buffer
	log := slog.New(slog.NewTextHandler(&logs, nil))
	if _, err := New(cfg, nil, log); err != nil {
		t.Fatal(err)
	}
	crt := filepath.Join(cfg.DataDir, "tls", "selfsigned.crt")
	key := filepath.Join(cfg.DataDir, "tls", "selfsigned.key")
	first, err := os.ReadFile(crt)
	if err != nil {
		t.Fatal(err)
	}
	if fi, err := os.Stat(key); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("key file: %v %v", fi.Mode(), err)
	}
	if !bytes.Contains(logs.Bytes(), []byte("level=WARN")) {
		t.Fatalf("no warning logged: %s", logs.String())
	}
	s, err := New(cfg, nil, log)
	if err != nil {
		t.Fatal(err)
	}
	if second, _ := os.ReadFile(crt); !bytes.Equal(first, second) {
		t.Fatal("certificate generated again instead of reused")
	}
	leaf := s.cert.Load().Leaf
	if leaf == nil || leaf.DNSNames[0] != "mx.test" {
		t.Fatalf("certificate for %v", leaf.DNSNames)
	}
	// A client that trusts the file verifies it by name, as localhost, and
	// by a listener's or a loopback address.
	roots := x509.NewCertPool()
	roots.AddCert(leaf)
	for _, name := range []string{"mx.test", "localhost", "127.0.0.1", "::1"} {
		if _, err := leaf.Verify(x509.VerifyOptions{DNSName: name, Roots: roots}); err != nil {
			t.Errorf("verifying the self-signed certificate for %s: %v", name, err)
		}
	}
	// A reload with a configured pair swaps the certificate in.
	cfg2 := *cfg
	cfg2.DataDir = t.TempDir()
	other, err := New(&cfg2, nil, log)
	if err != nil {
		t.Fatal(err)
	}
	cfg3 := *cfg
	cfg3.TLS.CertFile = filepath.Join(cfg2.DataDir, "tls", "selfsigned.crt")
	cfg3.TLS.KeyFile = filepath.Join(cfg2.DataDir, "tls", "selfsigned.key")
	if err := s.SetConfig(&cfg3); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(s.cert.Load().Certificate[0], other.cert.Load().Certificate[0]) {
		t.Fatal("certificate not swapped by SetConfig")
	}
}

func TestListenAndServe_UntilContextDone(t *testing.T) {
	cfg := testConfig(t)
	trustLoopback(cfg)
	cfg.Listener = []config.Listener{{Address: "127.0.0.1:0", Mode: config.ModeRelay}}
	q, err := queue.Open(t.TempDir(), queue.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer q.Close()
	s, err := New(cfg, q, slog.New(slog.NewTextHandler(&bytes.Buffer{}, nil)))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.ListenAndServe(ctx) }()
	var addr string
	for addr == "" { // Addrs is filled once Serve has started
		if as := s.Addrs(); len(as) == 1 {
			addr = as[0].String()
		}
		select {
		case err := <-done:
			t.Fatal("ListenAndServe returned early:", err)
		default:
		}
	}
	d := inData(t, addr)
	cancel()
	// The transaction under way finishes during shutdown...
	d.script("C: hi", "C: .", "S: 250 ")
	// ...but no new one starts.
	d.script("C: MAIL FROM:<a@example.com>", "S: 421 4.3.2 ")
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}

func TestIdleTimeout_421(t *testing.T) {
	ts := startServer(t, func(c *config.Config) { c.Limits.IdleTimeout = config.Duration{Duration: 100 * time.Millisecond} })
	d := dial(t, ts.addr[config.ModeRelay])
	d.script("S: 220 ", "S: 421 4.4.2 Idle timeout")
	if line := ts.logs.WaitLine(5*time.Second, "idle timeout", "client=127.0.0.1", fmt.Sprintf("port=%d", d.c.LocalAddr().(*net.TCPAddr).Port)); line == "" {
		t.Errorf("no 'idle timeout' line naming the client in\n%s", ts.logs)
	}
}

// TestSessionTimeout_421: a busy session cut at limits.session_timeout is
// told so, not "Idle timeout", and the relay logs it; also under TLS.
func TestSessionTimeout_421(t *testing.T) {
	ts := startServer(t, func(c *config.Config) { c.Limits.SessionTimeout = config.Duration{Duration: 200 * time.Millisecond} })
	for _, mode := range []string{config.ModeRelay, config.ModeSubmissions} {
		var d *dialog
		if mode == config.ModeSubmissions {
			d = dialTLS(t, ts.addr[mode])
		} else {
			d = dial(t, ts.addr[mode])
		}
		d.expect("220 ")
		// Busy, never idle: only the session timeout can end this.
		for {
			d.write("NOOP\r\n")
			if got := d.reply(); got[:3] == "421" {
				if want := "421 4.4.2 " + sessionTimeoutReason; got != want {
					t.Errorf("%s: reply %q, want %q", mode, got, want)
				}
				break
			}
		}
		if line := ts.logs.WaitLine(5*time.Second, "session time limit reached", "client=127.0.0.1"); line == "" {
			t.Errorf("%s: no 'session time limit reached' line naming the client in\n%s", mode, ts.logs)
		}
	}
}

// TestSessionTimeout_InData: a message cut by the session timeout gets the
// session limit's 421, and its 'message refused' line gives that reply.
func TestSessionTimeout_InData(t *testing.T) {
	ts := startServer(t, trustLoopback, func(c *config.Config) { c.Limits.SessionTimeout = config.Duration{Duration: 300 * time.Millisecond} })
	d := inData(t, ts.addr[config.ModeRelay])
	for {
		d.write("more text\r\n")
		if got := d.reply(); got[:3] == "421" {
			if want := "421 4.4.2 " + sessionTimeoutReason; got != want {
				t.Errorf("reply %q, want %q", got, want)
			}
			break
		}
	}
	if line := ts.logs.WaitLine(5*time.Second, "message refused", "code=421", sessionTimeoutReason); line == "" {
		t.Errorf("no 'message refused' line with the session limit's reply in\n%s", ts.logs)
	}
}

// TestIdleTimeout_BetweenBDATChunks: a BDAT message whose client goes
// silent before its next chunk is logged with the 421 the client was sent,
// as a DATA message cut by the idle timeout is; it was logged code=0,
// "connection lost during the message", though the client got '421 4.4.2
// Idle timeout' (found by the leak black-box check).
func TestIdleTimeout_BetweenBDATChunks(t *testing.T) {
	ts := startServer(t, trustLoopback, func(c *config.Config) { c.Limits.IdleTimeout = config.Duration{Duration: 300 * time.Millisecond} })
	d := dial(t, ts.addr[config.ModeRelay])
	d.script("S: 220 ", "C: EHLO client.test", "S: 250 ",
		"C: MAIL FROM:<a@example.com>", "S: 250 ", "C: RCPT TO:<b@example.net>", "S: 250 ")
	chunk := "Subject: x\r\n\r\nhello\r\n"
	d.write(fmt.Sprintf("BDAT %d\r\n%s", len(chunk), chunk))
	d.expect("250 ")
	d.expect("421 4.4.2 ") // silent: the idle timeout
	if line := ts.logs.WaitLine(5*time.Second, "message refused", "code=421", `reply="4.4.2 Idle timeout"`); line == "" {
		t.Errorf("no 'message refused' line with the idle timeout's reply in\n%s", ts.logs)
	}
}

// TestSetConfig_LimitsApplyToNewConnections: a reload changes the message
// size, line length and idle timeout of the connections accepted after it;
// a session already open keeps what it started with.
func TestSetConfig_LimitsApplyToNewConnections(t *testing.T) {
	ts := startServer(t, trustLoopback, func(c *config.Config) { c.Policy.MaxMessageSize = 1000 })
	old := dial(t, ts.addr[config.ModeRelay])
	old.script("S: 220 ", "C: EHLO client.test", "S: 250 ")

	cfg := *ts.cfg
	cfg.Policy.MaxMessageSize = 5000
	cfg.Limits.MaxLineLength = 100
	cfg.Limits.IdleTimeout = config.Duration{Duration: 300 * time.Millisecond}
	if err := ts.s.SetConfig(&cfg); err != nil {
		t.Fatal(err)
	}
	d := dial(t, ts.addr[config.ModeRelay])
	d.expect("220 ")
	d.write("EHLO client.test\r\n")
	if ehlo := strings.Join(d.replyLines(), "\n"); !strings.Contains(ehlo, "SIZE 5000") {
		t.Errorf("EHLO after reload:\n%s\nwant SIZE 5000", ehlo)
	}
	d.script("C: MAIL FROM:<a@example.com> SIZE=4000", "S: 250 ",
		"C: RCPT TO:<b@example.net>", "S: 250 ", "C: DATA", "S: 354 ")
	d.write("Subject: x\r\n\r\n" + strings.Repeat("y", 101) + "\r\n.\r\n")
	d.expect("500 5.5.2 ")
	// The new idle timeout ends the new session...
	start := time.Now()
	d.expect("421 4.4.2 ")
	if waited := time.Since(start); waited > 5*time.Second {
		t.Errorf("idle session closed after %v, want about 300ms", waited)
	}
	// ...while the session opened before keeps the old size limit.
	old.script("C: MAIL FROM:<a@example.com> SIZE=4000", "S: 552 5.3.4 ")
}

// TestSetConfig_HostnameAppliesToNewConnections: a reload that changes the
// hostname changes the greeting and EHLO reply of the connections accepted
// after it, as it changes their Received field; a session already open
// keeps the name it greeted with.
func TestSetConfig_HostnameAppliesToNewConnections(t *testing.T) {
	ts := startServer(t, trustLoopback)
	old := dial(t, ts.addr[config.ModeRelay])
	old.script("S: 220 mx.test ")

	cfg := *ts.cfg
	cfg.Hostname = "renamed.test"
	if err := ts.s.SetConfig(&cfg); err != nil {
		t.Fatal(err)
	}
	d := dial(t, ts.addr[config.ModeRelay])
	d.script("S: 220 renamed.test ", "C: EHLO client.test")
	if first := d.replyLines()[0]; !strings.HasPrefix(first, "250-renamed.test ") {
		t.Errorf("EHLO reply after the reload begins %q, want the new hostname", first)
	}
	old.write("EHLO client.test\r\n")
	if first := old.replyLines()[0]; !strings.HasPrefix(first, "250-mx.test ") {
		t.Errorf("EHLO reply of the session opened before begins %q, want the name it greeted with", first)
	}
}

func TestPostmasterFromTrustedClient(t *testing.T) {
	ts := startServer(t, trustLoopback)
	d := dial(t, ts.addr[config.ModeRelay])
	d.script("S: 220 ", "C: EHLO client.test", "S: 250 ",
		"C: MAIL FROM:<a@example.com>", "S: 250 ",
		"C: RCPT TO:<PostMaster>", "S: 250 ",
		"C: DATA", "S: 354 ", "C: Subject: hi", "C: ", "C: hello", "C: .", "S: 250 ")
	envs := ts.q.List()
	if len(envs) != 1 || len(envs[0].Recipients) != 1 || envs[0].Recipients[0].Address != "postmaster@mx.test" {
		t.Fatalf("queued %+v, want one message to postmaster@mx.test", envs)
	}
}

// TestConnectionLostIsNotAnError: a port probe on the implicit-TLS listener
// (connect, then close without a handshake) is logged at info level as a lost
// connection naming the TLS handshake, not as a server error, and the client
// as every other inbound line does (client=IP), its port apart.
func TestConnectionLostIsNotAnError(t *testing.T) {
	t.Parallel()
	ts := startServer(t)
	c, err := net.Dial("tcp", ts.addr[config.ModeSubmissions])
	if err != nil {
		t.Fatal(err)
	}
	c.Close()
	line := ts.logs.WaitLine(5*time.Second, "connection lost")
	if !strings.Contains(line, "level=INFO") || !strings.Contains(line, "TLS handshake") ||
		!strings.Contains(line, " client=127.0.0.1 port=") {
		t.Errorf("log line %q, want an INFO 'connection lost' naming the client and the TLS handshake", line)
	}
	if strings.Contains(ts.logs.String(), "level=ERROR") {
		t.Errorf("a port probe was logged as an error:\n%s", ts.logs.String())
	}
}

// TestErrorLogPanicNamesClient: a panic in a session (go-smtp's "panic
// serving" line) is an error naming the client like the other lines.
func TestErrorLogPanicNamesClient(t *testing.T) {
	var logs bytes.Buffer
	el := errorLog{slog.New(slog.NewTextHandler(&logs, nil))}
	addr := &net.TCPAddr{IP: net.ParseIP("::ffff:127.0.0.9"), Port: 4242}
	el.Printf("panic serving %v: %v\n%s", addr, "boom", []byte("stack"))
	line := logs.String()
	if !strings.Contains(line, "level=ERROR") || !strings.Contains(line, " client=127.0.0.9 port=4242 ") ||
		!strings.Contains(line, "panic serving: boom") {
		t.Errorf("log line %q, want an ERROR naming client=127.0.0.9 port=4242 and the panic", line)
	}
}

// TestStartTLSHandshakeFailureLogged: a client whose STARTTLS handshake
// fails (here: a TLS 1.1-only client, refused by the TLS 1.2 minimum) is
// logged like a failed implicit-TLS handshake, as a lost connection that
// says why, so an operator can tell why a mail client cannot connect.
func TestStartTLSHandshakeFailureLogged(t *testing.T) {
	t.Parallel()
	ts := startServer(t)
	d := dial(t, ts.addr[config.ModeSubmission])
	d.script("S: 220 ", "C: EHLO client.test", "S: 250 ", "C: STARTTLS", "S: 220 ")
	tc := tls.Client(d.c, &tls.Config{InsecureSkipVerify: true, MinVersion: tls.VersionTLS10, MaxVersion: tls.VersionTLS11})
	if err := tc.Handshake(); err == nil {
		t.Fatal("a TLS 1.1 handshake succeeded after STARTTLS")
	}
	line := ts.logs.WaitLine(5*time.Second, "connection lost")
	if !strings.Contains(line, "level=INFO") || !strings.Contains(line, "STARTTLS handshake") ||
		!strings.Contains(line, "unsupported versions") || !strings.Contains(line, " client=127.0.0.1 port=") {
		t.Errorf("log line %q, want an INFO 'connection lost' naming the client and the failed STARTTLS handshake", line)
	}
}

// TestShutdown_SecondCallWaits: of two Shutdowns at once (the relay's, and
// ServeListeners' when a listener closes under it) neither returns before
// the sessions are done: whichever reached a go-smtp server second
// returned at once, and the process exited under a transaction still
// allowed to finish.
func TestShutdown_SecondCallWaits(t *testing.T) {
	t.Parallel()
	ts := startServer(t, trustLoopback)
	d := inData(t, ts.addr[config.ModeRelay])
	d.write("Subject: finished after the shutdown began\r\n\r\nbody\r\n")
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	firstDone := make(chan error, 1)
	go func() { firstDone <- ts.s.Shutdown(ctx) }()
	for !ts.s.closing.Load() {
		runtime.Gosched() // until the first call has begun
	}
	secondDone := make(chan error, 1)
	go func() { secondDone <- ts.s.Shutdown(ctx) }()
	select {
	case err := <-firstDone:
		t.Fatalf("the first Shutdown returned (%v) while a transaction was open", err)
	case err := <-secondDone:
		t.Fatalf("the second Shutdown returned (%v) while a transaction was open", err)
	case <-time.After(200 * time.Millisecond): // both must still wait: nothing to synchronise on
	}
	d.write(".\r\n")
	d.expect("250 ")
	for _, c := range []chan error{firstDone, secondDone} {
		if err := <-c; err != nil {
			t.Errorf("Shutdown: %v", err)
		}
	}
	if n := len(ts.q.List()); n != 1 {
		t.Errorf("%d message(s) queued, want the one finished during the shutdown", n)
	}
}

// A session still in the middle of a message when the shutdown deadline
// passes is told 421 4.3.2 before its connection closes (RFC 5321 §3.8);
// nothing is queued, and the log line and the refusal count say so (the
// client did not lose its connection: the relay cut it).
func TestShutdown_DeadlinePassed_421(t *testing.T) {
	t.Parallel()
	ts := startServer(t, trustLoopback)
	d := inData(t, ts.addr[config.ModeRelay])
	d.write("Subject: half a message\r\n")
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	if err := ts.s.Shutdown(ctx); err == nil {
		t.Error("Shutdown returned nil with a transaction still open")
	}
	d.expect("421 4.3.2 ")
	if !d.closed() {
		t.Error("the connection is still open after the 421")
	}
	if n := len(ts.q.List()); n != 0 {
		t.Errorf("%d message(s) queued", n)
	}
	line := ts.logs.WaitLine(5*time.Second, "message refused")
	for _, want := range []string{"code=421", `reply="4.3.2 Service shutting down, closing connection"`, "reason=shutting_down"} {
		if !strings.Contains(line, want) {
			t.Errorf("log line %q lacks %s", line, want)
		}
	}
	if got := ts.s.Stats().Refused; got["shutting_down"] != 1 || got["aborted"] != 0 {
		t.Errorf("refusals counted %v, want one shutting_down", got)
	}
}

// An HTTP request to the SMTP port from a trusted client (a browser on the
// relay's own host, made by a web page to POST to it, its body SMTP
// commands) ends the session at its first line, as Postfix's
// smtpd_forbidden_commands does, and is logged: the commands in its body
// are never run, however high max_errors is set.
func TestHTTPRequestRefused(t *testing.T) {
	t.Parallel()
	ts := startServer(t, trustLoopback, func(c *config.Config) { c.Limits.MaxErrors = 1000 })
	d := dial(t, ts.addr[config.ModeRelay])
	d.expect("220 ")
	d.write("POST / HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: text/plain\r\n\r\nEHLO x\r\nMAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.net>\r\nDATA\r\nSubject: x\r\n\r\nx\r\n.\r\n")
	d.expect("221 2.7.0 ")
	if rest, err := io.ReadAll(d.r); err != nil || len(rest) != 0 {
		t.Errorf("after the 221: %q (%v), want the connection closed", rest, err)
	}
	if line := ts.logs.WaitLine(5*time.Second, "non-SMTP command POST"); !strings.Contains(line, "client=127.0.0.1") {
		t.Errorf("log line %q, want the HTTP request logged with its client", line)
	}
	if n := len(ts.queued()); n != 0 {
		t.Errorf("%d messages queued from an HTTP request's body", n)
	}
}
