package smtp_test

import (
	"bufio"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"io"
	"math/big"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/emersion/go-smtp"
)

// reply reads one (possibly multi-line) reply and returns its last line.
func reply(t *testing.T, r *bufio.Reader) string {
	t.Helper()
	for {
		line, err := r.ReadString('\n')
		if err != nil {
			t.Fatalf("reading reply: %v (got %q)", err, line)
		}
		line = strings.TrimRight(line, "\r\n")
		if len(line) < 4 || line[3] != '-' {
			return line
		}
	}
}

func dialServer(t *testing.T, addr string) (net.Conn, *bufio.Reader) {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	c.SetDeadline(time.Now().Add(10 * time.Second))
	r := bufio.NewReader(c)
	if got := reply(t, r); !strings.HasPrefix(got, "220 ") {
		t.Fatalf("greeting: %q", got)
	}
	return c, r
}

func sessionTestServer(t *testing.T, edit ...func(*smtp.Server)) (*smtp.Server, string) {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := smtp.NewServer(new(backend))
	s.Domain = "mx.example"
	s.AllowInsecureAuth = true
	s.EnableDSN = true
	for _, e := range edit {
		e(s)
	}
	go s.Serve(l)
	t.Cleanup(func() { s.Close() })
	return s, l.Addr().String()
}

func TestDuplicateParametersRefused(t *testing.T) {
	_, addr := sessionTestServer(t)
	c, r := dialServer(t, addr)
	io.WriteString(c, "EHLO client.example\r\n")
	reply(t, r)
	for _, tc := range []struct{ cmd, want string }{
		{"MAIL FROM:<a@example.com> RET=FULL RET=HDRS", "501 5.5.4 Duplicate MAIL parameter RET"},
		{"MAIL FROM:<a@example.com> size=10 SIZE=20", "501 5.5.4 Duplicate MAIL parameter SIZE"},
		{"MAIL FROM:<a@example.com> BODY=7BIT BODY=8BITMIME", "501 5.5.4 Duplicate MAIL parameter BODY"},
		{"MAIL FROM:<a@example.com> ENVID=x ENVID=x", "501 5.5.4 Duplicate MAIL parameter ENVID"},
		// The same again, of a parameter other than DSN's, is taken once
		// (Python's send_message(mail_options=["SMTPUTF8"]) sends SMTPUTF8 twice).
		{"MAIL FROM:<a@example.com> BODY=8BITMIME SIZE=10 body=8bitmime SIZE=10", "250 "},
		{"RSET", "250 "},
		{"MAIL FROM:<a@example.com> ENVID=x", "250 "},
		{"RCPT TO:<b@example.com> NOTIFY=NEVER NOTIFY=SUCCESS", "501 5.5.4 Duplicate RCPT parameter NOTIFY"},
		{"RCPT TO:<b@example.com> ORCPT=rfc822;a@b ORCPT=rfc822;c@d", "501 5.5.4 Duplicate RCPT parameter ORCPT"},
		{"RCPT TO:<b@example.com> NOTIFY=NEVER ORCPT=rfc822;a@b", "250 "},
	} {
		io.WriteString(c, tc.cmd+"\r\n")
		if got := reply(t, r); !strings.HasPrefix(got, tc.want) {
			t.Errorf("%s: %q, want %q", tc.cmd, got, tc.want)
		}
	}
}

func TestGreetingRepliesNameTheServer(t *testing.T) {
	_, addr := sessionTestServer(t)
	c, r := dialServer(t, addr)
	io.WriteString(c, "HELO client.example\r\n")
	if got := reply(t, r); got != "250 mx.example Hello client.example" {
		t.Errorf("HELO: %q, want the server's name first (RFC 5321 §4.1.1.1)", got)
	}
	io.WriteString(c, "EHLO client.example\r\n")
	first, err := r.ReadString('\n')
	if err != nil || first != "250-mx.example Hello client.example\r\n" {
		t.Errorf("EHLO first line %q (%v), want the server's name first", first, err)
	}
}

func TestSetConnLimitsAppliesToNewConnections(t *testing.T) {
	s, addr := sessionTestServer(t)
	s.SetConnLimits(smtp.ConnLimits{MaxMessageBytes: 1000})
	old, oldR := dialServer(t, addr)
	io.WriteString(old, "EHLO client.example\r\n")
	reply(t, oldR)

	s.SetConnLimits(smtp.ConnLimits{MaxMessageBytes: 5000})
	c, r := dialServer(t, addr)
	io.WriteString(c, "EHLO client.example\r\n")
	if got := readAll(t, r); !strings.Contains(got, "SIZE 5000") {
		t.Errorf("new connection's EHLO %q, want SIZE 5000", got)
	}
	io.WriteString(c, "MAIL FROM:<a@example.com> SIZE=4000\r\n")
	if got := reply(t, r); !strings.HasPrefix(got, "250 ") {
		t.Errorf("new connection, SIZE=4000: %q", got)
	}
	// The connection opened before keeps the limit it started with.
	io.WriteString(old, "MAIL FROM:<a@example.com> SIZE=4000\r\n")
	if got := reply(t, oldR); !strings.HasPrefix(got, "552 5.3.4") {
		t.Errorf("old connection, SIZE=4000: %q, want 552 5.3.4", got)
	}
}

// TestSetDomainAppliesToNewConnections: SetDomain renames the server for
// the connections accepted afterwards; one open before keeps its name.
func TestSetDomainAppliesToNewConnections(t *testing.T) {
	s, addr := sessionTestServer(t)
	old, oldR := dialServer(t, addr)
	s.SetDomain("renamed.example")
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	r := bufio.NewReader(c)
	if got := reply(t, r); !strings.HasPrefix(got, "220 renamed.example ") {
		t.Errorf("greeting after SetDomain: %q", got)
	}
	io.WriteString(c, "HELO client.example\r\n")
	if got := reply(t, r); got != "250 renamed.example Hello client.example" {
		t.Errorf("HELO after SetDomain: %q", got)
	}
	io.WriteString(old, "HELO client.example\r\n")
	if got := reply(t, oldR); got != "250 mx.example Hello client.example" {
		t.Errorf("HELO on the connection opened before: %q, want the name it greeted with", got)
	}
}

// readAll reads one multi-line reply whole.
func readAll(t *testing.T, r *bufio.Reader) string {
	t.Helper()
	var b strings.Builder
	for {
		line, err := r.ReadString('\n')
		if err != nil {
			t.Fatal(err)
		}
		b.WriteString(line)
		if len(line) < 4 || line[3] != '-' {
			return b.String()
		}
	}
}

func TestShutdownTellsIdleSessionsAndLetsTransactionsFinish(t *testing.T) {
	s, addr := sessionTestServer(t)
	idle, idleR := dialServer(t, addr)
	io.WriteString(idle, "EHLO client.example\r\n")
	reply(t, idleR)
	busy, busyR := dialServer(t, addr)
	io.WriteString(busy, "EHLO client.example\r\nMAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.com>\r\n")
	reply(t, busyR)
	reply(t, busyR)
	if got := reply(t, busyR); !strings.HasPrefix(got, "250 ") {
		t.Fatalf("RCPT: %q", got)
	}

	done := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		done <- s.Shutdown(ctx)
	}()
	// The idle session hears at once, not when its timeout comes.
	if got := reply(t, idleR); !strings.HasPrefix(got, "421 4.3.2 mx.example ") {
		t.Errorf("idle session: %q, want 421 4.3.2", got)
	}
	if _, err := idleR.ReadByte(); err != io.EOF {
		t.Errorf("idle session not closed after 421: %v", err)
	}
	select {
	case err := <-done:
		t.Fatalf("Shutdown returned (%v) while a transaction was open", err)
	case <-time.After(50 * time.Millisecond):
	}
	// The open transaction finishes, then the session is closed.
	io.WriteString(busy, "DATA\r\n")
	if got := reply(t, busyR); !strings.HasPrefix(got, "354 ") {
		t.Fatalf("DATA: %q", got)
	}
	io.WriteString(busy, "Subject: x\r\n\r\nbody\r\n.\r\n")
	if got := reply(t, busyR); !strings.HasPrefix(got, "250 ") {
		t.Errorf("end of data during shutdown: %q, want 250", got)
	}
	if got := reply(t, busyR); !strings.HasPrefix(got, "421 4.3.2 ") {
		t.Errorf("after the transaction: %q, want 421 4.3.2", got)
	}
	if err := <-done; err != nil {
		t.Errorf("Shutdown: %v", err)
	}
}

func TestAngleBracketsAndPostmaster(t *testing.T) {
	s, addr := sessionTestServer(t)
	s.RequireAngleBrackets = true // before the first connection
	c, r := dialServer(t, addr)
	io.WriteString(c, "EHLO client.example\r\n")
	reply(t, r)
	for _, tc := range []struct{ cmd, want string }{
		{"MAIL FROM:a@example.com", "501 5.1.3"},
		{"MAIL FROM:<>", "250 "},
		{"RCPT TO:b@example.com", "501 5.1.3"},
		{"RCPT TO:b@example.com NOTIFY=NEVER", "501 5.1.3"},
		{"RCPT TO:<b@example.com>", "250 "},
		{"RCPT TO:<Postmaster>", "250 "},
		{"RCPT TO:<postmaster> NOTIFY=NEVER", "250 "},
		{"RCPT TO:<postmasterx>", "501 5.1.3"},
	} {
		io.WriteString(c, tc.cmd+"\r\n")
		if got := reply(t, r); !strings.HasPrefix(got, tc.want) {
			t.Errorf("%s: %q, want %q", tc.cmd, got, tc.want)
		}
	}
}

// MAIL and RCPT are answered with the enhanced statuses RFC 3463 gives
// them (2.1.0, 2.1.5; upstream said 2.0.0 "Roger, ..."); VRFY without an
// address and RSET with a parameter get 501, as in Postfix (upstream: 252,
// 250). Mailhop patch 65.
func TestReplyStatusesAndSyntax(t *testing.T) {
	_, addr := sessionTestServer(t)
	c, r := dialServer(t, addr)
	io.WriteString(c, "EHLO client.example\r\n")
	reply(t, r)
	for _, tc := range []struct{ cmd, want string }{
		{"MAIL FROM:<a@example.com>", "250 2.1.0 Sender <a@example.com> OK"},
		{"RCPT TO:<b@example.com>", "250 2.1.5 Recipient <b@example.com> OK"},
		{"VRFY", "501 5.5.4 Syntax: VRFY address"},
		{"VRFY b", "252 2.5.0 "},
		{"RSET x", "501 5.5.4 Syntax: RSET"},
		{"RSET", "250 2.0.0 Session reset"},
	} {
		io.WriteString(c, tc.cmd+"\r\n")
		if got := reply(t, r); !strings.HasPrefix(got, tc.want) {
			t.Errorf("%s: %q, want %q", tc.cmd, got, tc.want)
		}
	}
}

func TestGreetingEchoIsPrintable(t *testing.T) {
	_, addr := sessionTestServer(t)
	c, r := dialServer(t, addr)
	io.WriteString(c, "HELO a\x00b\x1bc\rd\r\n")
	if got := reply(t, r); got != "250 mx.example Hello a?b?c?d" {
		t.Errorf("HELO with control characters: %q", got)
	}
	io.WriteString(c, "EHLO\r\n")
	if got := reply(t, r); got != "501 5.5.2 Domain/address argument required for EHLO" {
		t.Errorf("bare EHLO: %q", got)
	}
	// Octets that are not UTF-8 are not echoed; UTF-8 is, cut between
	// characters.
	io.WriteString(c, "HELO a\xff\xfeb\xc3\r\n")
	if got := reply(t, r); got != "250 mx.example Hello a??b?" {
		t.Errorf("HELO with invalid UTF-8: %q", got)
	}
	io.WriteString(c, "HELO "+strings.Repeat("é", 200)+"\r\n")
	if got := reply(t, r); got != "250 mx.example Hello "+strings.Repeat("é", 127) {
		t.Errorf("long UTF-8 HELO: %q", got)
	}
}

// A line that is no command is an unrecognized command: 500, as an unknown
// four-letter one (RFC 5321 §4.2.4), and the session goes on (mailhop
// patch 42).
func TestUnrecognizedCommandLines(t *testing.T) {
	_, s, c, scanner := testServerGreeted(t)
	defer s.Close()
	defer c.Close()
	for _, line := range []string{"FOO", "BOGUS", "MAILX", "MAIL:FROM:<a@b>", "XYZW"} {
		io.WriteString(c, line+"\r\n")
		if !scanner.Scan() || !strings.HasPrefix(scanner.Text(), "500 5.5.2 ") {
			t.Errorf("%q: %q, want 500 5.5.2", line, scanner.Text())
		}
	}
	io.WriteString(c, "NOOP\r\n")
	if !scanner.Scan() || !strings.HasPrefix(scanner.Text(), "250 ") {
		t.Errorf("NOOP after them: %q", scanner.Text())
	}
}

// TestUnknownParametersGet555 checks that a MAIL or RCPT parameter the
// server does not know is answered 555 (RFC 5321 §4.1.1.11) and that the
// transaction goes on.
func TestUnknownParametersGet555(t *testing.T) {
	_, addr := sessionTestServer(t)
	c, r := dialServer(t, addr)
	io.WriteString(c, "EHLO client.example\r\n")
	reply(t, r)
	for _, tc := range []struct{ cmd, want string }{
		{"MAIL FROM:<a@example.com> FOO=bar", "555 5.5.4 "},
		{"MAIL FROM:<a@example.com> XFLAG", "555 5.5.4 "},
		{"MAIL FROM:<a@example.com>", "250 "},
		{"RCPT TO:<b@example.com> FOO=bar", "555 5.5.4 "},
		{"RCPT TO:<b@example.com>", "250 "},
	} {
		io.WriteString(c, tc.cmd+"\r\n")
		if got := reply(t, r); !strings.HasPrefix(got, tc.want) {
			t.Errorf("%s: %q, want %q", tc.cmd, got, tc.want)
		}
	}
}

// A client that connects to an implicit-TLS port and sends nothing is still
// in the TLS handshake at the shutdown deadline: AbortConns closes it
// within a second or so instead of waiting for its handshake to end (the
// write of the 421 waited for it, up to the read timeout).
func TestAbortConnsClosesStalledTLSHandshake(t *testing.T) {
	cert := selfSignedCert(t)
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := smtp.NewServer(new(backend))
	s.Domain = "mx.example"
	s.TLSConfig = &tls.Config{Certificates: []tls.Certificate{cert}}
	reading := make(chan struct{})
	go s.Serve(tls.NewListener(readNotifier{l, reading}, s.TLSConfig))
	t.Cleanup(func() { s.Close() })

	c, err := net.Dial("tcp", l.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	<-reading // the session waits for the client's hello
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	if err := s.Shutdown(ctx); err == nil {
		t.Fatal("Shutdown returned nil with a session in its TLS handshake")
	}
	aborted := make(chan struct{})
	go func() { s.AbortConns(); close(aborted) }()
	select {
	case <-aborted:
	case <-time.After(5 * time.Second):
		t.Fatal("AbortConns still waits for a TLS handshake after 5s")
	}
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := c.Read(make([]byte, 1)); err == nil {
		t.Error("the connection is still open after AbortConns")
	}
}

func selfSignedCert(t *testing.T) tls.Certificate {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), DNSNames: []string{"mx.example"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour)}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
}

// readNotifier closes reading at the first read from a connection it
// accepted.
type readNotifier struct {
	net.Listener
	reading chan struct{}
}

func (l readNotifier) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	return &notifyConn{Conn: c, reading: l.reading}, nil
}

type notifyConn struct {
	net.Conn
	reading chan struct{}
	once    sync.Once
}

func (c *notifyConn) Read(b []byte) (int, error) {
	c.once.Do(func() { close(c.reading) })
	return c.Conn.Read(b)
}

// A client that sends commands but never reads their replies is dropped
// once a reply cannot be written within WriteTimeout: the session does not
// go on running commands it can no longer answer.
func TestUnwritableReplyEndsSession(t *testing.T) {
	s, addr := sessionTestServer(t)
	s.SetConnLimits(smtp.ConnLimits{ReadTimeout: 10 * time.Second, WriteTimeout: 200 * time.Millisecond})
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.(*net.TCPConn).SetReadBuffer(4096)
	flood := []byte(strings.Repeat("NOOP\r\n", 1000))
	end := time.Now().Add(5 * time.Second)
	for off := 0; time.Now().Before(end); {
		// Whole lines only: a line cut by the write deadline goes on
		// where it stopped, so no command is garbled into an error.
		c.SetWriteDeadline(time.Now().Add(100 * time.Millisecond))
		n, err := c.Write(flood[off:])
		off = (off + n) % len(flood)
		var ne net.Error
		if err != nil && !(errors.As(err, &ne) && ne.Timeout()) {
			return // the server closed the connection
		}
	}
	t.Fatal("the server still read commands 5 s after its replies stopped going out")
}

// An HTTP request on the SMTP port (a browser made to post to it, its body
// SMTP commands) ends the session at its first line with 221, as Postfix's
// smtpd_forbidden_commands does; nothing after it is run. A command that
// only looks alike is not affected.
func TestHTTPRequestEndsSession(t *testing.T) {
	_, addr := sessionTestServer(t)
	for _, first := range []string{"POST / HTTP/1.1", "get /index.html", "CONNECT mx.example:25 HTTP/1.0", "PUT /x HTTP/1.1"} {
		c, r := dialServer(t, addr)
		io.WriteString(c, first+"\r\nHost: x\r\n\r\nEHLO x\r\nMAIL FROM:<a@example.com>\r\n")
		if got := reply(t, r); !strings.HasPrefix(got, "221 2.7.0 ") {
			t.Errorf("%q: %q, want 221 2.7.0", first, got)
		}
		if rest, err := io.ReadAll(r); err != nil || len(rest) != 0 {
			t.Errorf("%q: after the 221: %q (%v), want the connection closed", first, rest, err)
		}
	}
	c, r := dialServer(t, addr)
	io.WriteString(c, "NOOP HTTP/1.1\r\n")
	if got := reply(t, r); !strings.HasPrefix(got, "250 ") {
		t.Errorf("NOOP with an argument: %q, want 250", got)
	}
}

// SMTPUTF8 and REQUIRETLS take no value (RFC 6531 §3.4, RFC 8689 §3):
// "SMTPUTF8=no" or "REQUIRETLS=" is a syntax error, not the keyword.
// Upstream took both as the keyword (REQUIRETLS=no asked for REQUIRETLS).
func TestParameterValueSyntax(t *testing.T) {
	_, addr := sessionTestServer(t, func(s *smtp.Server) {
		s.EnableSMTPUTF8 = true
		s.EnableREQUIRETLS = true
	})
	c, r := dialServer(t, addr)
	io.WriteString(c, "EHLO client.example\r\n")
	reply(t, r)
	for _, tc := range []struct{ cmd, want string }{
		{"MAIL FROM:<a@example.com> SMTPUTF8=yes", "501 5.5.4 MAIL parameter SMTPUTF8 takes no value"},
		{"MAIL FROM:<a@example.com> REQUIRETLS=no", "501 5.5.4 MAIL parameter REQUIRETLS takes no value"},
		{"MAIL FROM:<a@example.com> requiretls=", "501 5.5.4 MAIL parameter REQUIRETLS takes no value"},
		{"MAIL FROM:<a@example.com> SMTPUTF8 REQUIRETLS", "250 "},
		{"RCPT TO:<b@example.com> NOTIFY=NEVER", "250 "},
	} {
		io.WriteString(c, tc.cmd+"\r\n")
		if got := reply(t, r); !strings.HasPrefix(got, tc.want) {
			t.Errorf("%s: %q, want %q", tc.cmd, got, tc.want)
		}
	}
}
