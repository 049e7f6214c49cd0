package smtp

// mailhop patch tests: the dot-stuffing writer and StartTransaction.

import (
	"bufio"
	"bytes"
	"errors"
	"io"
	"net"
	"strings"
	"testing"
	"time"
)

func TestDotWriter(t *testing.T) {
	for _, tc := range []struct {
		chunks []string
		want   string
	}{
		{[]string{"a\r\nb\r\n"}, "a\r\nb\r\n.\r\n"},
		{[]string{".a\r\n..b\r\n.\r\n"}, "..a\r\n...b\r\n..\r\n.\r\n"},
		{[]string{"no final newline"}, "no final newline\r\n.\r\n"},
		{[]string{"bare\nlf\n.x"}, "bare\r\nlf\r\n..x\r\n.\r\n"},
		{[]string{"bare\rcr\r"}, "bare\r\ncr\r\n.\r\n"},
		{[]string{"split\r", "\n.dot\r", "\nend\r\n"}, "split\r\n..dot\r\nend\r\n.\r\n"},
		{[]string{"x\r", "\r\n"}, "x\r\n\r\n.\r\n"},
		{[]string{"", "a", "", "\r\n", "."}, "a\r\n..\r\n.\r\n"},
		{nil, ".\r\n"},
	} {
		var out bytes.Buffer
		bw := bufio.NewWriter(&out)
		d := newDotWriter(bw)
		for _, c := range tc.chunks {
			if n, err := d.Write([]byte(c)); err != nil || n != len(c) {
				t.Fatalf("Write(%q) = %d, %v", c, n, err)
			}
		}
		if err := d.Close(); err != nil {
			t.Fatal(err)
		}
		if out.String() != tc.want {
			t.Errorf("%q: got %q, want %q", tc.chunks, out.String(), tc.want)
		}
	}
}

// pipeServer is a minimal scripted SMTP server: it reads commands and
// answers each from replies, recording what it got. A key is a command verb,
// "." for the end of data, or for RCPT a part of the address holding "@";
// a command without one gets 250 (DATA 354).
func pipeServer(t *testing.T, ext string, replies map[string]string) (net.Conn, *bytes.Buffer, chan struct{}) {
	t.Helper()
	client, server := net.Pipe()
	got := &bytes.Buffer{}
	done := make(chan struct{})
	go func() {
		defer close(done)
		defer server.Close()
		r := bufio.NewReader(server)
		io.WriteString(server, "220 hi\r\n")
		inData := false
		for {
			line, err := r.ReadString('\n')
			if err != nil {
				return
			}
			got.WriteString(line)
			if inData {
				if line == ".\r\n" {
					inData = false
					rep := replies["."]
					if rep == "" {
						rep = "250 2.0.0 queued\r\n"
					}
					io.WriteString(server, rep)
				}
				continue
			}
			verb := strings.ToUpper(strings.Fields(line)[0])
			switch {
			case verb == "EHLO":
				io.WriteString(server, "250-hi\r\n"+ext+"250 8BITMIME\r\n")
			case verb == "QUIT":
				io.WriteString(server, "221 bye\r\n")
				return
			case verb == "RCPT":
				rep := "250 ok\r\n"
				for k, v := range replies {
					// Keys naming a recipient hold "@"; the others
					// are verbs ("DATA", "MAIL", "." for the end of data).
					if strings.Contains(k, "@") && strings.Contains(line, k) {
						rep = v
					}
				}
				io.WriteString(server, rep)
			case verb == "DATA":
				rep := replies["DATA"]
				if rep == "" {
					rep = "354 go\r\n"
				}
				io.WriteString(server, rep)
				inData = strings.HasPrefix(rep, "3")
			case replies[verb] != "":
				io.WriteString(server, replies[verb])
			default:
				io.WriteString(server, "250 ok\r\n")
			}
		}
	}()
	return client, got, done
}

func TestStartTransaction(t *testing.T) {
	for _, pipelining := range []bool{true, false} {
		ext := ""
		if pipelining {
			ext = "250-PIPELINING\r\n"
		}
		conn, got, done := pipeServer(t, ext, map[string]string{"bad@": "550 5.1.1 no such user\r\n", "later@": "451 4.2.0 later\r\n"})
		c := NewClient(conn)
		if err := c.Hello("me.test"); err != nil {
			t.Fatal(err)
		}
		rep, dc, err := c.StartTransaction(true, "a@x.test", nil, []string{"ok@y.test", "bad@y.test", "later@y.test"}, nil)
		if err != nil || dc == nil {
			t.Fatalf("pipelining=%v: %v %+v", pipelining, err, rep)
		}
		if rep.Reset != nil || rep.Mail != nil || rep.Rcpt[0] != nil || rep.Data != nil {
			t.Fatalf("replies: %+v", rep)
		}
		if se, ok := rep.Rcpt[1].(*SMTPError); !ok || se.Code != 550 {
			t.Fatalf("bad@: %v", rep.Rcpt[1])
		}
		if se, ok := rep.Rcpt[2].(*SMTPError); !ok || se.Code != 451 {
			t.Fatalf("later@: %v", rep.Rcpt[2])
		}
		io.WriteString(dc, "Subject: x\r\n\r\n.hi\r\n")
		resp, err := dc.CloseWithResponse()
		if err != nil || !strings.Contains(resp.StatusText, "queued") {
			t.Fatalf("end of data: %v %v", resp, err)
		}
		// The connection is reused without a second EHLO.
		rep, dc, err = c.StartTransaction(true, "a@x.test", nil, []string{"bad@y.test"}, nil)
		if err != nil || dc != nil || rep.Data == nil {
			t.Fatalf("all recipients refused: %v %v %+v", err, dc, rep)
		}
		c.Quit()
		<-done
		if n := strings.Count(got.String(), "EHLO"); n != 1 {
			t.Errorf("pipelining=%v: %d EHLO, want 1:\n%s", pipelining, n, got)
		}
		if !strings.Contains(got.String(), "\r\n..hi\r\n.\r\n") {
			t.Errorf("body not dot-stuffed:\n%s", got)
		}
	}
}

// TestStartTransaction_UnlistedCodes: replies are read by their first
// digit (RFC 5321 §4.2, mailhop patch): 2xx codes RFC 5321 does not list
// accept RSET, MAIL, RCPT and the end of data, a 3xx other than 354 asks for
// the body; upstream took only 250 (25x for RCPT) and 354.
func TestStartTransaction_UnlistedCodes(t *testing.T) {
	for _, pipelining := range []bool{true, false} {
		ext := ""
		if pipelining {
			ext = "250-PIPELINING\r\n"
		}
		conn, got, done := pipeServer(t, ext, map[string]string{"RSET": "299 reset\r\n", "MAIL": "253 2.1.0 sender\r\n",
			"odd@": "299 2.1.5 recipient\r\n", "DATA": "355 body please\r\n", ".": "259 2.0.0 kept\r\n"})
		c := NewClient(conn)
		rep, dc, err := c.StartTransaction(true, "a@x.test", nil, []string{"odd@y.test"}, nil)
		if err != nil || dc == nil || rep.Reset != nil || rep.Mail != nil || rep.Rcpt[0] != nil || rep.Data != nil {
			t.Fatalf("pipelining=%v: err %v, DataCommand %v, replies %+v", pipelining, err, dc, rep)
		}
		io.WriteString(dc, "Subject: x\r\n\r\nhi\r\n")
		resp, err := dc.CloseWithResponse()
		if err != nil || resp.StatusText != "2.0.0 kept" {
			t.Errorf("pipelining=%v: end of data %+v %v", pipelining, resp, err)
		}
		c.Quit()
		<-done
		if !strings.Contains(got.String(), "\r\nhi\r\n.\r\n") {
			t.Errorf("pipelining=%v: body not sent:\n%s", pipelining, got)
		}
	}
}

// TestStartTransaction_DataAnswered250: a server that answers DATA with 250
// instead of 354 has not taken the message: the DATA reply is a temporary
// protocol error (451 4.5.0), and no DataCommand is returned (mailhop
// patch; upstream's error carried the 250, which looked like success).
func TestStartTransaction_DataAnswered250(t *testing.T) {
	for _, pipelining := range []bool{true, false} {
		ext := ""
		if pipelining {
			ext = "250-PIPELINING\r\n"
		}
		conn, _, done := pipeServer(t, ext, map[string]string{"DATA": "250 2.0.0 ok I guess\r\n"})
		c := NewClient(conn)
		rep, dc, err := c.StartTransaction(false, "a@x.test", nil, []string{"ok@y.test"}, nil)
		if err != nil || dc != nil {
			t.Fatalf("pipelining=%v: err %v, DataCommand %v", pipelining, err, dc)
		}
		var se *SMTPError
		if !errors.As(rep.Data, &se) || se.Code != 451 || se.EnhancedCode != (EnhancedCode{4, 5, 0}) ||
			!strings.Contains(se.Message, "250") {
			t.Errorf("pipelining=%v: DATA reply %#v, want 451 4.5.0 naming the 250", pipelining, rep.Data)
		}
		if !IsProtocolError(rep.Data) {
			t.Errorf("pipelining=%v: IsProtocolError(%v) = false", pipelining, rep.Data)
		}
		c.Close()
		<-done
	}
}

// TestReadReply: replies as RFC 5321 §4.2 allows them (mailhop patch).
func TestReadReply(t *testing.T) {
	for _, tc := range []struct {
		in     string
		expect int
		code   int
		msg    string
		err    string // part of the error text; "" for none
	}{
		{"250\r\n", 250, 250, "", ""},
		{"550\r\n", 250, 550, "", "550"},
		{"250-first\r\n250 second\r\n", 250, 250, "first\nsecond", ""},
		{"250-first\r\n251 second\r\n", 250, 0, "", "different codes"},
		{"2x0 what\r\n", 250, 0, "", "malformed reply"},
		{"250_ok\r\n", 250, 0, "", "malformed reply"},
		{"354 go ahead\r\n", 250, 354, "", "protocol error"},
		{"251 forwarded\r\n", 25, 251, "forwarded", ""},
		// A line cut short by the end of the connection (or a timeout)
		// is no reply: its code may be all that came.
		{"250 2.0.0 queued as 123", 250, 0, "", "unexpected EOF"},
		{"250-first\r\n250 sec", 250, 0, "", "unexpected EOF"},
		{"250", 250, 0, "", "unexpected EOF"},
	} {
		pr, pw := io.Pipe()
		go func() { pw.Write([]byte("220 hi\r\n" + tc.in)); pw.Close() }()
		var fake faker
		fake.ReadWriter = struct {
			io.Reader
			io.Writer
		}{pr, io.Discard}
		c := NewClient(fake)
		if _, _, err := c.readResponse(220); err != nil {
			t.Fatalf("greeting: %v", err)
		}
		code, msg, err := c.readResponse(tc.expect)
		if tc.err == "" && (err != nil || code != tc.code || msg != tc.msg) {
			t.Errorf("%q: %d %q %v; want %d %q", tc.in, code, msg, err, tc.code, tc.msg)
		}
		if tc.err != "" && (err == nil || !strings.Contains(err.Error(), tc.err)) {
			t.Errorf("%q: error %v, want one containing %q", tc.in, err, tc.err)
		}
	}
}

// A multi-line reply without end keeps at most maxReplyText octets of text
// and the client stays in step: a hostile server's endless EHLO reply grew
// the client's memory by what it sent (200 MB sent, 450 MB resident).
func TestReadReply_EndlessMultiline(t *testing.T) {
	pr, pw := io.Pipe()
	go func() {
		pw.Write([]byte("220 hi\r\n"))
		line := []byte("250-" + strings.Repeat("x", 996) + "\r\n")
		for i := 0; i < 20000; i++ { // 20 MB
			pw.Write(line)
		}
		pw.Write([]byte("250 last\r\n251 next\r\n"))
		pw.Close()
	}()
	var fake faker
	fake.ReadWriter = struct {
		io.Reader
		io.Writer
	}{pr, io.Discard}
	c := NewClient(fake)
	if _, _, err := c.readResponse(220); err != nil {
		t.Fatalf("greeting: %v", err)
	}
	code, msg, err := c.readResponse(250)
	if err != nil || code != 250 {
		t.Fatalf("reply: %d %v", code, err)
	}
	if max := 66 << 10; len(msg) > max { // maxReplyText and a line
		t.Fatalf("kept %d octets of reply text, want at most %d", len(msg), max)
	}
	if code, msg, err := c.readResponse(25); err != nil || code != 251 || msg != "next" {
		t.Fatalf("next reply: %d %q %v; want 251 next", code, msg, err)
	}
}

// EHLO keywords are not case sensitive (RFC 5321 §2.4): a server that
// announces "size 100" and "pipelining" has SIZE and PIPELINING; they were
// ignored (no size check, no pipelining, no STARTTLS for "starttls").
func TestClientEhloKeywordsCaseInsensitive(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		c.Write([]byte("220 hi\r\n"))
		r := bufio.NewReader(c)
		if _, err := r.ReadString('\n'); err != nil {
			return
		}
		c.Write([]byte("250-mx\r\n250-pipelining\r\n250-StartTLS\r\n250 size 100\r\n"))
		r.ReadString('\n')
	}()
	c, err := Dial(ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := c.Hello("client"); err != nil {
		t.Fatal(err)
	}
	for _, ext := range []string{"PIPELINING", "STARTTLS", "SIZE"} {
		if ok, _ := c.Extension(ext); !ok {
			t.Errorf("%s not found in a lower-case EHLO reply", ext)
		}
	}
	if _, v := c.Extension("size"); v != "100" {
		t.Errorf("SIZE parameter %q, want 100", v)
	}
}

// An rfc822 ORCPT whose quoted local part holds a space goes on in xtext
// (RFC 3461 §4.2); it was refused as an illegal address.
func TestRcptCmd_ORCPTWithSpace(t *testing.T) {
	c := &Client{ext: map[string]string{"DSN": ""}}
	cmd, err := c.rcptCmd("x@example.org", &RcptOptions{
		OriginalRecipientType: DSNAddressTypeRFC822,
		OriginalRecipient:     `"a b"@example.org`,
	})
	if want := `RCPT TO:<x@example.org> ORCPT=RFC822;"a+20b"@example.org`; err != nil || cmd != want {
		t.Fatalf("rcptCmd = %q, %v; want %q", cmd, err, want)
	}
	if _, err := c.rcptCmd("x@example.org", &RcptOptions{
		OriginalRecipientType: DSNAddressTypeRFC822, OriginalRecipient: "ü@example.org",
	}); err == nil {
		t.Error("a non-ASCII rfc822 ORCPT was accepted")
	}
}

// A server that answers RCPT twice ("250", then "550") is out of step: the
// transaction fails with errOutOfStep before the next command instead of
// taking the extra 550 for the reply to DATA (a bounce of mail the server
// never refused).
func TestStartTransaction_TwoRepliesToRcpt(t *testing.T) {
	conn, got, done := pipeServer(t, "", map[string]string{"ok@": "250 ok\r\n550 5.7.1 stale\r\n"})
	c := NewClient(conn)
	c.CommandTimeout = 5 * time.Second // out of step, net.Pipe's writes can block both ends
	rep, dc, err := c.StartTransaction(false, "a@x.test", nil, []string{"ok@y.test", "b@y.test"}, nil)
	if err == nil || !strings.Contains(err.Error(), "out of step") || dc != nil {
		t.Fatalf("err %v, DataCommand %v, replies %+v; want errOutOfStep", err, dc, rep)
	}
	if rep.RcptRead != 1 || rep.Rcpt[0] != nil {
		t.Errorf("replies %+v, want the first RCPT's 250 read and no more", rep)
	}
	c.Close()
	<-done
	if strings.Contains(got.String(), "b@y.test") {
		t.Errorf("a command went out after the extra reply:\n%s", got)
	}
}

// The MAIL command carries the BODY that MailOptions asks for (mailhop
// patch): BODY=7BIT for 7-bit mail, not BODY=8BITMIME whenever the server
// offers it; no BODY to a server without 8BITMIME.
func TestMailBody(t *testing.T) {
	for _, tc := range []struct {
		ext  string
		body BodyType
		want string // "" : an error
	}{
		{"250-8BITMIME\r\n", "", "MAIL FROM:<a@x.test> BODY=8BITMIME"},
		{"250-8BITMIME\r\n", Body7Bit, "MAIL FROM:<a@x.test> BODY=7BIT"},
		{"250-8BITMIME\r\n", Body8BitMIME, "MAIL FROM:<a@x.test> BODY=8BITMIME"},
		{"250-8BITMIME\r\n", BodyBinaryMIME, ""},
		{"250-8BITMIME\r\n250-BINARYMIME\r\n", BodyBinaryMIME, "MAIL FROM:<a@x.test> BODY=BINARYMIME"},
		{"", "", "MAIL FROM:<a@x.test>"},
		{"", Body7Bit, "MAIL FROM:<a@x.test>"},
		{"", Body8BitMIME, ""},
		{"250-8BITMIME\r\n", "RABBIT", ""},
	} {
		c := &Client{ext: make(map[string]string), didHello: true}
		for _, l := range strings.Split(strings.TrimSpace(tc.ext), "\r\n") {
			if l != "" {
				c.ext[strings.TrimPrefix(l, "250-")] = ""
			}
		}
		got, err := c.mailCmd("a@x.test", &MailOptions{Body: tc.body})
		if tc.want == "" {
			if err == nil {
				t.Errorf("%q %q: %q, want an error", tc.ext, tc.body, got)
			}
			continue
		}
		if err != nil || got != tc.want {
			t.Errorf("%q %q: %q %v, want %q", tc.ext, tc.body, got, err, tc.want)
		}
	}
}

// TestStartTransaction_NonPositiveClassToRcpt: reading by the first digit
// accepts only the class asked for: a 1xx or 3xx to RCPT, or a 3xx to MAIL,
// is a protocol error (451 4.5.0), never an accepted recipient or sender.
func TestStartTransaction_NonPositiveClassToRcpt(t *testing.T) {
	for _, pipelining := range []bool{true, false} {
		ext := ""
		if pipelining {
			ext = "250-PIPELINING\r\n"
		}
		for _, reply := range []string{"150 wait\r\n", "354 go on\r\n"} {
			conn, _, done := pipeServer(t, ext, map[string]string{"odd@": reply})
			c := NewClient(conn)
			rep, _, err := c.StartTransaction(false, "a@x.test", nil, []string{"odd@y.test", "ok@y.test"}, nil)
			if err != nil {
				t.Fatalf("pipelining=%v %q: %v", pipelining, reply, err)
			}
			if !IsProtocolError(rep.Rcpt[0]) || rep.Rcpt[1] != nil {
				t.Errorf("pipelining=%v, RCPT answered %q: replies %v, %v; want a protocol error and an accepted one",
					pipelining, strings.TrimSpace(reply), rep.Rcpt[0], rep.Rcpt[1])
			}
			c.Close()
			<-done
		}
		conn, _, done := pipeServer(t, ext, map[string]string{"MAIL": "354 go on\r\n"})
		c := NewClient(conn)
		rep, dc, _ := c.StartTransaction(false, "a@x.test", nil, []string{"ok@y.test"}, nil)
		if !IsProtocolError(rep.Mail) || dc != nil {
			t.Errorf("pipelining=%v, MAIL answered 354: %v (DataCommand %v), want a protocol error", pipelining, rep.Mail, dc)
		}
		c.Close()
		<-done
	}
}
