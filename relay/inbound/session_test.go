package inbound

import (
	"bufio"
	"crypto/tls"
	"encoding/base64"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"

	"github.com/mailhop/mailhop/internal/testlog"
	"github.com/mailhop/mailhop/relay/config"
)

func plainIR(user, pass string) string {
	return base64.StdEncoding.EncodeToString([]byte("\x00" + user + "\x00" + pass))
}

func b64(s string) string { return base64.StdEncoding.EncodeToString([]byte(s)) }

func TestRelay_UntrustedWithoutAuth_Denied(t *testing.T) {
	ts := startServer(t, func(c *config.Config) { c.Limits.MaxErrors = 50 })
	d := dial(t, ts.addr[config.ModeRelay])
	d.script(
		"S: 220 ",
		"C: EHLO client.test", "S: 250 ",
		"C: MAIL FROM:<someone@example.com>", "S: 250 ",
	)
	// Whatever the address, an untrusted unauthenticated client never relays.
	for _, rcpt := range []string{
		"<victim@example.net>",
		"<user%remote.example@mx.test>",
		"<remote.example!user@mx.test>",
		`<"user@remote.example"@mx.test>`,
		"<user@[127.0.0.1]>",
		"<USER@MX.TEST>",
	} {
		d.write("RCPT TO:" + rcpt + "\r\n")
		d.expect("554 5.7.1 Relay access denied")
	}
	for _, rcpt := range []string{
		"<@mx.test:user@remote.example>", // source route: refused outright
		"<user@remote.example.>",         // trailing dot
		"<a@b@remote.example>",
		"remote@example.net", // no angle brackets (strict, like strict_rfc821_envelopes)
		"<postmasterx>",
	} {
		d.write("RCPT TO:" + rcpt + "\r\n")
		d.expect("501 5.1.3 ")
	}
	// UTF-8 without SMTPUTF8: Postfix's reply (RFC 6531 §3.5).
	d.write("RCPT TO:<usér@remote.example>\r\n")
	d.expect("553 5.6.7 ")
	// <Postmaster> is valid syntax: it is mailhop's own postmaster, relayed
	// like any other address, so denied here.
	d.write("RCPT TO:<Postmaster>\r\n")
	d.expect("554 5.7.1 Relay access denied")
	d.script("C: DATA", "S: 503 5.5.1 ")
	if n := len(ts.q.List()); n != 0 {
		t.Fatalf("%d messages queued", n)
	}
}

func TestRelay_TrustedWithoutAuth_Accepted(t *testing.T) {
	ts := startServer(t, trustLoopback)
	d := dial(t, ts.addr[config.ModeRelay])
	d.script(
		"S: 220 ",
		"C: EHLO client.test", "S: 250 ",
		"C: MAIL FROM:<anyone@anywhere.example>", "S: 250 ",
		"C: RCPT TO:<bob@example.net>", "S: 250 ",
		"C: RCPT TO:<bob@EXAMPLE.net>", "S: 250 ", // duplicate: stored once
		"C: DATA", "S: 354 ",
		"C: Subject: hi", "C: ", "C: hello", "C: .", "S: 250 2.0.0 OK: queued as ",
	)
	envs := ts.q.List()
	if len(envs) != 1 || len(envs[0].Recipients) != 1 || envs[0].From != "anyone@anywhere.example" {
		t.Fatalf("queued %+v", envs)
	}
}

func TestReceived_WithFollowsGreeting(t *testing.T) {
	ts := startServer(t, trustLoopback)
	for _, tc := range []struct{ greet, with string }{{"HELO", "with SMTP id"}, {"EHLO", "with ESMTP id"}} {
		d := dial(t, ts.addr[config.ModeRelay])
		d.script(
			"S: 220 ",
			"C: "+tc.greet+" client.test", "S: 250",
			"C: MAIL FROM:<a@b.example>", "S: 250 ",
			"C: RCPT TO:<c@"+strings.ToLower(tc.greet)+".example>", "S: 250 ",
			"C: DATA", "S: 354 ",
			"C: Subject: hi", "C: ", "C: hello", "C: .", "S: 250 2.0.0 OK: queued as ",
		)
	}
	queued := ts.queued()
	if len(queued) != 2 {
		t.Fatalf("%d messages queued", len(queued))
	}
	for env, body := range queued {
		want := "with ESMTP id"
		if env.Recipients[0].Address == "c@helo.example" {
			want = "with SMTP id"
		}
		if !strings.Contains(body, want) {
			t.Errorf("%s: Received field lacks %q:\n%s", env.Recipients[0].Address, want, body)
		}
	}
}

func TestSubmission_EHLOAndAuthBeforeTLS(t *testing.T) {
	ts := startServer(t)
	d := dial(t, ts.addr[config.ModeSubmission])
	d.expect("220 ")
	d.write("EHLO client.test\r\n")
	caps := strings.Join(d.replyLines(), "\n")
	for _, c := range []string{"PIPELINING", "8BITMIME", "SMTPUTF8", "SIZE 1048576", "ENHANCEDSTATUSCODES", "STARTTLS", "CHUNKING", "DSN"} {
		if !strings.Contains(caps, c) {
			t.Errorf("EHLO lacks %s:\n%s", c, caps)
		}
	}
	if strings.Contains(caps, "AUTH") {
		t.Errorf("AUTH offered before TLS:\n%s", caps)
	}
	d.script(
		"C: AUTH PLAIN "+plainIR("alice", testPassword), "S: 530 5.7.0 Must issue a STARTTLS command first",
		"C: MAIL FROM:<alice@example.com>", "S: 530 5.7.0 Must issue a STARTTLS command first",
	)
	d.starttls()
	d.script("C: MAIL FROM:<alice@example.com>", "S: 530 5.7.0 Authentication required")
	d.write("EHLO client.test\r\n")
	caps = strings.Join(d.replyLines(), "\n")
	if !strings.Contains(caps, "AUTH PLAIN LOGIN") || strings.Contains(caps, "STARTTLS") {
		t.Errorf("EHLO after TLS:\n%s", caps)
	}
}

func TestSubmission_AuthReplies(t *testing.T) {
	ts := startServer(t)
	d := dial(t, ts.addr[config.ModeSubmission])
	d.script("S: 220 ", "C: EHLO client.test", "S: 250 ")
	d.starttls()
	d.script(
		"C: AUTH PLAIN "+plainIR("alice", "wrong"), "S: 535 5.7.8 Authentication credentials invalid",
		"C: AUTH PLAIN "+plainIR("nobody", "wrong"), "S: 535 5.7.8 Authentication credentials invalid",
		"C: AUTH PLAIN !!!notbase64", "S: 501 5.5.2 ",
		"C: AUTH CRAM-MD5", "S: 504 5.5.4 ",
		"C: AUTH LOGIN", "S: 334 "+b64("Username:"),
		"C: "+b64("alice"), "S: 334 "+b64("Password:"),
		"C: "+b64(testPassword), "S: 235 2.0.0 ",
		"C: MAIL FROM:<mallory@example.com>", "S: 553 5.7.1 <mallory@example.com>: Sender address rejected: not owned by user alice",
		"C: MAIL FROM:<anyone@EXAMPLE.ORG>", "S: 250 ",
		"C: RSET", "S: 250 ",
		"C: MAIL FROM:<>", "S: 250 ", // a read receipt (RFC 8098)
		"C: RSET", "S: 250 ",
		"C: MAIL FROM:<alice@example.com>", "S: 250 ",
		"C: RCPT TO:<bob@example.net>", "S: 250 ",
	)
	if strings.Contains(ts.logs.String(), testPassword) || strings.Contains(ts.logs.String(), b64(testPassword)) {
		t.Fatal("password in the log")
	}
}

// TestSubmission_SenderNotOwned_ReplyNamesAddressAndUser replays msmtp's
// dialog (EHLO localhost, STARTTLS, AUTH PLAIN, then MAIL, RCPT and DATA in
// one pipelined write) with a From the user may not use. msmtp, mutt,
// s-nail and git send-email show the user only the reply line: it has to
// say which address was refused and for which login, as Postfix's
// "<addr>: Sender address rejected: not owned by user NAME" does.
func TestSubmission_SenderNotOwned_ReplyNamesAddressAndUser(t *testing.T) {
	ts := startServer(t)
	d := dial(t, ts.addr[config.ModeSubmission])
	d.script("S: 220 ", "C: EHLO localhost", "S: 250 ")
	d.starttls()
	d.script("C: AUTH PLAIN "+plainIR("alice", testPassword), "S: 235 ")
	d.write("MAIL FROM:<mallory@evil.example>\r\nRCPT TO:<r1@dest.example>\r\nDATA\r\n")
	const want = "553 5.7.1 <mallory@evil.example>: Sender address rejected: not owned by user alice"
	if got := d.reply(); got != want {
		t.Errorf("MAIL reply %q, want %q", got, want)
	}
	d.expect("503 ") // RCPT without a transaction
	d.expect("503 ") // DATA without a transaction
}

func TestSenderNotOwned_OddUserNameLeftOut(t *testing.T) {
	for _, tc := range []struct{ user, want string }{
		{"bob@example.com", "<x@y.example>: Sender address rejected: not owned by user bob@example.com"},
		{"two words", "<x@y.example>: Sender address rejected: not owned by user"},
		{"b\r\nQUIT", "<x@y.example>: Sender address rejected: not owned by user"},
		{"jürgen", "<x@y.example>: Sender address rejected: not owned by user"},
	} {
		e := senderNotOwned("x@y.example", tc.user)
		if e.Code != 553 || e.Message != tc.want {
			t.Errorf("user %q: %d %q, want 553 %q", tc.user, e.Code, e.Message, tc.want)
		}
	}
}

// The reply echoes the address and the user name: with an address at the
// path limit and a long user name its line would pass RFC 5321
// §4.5.3.1.5's 512 octets (CRLF included); the user name is then left
// out, the address (what the user has to correct) kept.
func TestSenderNotOwned_ReplyLineWithin512Octets(t *testing.T) {
	from := strings.Repeat("l", 64) + "@" + strings.Repeat("d", 63) + "." + strings.Repeat("e", 63) + "." + strings.Repeat("f", 61)
	if len(from) != maxPath {
		t.Fatalf("address of %d octets, want %d", len(from), maxPath)
	}
	for _, tc := range []struct {
		user     string
		wantUser bool
	}{
		{"alice", true},
		{strings.Repeat("u", 190), true},
		{strings.Repeat("u", 300), false},
	} {
		e := senderNotOwned(from, tc.user)
		line := fmt.Sprintf("%d %d.%d.%d %s\r\n", e.Code, e.EnhancedCode[0], e.EnhancedCode[1], e.EnhancedCode[2], e.Message)
		if len(line) > 512 {
			t.Errorf("user of %d octets: reply line of %d octets, over 512", len(tc.user), len(line))
		}
		if !strings.Contains(e.Message, "<"+from+">") || strings.HasSuffix(e.Message, " "+tc.user) != tc.wantUser {
			t.Errorf("user of %d octets: %q, want the address and the user name %v", len(tc.user), e.Message, tc.wantUser)
		}
	}
}

// sendWithClient submits one message with the go-smtp client, STARTTLS and
// AUTH PLAIN.
func sendWithClient(t *testing.T, addr, from string, to []string, body string) error {
	t.Helper()
	c, err := smtp.DialStartTLS(addr, &tls.Config{InsecureSkipVerify: true})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := c.Auth(sasl.NewPlainClient("", "alice", testPassword)); err != nil {
		return err
	}
	return c.SendMail(from, to, strings.NewReader(body))
}

func TestSubmission_ClientPlainAuth_BodyKept(t *testing.T) {
	ts := startServer(t)
	body := "From: alice@example.com\r\nSubject: dots\r\nMessage-ID: <x@y>\r\nDate: Mon, 02 Jan 2006 15:04:05 +0000\r\n\r\n" +
		".leading dot\r\n..two dots\r\n.\r\n8-bit: \xc3\xa9t\xc3\xa9 \xff\r\nend\r\n"
	if err := sendWithClient(t, ts.addr[config.ModeSubmission], "alice@example.com", []string{"bob@example.net"}, body); err != nil {
		t.Fatal(err)
	}
	m := ts.queued()
	if len(m) != 1 {
		t.Fatalf("%d queued", len(m))
	}
	for env, got := range m {
		if rest := stripReceived(t, got); rest != body {
			t.Errorf("body changed:\n got %q\nwant %q", rest, body)
		}
		if env.User != "alice" || env.From != "alice@example.com" || env.ClientAddr != "127.0.0.1" {
			t.Errorf("envelope %+v", env)
		}
	}
}

func TestSubmissions_ImplicitTLS(t *testing.T) {
	ts := startServer(t)
	d := dialTLS(t, ts.addr[config.ModeSubmissions])
	d.script(
		"S: 220 ",
		"C: EHLO client.test", "S: 250 ",
		"C: MAIL FROM:<alice@example.com>", "S: 530 5.7.0 Authentication required",
		"C: AUTH PLAIN "+plainIR("alice", testPassword), "S: 235 ",
		"C: MAIL FROM:<alice@example.com> SIZE=2000000", "S: 552 5.3.4 Message size exceeds fixed limit",
		"C: MAIL FROM:<alice@example.com> SIZE=100", "S: 250 ",
		"C: RCPT TO:<r1@example.net> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;r1@example.net", "S: 250 ",
	)
	for i := 2; i <= 6; i++ {
		d.write("RCPT TO:<r" + string(rune('0'+i)) + "@example.net>\r\n")
		if i <= 5 {
			d.expect("250 ")
		} else {
			d.expect("452 4.5.3 Too many recipients")
		}
	}
	d.script("C: DATA", "S: 354 ")
	d.write("Subject: x\r\n\r\n" + strings.Repeat(strings.Repeat("x", 900)+"\r\n", 1200) + ".\r\n")
	d.expect("552 5.3.4 Message size exceeds fixed limit")
	d.script("C: NOOP", "S: 250 ")
	if n := len(ts.q.List()); n != 0 {
		t.Fatalf("%d messages queued", n)
	}
	st := ts.s.Stats()
	if st.TLSConnections != 1 || st.Refused["size"] != 2 {
		t.Errorf("stats: %+v (want 1 TLS connection, 2 size refusals: SIZE= at MAIL and the data)", st)
	}
}

func TestOutOfSequence_503(t *testing.T) {
	ts := startServer(t, trustLoopback)
	d := dial(t, ts.addr[config.ModeRelay])
	d.script(
		"S: 220 ",
		"C: MAIL FROM:<a@example.com>", "S: 503 5.5.1 ",
		"C: RCPT TO:<a@example.com>", "S: 503 5.5.1 ",
		"C: DATA", "S: 503 5.5.1 ",
		"C: EHLO client.test", "S: 250 ",
		"C: RCPT TO:<a@example.com>", "S: 503 5.5.1 ",
		"C: DATA", "S: 503 5.5.1 ",
		"C: MAIL FROM:<a@example.com>", "S: 250 ",
		"C: MAIL FROM:<a@example.com>", "S: 503 5.5.1 ",
		"C: DATA", "S: 503 5.5.1 ",
		"C: BDAT 0 LAST", "S: 503 5.5.1 ",
		"C: NOOP", "S: 250 ",
	)
}

// An address that go-smtp's parser refuses is counted as bad_address, like
// one the session refuses itself (it was neither counted nor logged).
func TestUnparsableAddress_CountedAsBadAddress(t *testing.T) {
	ts := startServer(t, trustLoopback)
	d := dial(t, ts.addr[config.ModeRelay])
	d.script(
		"S: 220 ",
		"C: EHLO client.test", "S: 250 ",
		"C: MAIL FROM:<a b@example.com>", "S: 501 5.1.3 ",
		"C: MAIL FROM:<a@example.com>", "S: 250 ",
		"C: RCPT TO:<bad address@example.net>", "S: 501 5.1.3 ",
		"C: NOOP", "S: 250 ",
	)
	if st := ts.s.Stats(); st.Refused["bad_address"] != 2 {
		t.Errorf("refusals: %v, want 2 bad_address", st.Refused)
	}
}

func TestLongCommandLine_500(t *testing.T) {
	ts := startServer(t)
	d := dial(t, ts.addr[config.ModeRelay])
	d.script("S: 220 ", "C: EHLO client.test", "S: 250 ")
	d.write("NOOP " + strings.Repeat("x", 3000) + "\r\n")
	d.expect("500 5.5.2 Line too long")
	d.script("C: NOOP", "S: 250 ")
}

func TestTooManyErrors_421(t *testing.T) {
	ts := startServer(t, func(c *config.Config) { c.Limits.MaxErrors = 3 })
	d := dial(t, ts.addr[config.ModeRelay])
	d.script(
		"S: 220 ",
		"C: XYZZ", "S: 500 ",
		"C: XYZZ", "S: 500 ",
		"C: XYZZ", "S: 500 ",
		"S: 421 4.7.0 ",
	)
	if !d.closed() {
		t.Fatal("connection still open")
	}
}

func TestAuthFailures_SlowThenBlocked(t *testing.T) {
	ts := startServer(t, func(c *config.Config) { c.Limits.MaxAuthFailures = 3 })
	d := dialTLS(t, ts.addr[config.ModeSubmissions])
	d.script(
		"S: 220 ", "C: EHLO client.test", "S: 250 ",
		"C: AUTH PLAIN "+plainIR("alice", "x"), "S: 535 5.7.8 ",
		"C: AUTH PLAIN "+plainIR("alice", "y"), "S: 535 5.7.8 ",
		"C: AUTH PLAIN "+plainIR("alice", "z"), "S: 421 4.7.0 ",
	)
	if !d.closed() {
		t.Fatal("connection still open after 421")
	}
	// The address is now refused at connect, on every listener.
	d2 := dial(t, ts.addr[config.ModeRelay])
	d2.expect("421 4.7.0 ")
	if st := ts.s.Stats(); st.AuthFailures != 3 || st.RejectedConnections != 1 {
		t.Fatalf("stats %+v", st)
	}
}

// TestAuthFailures_ReloadedLimit: SIGHUP's SetConfig changes
// limits.max_auth_failures for the next failures.
func TestAuthFailures_ReloadedLimit(t *testing.T) {
	ts := startServer(t)
	cfg := *ts.cfg
	cfg.Limits.MaxAuthFailures = 2
	if err := ts.s.SetConfig(&cfg); err != nil {
		t.Fatal(err)
	}
	d := dialTLS(t, ts.addr[config.ModeSubmissions])
	d.script(
		"S: 220 ", "C: EHLO client.test", "S: 250 ",
		"C: AUTH PLAIN "+plainIR("alice", "x"), "S: 535 5.7.8 ",
		"C: AUTH PLAIN "+plainIR("alice", "y"), "S: 421 4.7.0 ",
	)
	if !d.closed() {
		t.Fatal("connection still open after 421")
	}
}

func TestMaxConnectionsPerIP_421(t *testing.T) {
	ts := startServer(t, func(c *config.Config) { c.Limits.MaxConnectionsPerIP = 2 })
	a := dial(t, ts.addr[config.ModeRelay])
	a.expect("220 ")
	b := dial(t, ts.addr[config.ModeSubmission])
	b.expect("220 ")
	c := dial(t, ts.addr[config.ModeRelay])
	c.expect("421 4.7.0 ")
	if !c.closed() {
		t.Fatal("refused connection still open")
	}
	a.script("C: NOOP", "S: 250 ")
	// On the implicit-TLS listener the refusal comes over TLS (RFC 8314
	// §3.3): a client that starts with a handshake reads the 421.
	s := dialTLS(t, ts.addr[config.ModeSubmissions])
	s.expect("421 4.7.0 ")
	if !s.closed() {
		t.Fatal("refused TLS connection still open")
	}
}

func TestQueueFailure_451WithoutInternalText(t *testing.T) {
	ts := startServer(t, trustLoopback)
	d := dial(t, ts.addr[config.ModeRelay])
	d.script(
		"S: 220 ", "C: EHLO client.test", "S: 250 ",
		"C: MAIL FROM:<a@example.com>", "S: 250 ",
		"C: RCPT TO:<b@example.net>", "S: 250 ",
		"C: DATA", "S: 354 ",
	)
	ts.q.Close()
	d.write("Subject: x\r\n\r\nhello\r\n.\r\n")
	if got := d.reply(); got != "451 4.3.0 Requested action aborted: local error in processing" {
		t.Fatalf("reply %q", got)
	}
	if !strings.Contains(ts.logs.String(), `msg="message refused"`) || !strings.Contains(ts.logs.String(), "reason=queue_error") {
		t.Fatalf("no refusal logged:\n%s", ts.logs.String())
	}
}

// stripReceived removes the Received field mailhop prepends (its first line
// and folded continuation lines).
func stripReceived(t *testing.T, msg string) string {
	t.Helper()
	if !strings.HasPrefix(msg, "Received: ") {
		t.Fatalf("no Received field first: %q", msg)
	}
	for {
		i := strings.Index(msg, "\r\n")
		msg = msg[i+2:]
		if !strings.HasPrefix(msg, "\t") {
			return msg
		}
	}
}

// With postmaster set, <Postmaster> and postmaster@hostname are accepted
// from anyone (RFC 5321 §4.5.1) and go to that mailbox; other recipients
// stay denied.
func TestRcpt_PostmasterFromAnyone(t *testing.T) {
	ts := startServer(t, func(c *config.Config) { c.Postmaster = "ops@example.org" })
	d := dial(t, ts.addr[config.ModeRelay])
	d.script("S: 220 ", "C: EHLO client.test", "S: 250 ",
		"C: MAIL FROM:<someone@elsewhere.example>", "S: 250 ",
		"C: RCPT TO:<Postmaster>", "S: 250 ",
		"C: RCPT TO:<POSTMASTER@mx.test>", "S: 250 ",
		"C: RCPT TO:<postmaster@other.example>", "S: 554 5.7.1 ",
		"C: DATA", "S: 354 ")
	d.write("Subject: abuse report\r\n\r\nhello\r\n.\r\n")
	d.expect("250 ")
	envs := ts.q.List()
	if len(envs) != 1 || len(envs[0].Recipients) != 1 {
		t.Fatalf("queued: %+v", envs)
	}
	if r := envs[0].Recipients[0]; r.Address != "ops@example.org" || r.ORCPT != "rfc822;postmaster@mx.test" {
		t.Errorf("recipient %+v, want ops@example.org with ORCPT rfc822;postmaster@mx.test", r)
	}
}

// An AUTH command with its initial response may be 12288 octets long (RFC
// 4954 §4); other commands keep the 2048-octet limit.
func TestAuth_LongInitialResponse(t *testing.T) {
	ts := startServer(t)
	d := dialTLS(t, ts.addr[config.ModeSubmissions])
	d.script("S: 220 ", "C: EHLO client.test", "S: 250 ",
		"C: AUTH PLAIN "+plainIR("alice", strings.Repeat("p", 6000)), "S: 535 5.7.8 ",
		"C: NOOP "+strings.Repeat("x", 3000), "S: 500 5.5.2 ",
		"C: NOOP", "S: 250 ")
}

// A trusted client is not refused at connect because AUTH failed too often
// from its address (Postfix exempts $mynetworks the same way); others are.
func TestAuthBlock_TrustedExempt(t *testing.T) {
	ts := startServer(t, func(c *config.Config) {
		c.Limits.MaxAuthFailures = 2
		c.Policy.Trusted = append(c.Policy.Trusted, netip.MustParsePrefix("127.0.0.7/32"))
	})
	for _, ip := range []string{"127.0.0.7", "127.0.0.8"} {
		c, err := (&net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(ip)}}).Dial("tcp", ts.addr[config.ModeSubmissions])
		if err != nil {
			t.Fatal(err)
		}
		tc := tls.Client(c, &tls.Config{InsecureSkipVerify: true})
		d := &dialog{t: t, c: tc, r: bufio.NewReader(tc)}
		d.script("S: 220 ", "C: EHLO client.test", "S: 250 ",
			"C: AUTH PLAIN "+plainIR("alice", "x"), "S: 535 ",
			"C: AUTH PLAIN "+plainIR("alice", "y"), "S: 421 4.7.0 ")
		tc.Close()
		again, err := (&net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(ip)}}).Dial("tcp", ts.addr[config.ModeRelay])
		if err != nil {
			t.Fatal(err)
		}
		line, _ := bufio.NewReader(again).ReadString('\n')
		again.Close()
		want := "421 4.7.0 "
		if ip == "127.0.0.7" {
			want = "220 "
		}
		if !strings.HasPrefix(line, want) {
			t.Errorf("%s after its AUTH failures: %q, want %q", ip, line, want)
		}
	}
}

// An address literal must follow RFC 5321's IPv6 group counts, and one that
// no server can be at ([0.0.0.0] would reach this host) is refused as a
// destination even from a trusted client.
func TestRcpt_AddressLiterals(t *testing.T) {
	ts := startServer(t, trustLoopback)
	d := dial(t, ts.addr[config.ModeRelay])
	d.script("S: 220 ", "C: EHLO client.test", "S: 250 ",
		"C: MAIL FROM:<app@example.org>", "S: 250 ",
		"C: RCPT TO:<a@[0.0.0.0]>", "S: 550 5.1.2 ",
		"C: RCPT TO:<a@[224.0.0.1]>", "S: 550 5.1.2 ",
		"C: RCPT TO:<a@[IPv6:ff02::1]>", "S: 550 5.1.2 ",
		"C: RCPT TO:<a@[IPv6:1:2:3:4:5:6:7::]>", "S: 501 5.1.3 ",
		"C: RCPT TO:<a@[127.0.0.1]>", "S: 250 ",
		"C: RCPT TO:<a@[IPv6:2001:db8::1]>", "S: 250 ")
}

// A transaction given up before its data (RSET, or QUIT after MAIL) gets its
// log line too; one that ended with its data does not get a second one.
func TestAbandonedTransactionLogged(t *testing.T) {
	ts := startServer(t, trustLoopback)
	d := dial(t, ts.addr[config.ModeRelay])
	d.script("S: 220 ", "C: EHLO client.test", "S: 250 ",
		"C: MAIL FROM:<a@example.org>", "S: 250 ",
		"C: RCPT TO:<b@example.net>", "S: 250 ",
		"C: RSET", "S: 250 ",
		"C: MAIL FROM:<c@example.org>", "S: 250 ",
		"C: RCPT TO:<d@example.net>", "S: 250 ",
		"C: DATA", "S: 354 ")
	d.write("Subject: x\r\n\r\nx\r\n.\r\n")
	d.expect("250 ")
	d.script("C: MAIL FROM:<e@example.org>", "S: 250 ", "C: QUIT", "S: 221 ")
	if ts.logs.WaitLine(10*time.Second, `how="session ended"`) == "" {
		t.Fatalf("no line for the transaction left at QUIT:\n%s", ts.logs.String())
	}
	lines := testlog.Lines(ts.logs.String(), "transaction abandoned")
	if len(lines) != 2 || !strings.Contains(lines[0], "from=a@example.org") || !strings.Contains(lines[0], "rcpts=1") ||
		!strings.Contains(lines[0], "how=reset") || !strings.Contains(lines[1], "from=e@example.org") {
		t.Errorf("abandoned transactions logged as %q", lines)
	}
	for _, l := range lines {
		if strings.Count(l, "client=") != 1 {
			t.Errorf("client given more than once: %q", l)
		}
	}
}

// TestRemovedUser_SendsNothing: a user a reload removed, still in the
// session it authenticated, starts no transaction, with the null sender
// neither (it was refused its own addresses but could send as <> to anyone).
func TestRemovedUser_SendsNothing(t *testing.T) {
	ts := startServer(t)
	d := dialTLS(t, ts.addr[config.ModeSubmissions])
	d.script(
		"S: 220 ", "C: EHLO client.test", "S: 250 ",
		"C: AUTH PLAIN "+plainIR("alice", testPassword), "S: 235 ",
		"C: MAIL FROM:<>", "S: 250 ", "C: RSET", "S: 250 ",
	)
	cfg := *ts.cfg
	cfg.User = nil
	if err := ts.s.SetConfig(&cfg); err != nil {
		t.Fatal(err)
	}
	d.script(
		"C: MAIL FROM:<alice@example.com>", "S: 553 5.7.1 ",
		"C: MAIL FROM:<>", "S: 553 5.7.1 ",
	)
}
