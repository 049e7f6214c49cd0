package inbound

import (
	"bufio"
	"crypto/sha256"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"regexp"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"

	"github.com/mailhop/mailhop/relay/config"
)

// TestSmuggling sends each known smuggling end-of-data variant followed by
// a smuggled transaction, then a legitimate pipelined transaction. The
// first must be refused as a whole with 550 5.6.11, and exactly the
// legitimate message must be queued.
func TestSmuggling(t *testing.T) {
	variants := map[string]string{
		`LF.CRLF`:   "\n.\r\n",
		`CR.CRLF`:   "\r.\r\n",
		`LF.LF`:     "\n.\n",
		`CR.CR`:     "\r.\r",
		`CRLF.CR`:   "\r\n.\r",
		`LF.CR`:     "\n.\r",
		`CRLF.LF`:   "\r\n.\n",
		`bare LF`:   "\n",
		`bare CR`:   "\r",
		`CRLF.CRCR`: "\r\n.\r\r\n",
	}
	ts := startServer(t, trustLoopback)
	for name, seq := range variants {
		t.Run(name, func(t *testing.T) {
			before := len(ts.q.List())
			d := dial(t, ts.addr[config.ModeRelay])
			d.script("S: 220 ", "C: EHLO client.test", "S: 250 ")
			// One pipelined write: the outer transaction with the smuggled
			// one inside, then a legitimate one.
			d.write("MAIL FROM:<sender@example.com>\r\nRCPT TO:<rcpt@example.net>\r\nDATA\r\n" +
				"Subject: outer\r\n\r\nouter body" + seq +
				"MAIL FROM:<evil@example.com>\r\nRCPT TO:<victim@example.net>\r\nDATA\r\n" +
				"Subject: smuggled\r\n\r\nSMUGGLED\r\n.\r\n" +
				"MAIL FROM:<good@example.com>\r\nRCPT TO:<rcpt@example.net>\r\nDATA\r\n" +
				"Subject: legit\r\n\r\nlegit body\r\n.\r\n")
			d.expect("250 ") // MAIL
			d.expect("250 ") // RCPT
			d.expect("354 ")
			d.expect("550 5.6.11 Bare CR or LF not allowed")
			d.expect("250 ")
			d.expect("250 ")
			d.expect("354 ")
			d.expect("250 2.0.0 OK: queued as ")
			d.script("C: QUIT", "S: 221 ")
			envs := ts.q.List()
			if len(envs) != before+1 {
				t.Fatalf("%d messages queued, want 1", len(envs)-before)
			}
			for _, env := range envs {
				if env.From == "evil@example.com" || env.From == "sender@example.com" {
					t.Fatalf("refused or smuggled message queued: %+v", env)
				}
			}
			for _, body := range ts.queued() {
				if strings.Contains(body, "SMUGGLED") || strings.Contains(body, "outer") {
					t.Fatalf("smuggled content queued: %q", body)
				}
			}
		})
	}
}

func TestBDAT_BareLFRefused(t *testing.T) {
	ts := startServer(t, trustLoopback)
	d := dial(t, ts.addr[config.ModeRelay])
	d.script("S: 220 ", "C: EHLO client.test", "S: 250 ",
		"C: MAIL FROM:<a@example.com>", "S: 250 ",
		"C: RCPT TO:<b@example.net>", "S: 250 ")
	chunk := "Subject: x\r\n\r\nhi\n.\nMAIL FROM:<e@example.com>\r\n"
	d.write(fmt.Sprintf("BDAT %d LAST\r\n%s", len(chunk), chunk))
	d.expect("550 5.6.11 ")
	chunk = "Subject: y\r\n\r\nfine\r\n"
	d.script("C: MAIL FROM:<a@example.com>", "S: 250 ", "C: RCPT TO:<b@example.net>", "S: 250 ")
	d.write(fmt.Sprintf("BDAT %d LAST\r\n%s", len(chunk), chunk))
	d.expect("250 2.0.0 OK: queued as ")
	if n := len(ts.q.List()); n != 1 {
		t.Fatalf("%d queued, want 1", n)
	}
}

func TestDataLineTooLong_500(t *testing.T) {
	ts := startServer(t, trustLoopback)
	d := inData(t, ts.addr[config.ModeRelay])
	d.write("Subject: x\r\n\r\n" + strings.Repeat("y", 999) + "\r\nmore\r\n.\r\n")
	d.expect("500 5.5.2 Line too long")
	d.script("C: NOOP", "S: 250 ")
	if n := len(ts.q.List()); n != 0 {
		t.Fatalf("%d queued", n)
	}
}

var receivedRE = regexp.MustCompile(`^Received: from localhost \(\[127\.0\.0\.1\]\)\r\n` +
	`\tby mx\.test \(mailhop\) with ESMTPSA id (\S+)\r\n` +
	`\tfor <bob@example\.net>\r\n` +
	`\t\(version=TLS1\.3 cipher=TLS_[A-Z0-9_]+\);\r\n` +
	`\t[A-Z][a-z]{2}, \d{2} [A-Z][a-z]{2} \d{4} \d{2}:\d{2}:\d{2} [+-]\d{4}\r\n`)

func TestReceivedAndSubmissionHeaders(t *testing.T) {
	ts := startServer(t, trustLoopback)
	send := func(mode, body string) string {
		t.Helper()
		c, err := smtp.DialStartTLS(ts.addr[mode], &tls.Config{InsecureSkipVerify: true})
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		if err := c.Auth(sasl.NewLoginClient("alice", testPassword)); err != nil {
			t.Fatal(err)
		}
		before := map[string]bool{}
		for _, e := range ts.q.List() {
			before[e.ID] = true
		}
		if err := c.SendMail("alice@example.com", []string{"bob@example.net"}, strings.NewReader(body)); err != nil {
			t.Fatal(err)
		}
		for env, b := range ts.queued() {
			if !before[env.ID] {
				m := receivedRE.FindStringSubmatch(b)
				if m == nil || m[1] != env.ID {
					t.Fatalf("Received field wrong: %q", b)
				}
				for _, line := range strings.Split(b[:len(m[0])], "\r\n") {
					if len(line) >= 78 {
						t.Errorf("line of %d columns: %q", len(line), line)
					}
				}
				return b[len(m[0]):]
			}
		}
		t.Fatal("message not queued")
		return ""
	}
	bare := "Subject: no ids\r\n\r\nbody\r\n"
	got := send(config.ModeSubmission, bare)
	if !regexp.MustCompile(`^Message-ID: <\S+\.[0-9a-f]{16}@mx\.test>\r\nDate: .+\r\n` + regexp.QuoteMeta(bare) + `$`).MatchString(got) {
		t.Errorf("submission without ids: %q", got)
	}
	full := "Message-ID: <given@example.com>\r\nDATE: Mon, 02 Jan 2006 15:04:05 +0000\r\nSubject: ids\r\n\r\nbody\r\n"
	if got := send(config.ModeSubmission, full); got != full {
		t.Errorf("submission with ids changed: %q", got)
	}
	if got := send(config.ModeRelay, bare); got != bare {
		t.Errorf("relay listener added fields: %q", got)
	}
}

// patternReader generates n bytes of 8-bit text lines, dot-heavy, without
// holding them in memory.
type patternReader struct {
	n, off int64
}

const patternLine = ".dot \xe2\x82\xac 8-bit line with a leading dot and some padding text...\r\n"

func (p *patternReader) Read(b []byte) (int, error) {
	if p.off >= p.n {
		return 0, io.EOF
	}
	const line = patternLine
	i := 0
	for i < len(b) && p.off < p.n {
		b[i] = line[p.off%int64(len(line))]
		i++
		p.off++
	}
	return i, nil
}

func TestLargeMessage_ByteExactMemoryBounded(t *testing.T) {
	const size = 20 << 20
	ts := startServer(t, trustLoopback, func(c *config.Config) { c.Policy.MaxMessageSize = 30 << 20 })
	c, err := smtp.Dial(ts.addr[config.ModeRelay])
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	header := "Subject: big\r\n\r\n"
	n := int64(size - len(header))
	n -= n % int64(len(patternLine)) // whole lines
	if err := c.SendMail("a@example.com", []string{"b@example.net"},
		io.MultiReader(strings.NewReader(header), &patternReader{n: n})); err != nil {
		t.Fatal(err)
	}
	runtime.ReadMemStats(&after)
	// Client and server both run here: neither may hold the message, so
	// all allocations together stay well below its size.
	t.Logf("allocated %d bytes in total for a %d-byte message", after.TotalAlloc-before.TotalAlloc, size)
	if alloc := after.TotalAlloc - before.TotalAlloc; alloc > 4<<20 {
		t.Errorf("allocated %d bytes for a %d-byte message", alloc, size)
	}
	want := sha256.New()
	io.Copy(want, io.MultiReader(strings.NewReader(header), &patternReader{n: n}))
	for _, body := range ts.queued() {
		got := sha256.Sum256([]byte(stripReceived(t, body)))
		if fmt.Sprintf("%x", got) != fmt.Sprintf("%x", want.Sum(nil)) {
			t.Fatal("body differs")
		}
	}
}

func TestIPv6Listener(t *testing.T) {
	ln, err := net.Listen("tcp", "[::1]:0")
	if err != nil {
		t.Skip("no IPv6 loopback:", err)
	}
	ts := startServer(t, trustLoopback)
	go ts.s.Serve(ln, config.Listener{Address: "[::1]:0", Mode: config.ModeRelay})
	d := dial(t, ln.Addr().String())
	d.script("S: 220 ", "C: EHLO client.test", "S: 250 ",
		"C: MAIL FROM:<a@example.com>", "S: 250 ",
		"C: RCPT TO:<b@[IPv6:2001:db8::1]>", "S: 250 ",
		"C: DATA", "S: 354 ", "C: hi", "C: .", "S: 250 ")
	envs := ts.q.List()
	if len(envs) != 1 || envs[0].ClientAddr != "::1" {
		t.Fatalf("queued %+v", envs)
	}
	for _, body := range ts.queued() {
		// RFC 5321 §4.1.3: an IPv6 address literal carries its tag.
		if !strings.HasPrefix(body, "Received: from client.test ([IPv6:::1])\r\n") {
			t.Errorf("Received field %q", body[:min(len(body), 60)])
		}
	}
}

// TestDataWithoutHeader_BodyStartsAfterOurFields: a continuation line or
// text at the start of the data must not join the Received field (or the
// fields added on submission): an empty line goes in between, as Postfix's
// cleanup does.
func TestDataWithoutHeader_BodyStartsAfterOurFields(t *testing.T) {
	ts := startServer(t, trustLoopback)
	cases := []struct{ name, data, wantAfterOurs string }{
		{"continuation line", " (from trusted.example [10.0.0.1])\r\nSubject: x\r\n\r\nbody\r\n",
			"\r\n (from trusted.example [10.0.0.1])\r\nSubject: x\r\n\r\nbody\r\n"},
		{"text", "just text, no header\r\n", "\r\njust text, no header\r\n"},
		{"mbox From line", "From someone Mon Jan  1 00:00:00 2026\r\nSubject: x\r\n\r\nb\r\n",
			"\r\nFrom someone Mon Jan  1 00:00:00 2026\r\nSubject: x\r\n\r\nb\r\n"},
		{"a header", "Subject: x\r\n\r\nbody\r\n", "Subject: x\r\n\r\nbody\r\n"},
		{"empty header", "\r\nbody\r\n", "\r\nbody\r\n"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			before := map[string]bool{}
			for _, e := range ts.q.List() {
				before[e.ID] = true
			}
			d := inData(t, ts.addr[config.ModeRelay])
			d.write(tc.data + ".\r\n")
			d.expect("250 ")
			for env, body := range ts.queued() {
				if before[env.ID] {
					continue
				}
				// Our Received field ends with its date line.
				m := regexp.MustCompile(`\t[A-Z][a-z]{2}, \d{2} [A-Z][a-z]{2} \d{4} [\d:]{8} [+-]\d{4}\r\n`).FindStringIndex(body)
				if m == nil {
					t.Fatalf("no Received date in %q", body)
				}
				if got := body[m[1]:]; got != tc.wantAfterOurs {
					t.Errorf("after the Received field: %q, want %q", got, tc.wantAfterOurs)
				}
			}
		})
	}
}

// A client that announces BDAT 100 LAST, sends less and closes has not sent
// a message: nothing is queued, and the refusal is logged as aborted
// (go-smtp took the EOF for the end of the chunk and queued a truncated
// message).
func TestBDAT_LastChunkCutShort_NothingQueued(t *testing.T) {
	t.Parallel()
	ts := startServer(t, trustLoopback)
	c, err := net.Dial("tcp", ts.addr[config.ModeRelay])
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	br := bufio.NewReader(c)
	readReply := func() string {
		t.Helper()
		var last string
		for {
			l, err := br.ReadString('\n')
			if err != nil {
				t.Fatalf("reading a reply: %v", err)
			}
			last = l
			if len(l) < 4 || l[3] != '-' {
				return last
			}
		}
	}
	readReply()
	for _, cmd := range []string{"EHLO client.test", "MAIL FROM:<a@example.com>", "RCPT TO:<b@example.net>"} {
		fmt.Fprintf(c, "%s\r\n", cmd)
		if r := readReply(); !strings.HasPrefix(r, "250") {
			t.Fatalf("%s: %q", cmd, r)
		}
	}
	io.WriteString(c, "BDAT 100 LAST\r\nSubject: x\r\n\r\nonly part")
	c.(*net.TCPConn).CloseWrite()
	rest, _ := io.ReadAll(br)
	if strings.Contains(string(rest), "250") {
		t.Errorf("a cut-short BDAT LAST got %q", rest)
	}
	ts.logs.WaitLine(5*time.Second, "message refused")
	if !strings.Contains(ts.logs.String(), "reason=aborted") {
		t.Errorf("no aborted refusal logged:\n%s", ts.logs.String())
	}
	if n := len(ts.q.List()); n != 0 {
		t.Errorf("%d message(s) queued from a cut-short chunk", n)
	}
}

// A message that already carries 50 Received fields (51 with ours) is a
// loop: refused at the end of DATA with 554 5.4.6 (Postfix's
// hopcount_limit), so no bounce goes to a sender that may be forged; 49 is
// accepted.
func TestData_TooManyHopsRefused(t *testing.T) {
	t.Parallel()
	ts := startServer(t, trustLoopback)
	for _, c := range []struct {
		hops int
		want string
	}{{49, "250 "}, {50, "554 5.4.6 "}} {
		var b strings.Builder
		for i := range c.hops {
			fmt.Fprintf(&b, "Received: from hop%d.example by hop%d.example;\r\n\tTue, 1 Jan 2026 00:00:00 +0000\r\n", i, i+1)
		}
		b.WriteString("Subject: loop\r\n\r\nbody\r\n")
		d := inData(t, ts.addr[config.ModeRelay])
		d.write(b.String() + ".\r\n")
		d.expect(c.want)
	}
	if n := len(ts.q.List()); n != 1 {
		t.Errorf("%d messages queued, want only the one with 49 hops", n)
	}
	if !strings.Contains(ts.logs.String(), "reason=mail_loop") {
		t.Errorf("the refusal is not logged as reason=mail_loop")
	}
}

// A transaction with SMTPUTF8 is "with UTF8SMTP" in the Received field
// (RFC 6531 §3.7.3); STARTTLS with a parameter is a syntax error (RFC 3207).
func TestReceived_UTF8SMTP_AndSTARTTLSSyntax(t *testing.T) {
	t.Parallel()
	ts := startServer(t, trustLoopback)
	d := dial(t, ts.addr[config.ModeRelay])
	d.script("S: 220 ", "C: EHLO client.test", "S: 250 ",
		"C: STARTTLS now", "S: 501 5.5.4 ",
		"C: MAIL FROM:<jörg@example.com> SMTPUTF8", "S: 250 ",
		"C: RCPT TO:<b@example.net>", "S: 250 ", "C: DATA", "S: 354 ")
	d.write("Subject: ü\r\n\r\nbody\r\n.\r\n")
	d.expect("250 ")
	for _, body := range ts.queued() {
		if !strings.Contains(body, "(mailhop) with UTF8SMTP id ") {
			t.Errorf("Received field: %q", body[:min(len(body), 200)])
		}
	}
}

// The Received field's "for" gives a recipient domain as A-labels when only
// the domain is not ASCII, so the relay's own trace field does not make the
// header need SMTPUTF8 at a next hop that lacks it (the domains of the
// envelope are sent as A-labels there).
func TestReceived_ForIDNDomainAsALabels(t *testing.T) {
	t.Parallel()
	ts := startServer(t, trustLoopback)
	d := dial(t, ts.addr[config.ModeRelay])
	d.script("S: 220 ", "C: EHLO client.test", "S: 250 ",
		"C: MAIL FROM:<a@example.com> SMTPUTF8", "S: 250 ",
		"C: RCPT TO:<hans@münchen.example>", "S: 250 ", "C: DATA", "S: 354 ")
	d.write("Subject: x\r\n\r\nbody\r\n.\r\n")
	d.expect("250 ")
	d.script("C: MAIL FROM:<a@example.com> SMTPUTF8", "S: 250 ",
		"C: RCPT TO:<jürgen@münchen.example>", "S: 250 ", "C: DATA", "S: 354 ")
	d.write("Subject: x\r\n\r\nbody\r\n.\r\n")
	d.expect("250 ")
	got := map[string]bool{}
	for _, body := range ts.queued() {
		_, rest, _ := strings.Cut(body, "\tfor <")
		addr, _, _ := strings.Cut(rest, ">")
		got[addr] = true
	}
	if !got["hans@xn--mnchen-3ya.example"] || !got["jürgen@münchen.example"] {
		t.Errorf("for clauses: %v", got)
	}
}

// A client that leaves between BDAT chunks (after a complete chunk that
// is not the last) aborted its message: logged as aborted, not as a queue
// error, and nothing is queued.
func TestBDAT_LeftBetweenChunks_Aborted(t *testing.T) {
	t.Parallel()
	ts := startServer(t, trustLoopback)
	d := dial(t, ts.addr[config.ModeRelay])
	d.script("S: 220 ", "C: EHLO client.test", "S: 250 ",
		"C: MAIL FROM:<a@example.com>", "S: 250 ",
		"C: RCPT TO:<b@example.net>", "S: 250 ")
	d.write("BDAT 12\r\nSubject: x\r\n")
	d.expect("250 ")
	d.c.Close()
	ts.logs.WaitLine(5*time.Second, "message refused")
	if logs := ts.logs.String(); !strings.Contains(logs, "reason=aborted") || strings.Contains(logs, "reason=queue_error") {
		t.Errorf("want one aborted refusal, no queue error:\n%s", logs)
	}
	if n := len(ts.q.List()); n != 0 {
		t.Errorf("%d message(s) queued", n)
	}
}

// Python's smtplib send_message, given mail_options=["SMTPUTF8"] for a UTF-8
// address, sends SMTPUTF8 (and BODY=8BITMIME) twice: the same parameter
// again is taken once, as Postfix takes it, where it was refused with
// "501 5.5.4 Duplicate MAIL parameter SMTPUTF8". A DSN parameter, or one
// repeated with another value, is still refused.
func TestMail_SameParameterTwiceTakenOnce(t *testing.T) {
	t.Parallel()
	ts := startServer(t, trustLoopback)
	d := dial(t, ts.addr[config.ModeRelay])
	d.script("S: 220 ", "C: EHLO client.test", "S: 250 ",
		"C: MAIL FROM:<jörg@example.com> SMTPUTF8 BODY=8BITMIME SMTPUTF8 BODY=8BITMIME", "S: 250 ",
		"C: RSET", "S: 250 ",
		"C: MAIL FROM:<a@example.com> BODY=8BITMIME BODY=7BIT", "S: 501 5.5.4 ",
		"C: MAIL FROM:<a@example.com> RET=HDRS RET=HDRS", "S: 501 5.5.4 ",
		"C: MAIL FROM:<jörg@example.com> SMTPUTF8 SMTPUTF8", "S: 250 ",
		"C: RCPT TO:<b@example.net>", "S: 250 ", "C: DATA", "S: 354 ")
	d.write("Subject: ü\r\n\r\nbody\r\n.\r\n")
	d.expect("250 ")
	if n := len(ts.queued()); n != 1 {
		t.Errorf("%d messages queued, want 1", n)
	}
}
