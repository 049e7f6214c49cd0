package dsn

import (
	"bytes"
	"io"
	"strings"
	"testing"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/mailhop/mailhop/dnsmx"
	"github.com/mailhop/mailhop/queue"
	"github.com/mailhop/mailhop/relay/mime7bit"
	"github.com/mailhop/mailhop/relay/smtperr"
)

// memBody is a queue.Body over bytes.
type memBody struct{ *bytes.Reader }

func (memBody) Close() error { return nil }

func newMemBody(s string) memBody { return memBody{bytes.NewReader([]byte(s))} }

// testBody is the message the reports are about.
const testBody = "From: Sender <sender@sender.test>\r\n" +
	"Subject: hello\r\n" +
	"\r\n" +
	"Hello.\r\n"

func buildTestDSN(t testing.TB, action string, env *queue.Envelope, body string) []byte {
	t.Helper()
	var rcpts []Outcome
	for i := range env.Recipients {
		rcpts = append(rcpts, Outcome{Rcpt: &env.Recipients[i], Action: action,
			Reply: &smtperr.Error{Code: 550, Enhanced: "5.1.1", Msg: "no\r\nsuch user"}, Remote: "mx.example.test"})
	}
	m, err := Build(&Input{Hostname: "relay.test", Env: env, Body: newMemBody(body), Outcomes: rcpts, Now: time.Unix(1700000000, 0)})
	if err != nil {
		t.Fatal(err)
	}
	out, err := io.ReadAll(m.Reader())
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func TestBuildDSN_RoundTrip(t *testing.T) {
	env := &queue.Envelope{ID: "q1", From: "s@sender.test", EnvID: "E1", Arrived: time.Unix(1699990000, 0),
		Recipients: []queue.Recipient{{Address: "a@example.test", ORCPT: "rfc822;A@example.test"}, {Address: "b@example.test"}}}
	raw := buildTestDSN(t, "failed", env, testBody)
	if bytes.Contains(bytes.ReplaceAll(raw, []byte("\r\n"), nil), []byte("\n")) || bytes.Contains(bytes.ReplaceAll(raw, []byte("\r\n"), nil), []byte("\r")) {
		t.Fatal("bare CR or LF in the report")
	}
	d, err := Parse(bytes.NewReader(raw))
	if err != nil {
		t.Fatalf("%v\n%s", err, raw)
	}
	if len(d.Recipients) != 2 || d.Recipients[0].OriginalRecipient != "rfc822; A@example.test" || d.Recipients[1].OriginalRecipient != "" {
		t.Errorf("recipients: %+v", d.Recipients)
	}
	if d.Recipients[0].DiagnosticCode != "smtp; 550 5.1.1 no  such user" {
		t.Errorf("diagnostic (control characters must be gone): %q", d.Recipients[0].DiagnosticCode)
	}
	if d.EnvelopeID != "E1" || !strings.Contains(d.ArrivalDate, "Nov 2023") {
		t.Errorf("per-message: %q %q", d.EnvelopeID, d.ArrivalDate)
	}
	if d.Header.Get("Subject") != "Undelivered Mail Returned to Sender" || d.Header.Get("Message-Id") == "" || d.Header.Get("Date") == "" {
		t.Errorf("header: %v", d.Header)
	}
}

func TestParseDSN_Rejects(t *testing.T) {
	env := &queue.Envelope{ID: "q1", From: "s@sender.test", Recipients: []queue.Recipient{{Address: "a@example.test"}}}
	good := string(buildTestDSN(t, "failed", env, testBody))
	for name, bad := range map[string]string{
		"not a report":         strings.Replace(good, "multipart/report", "multipart/mixed", 1),
		"wrong report type":    strings.Replace(good, "report-type=delivery-status", "report-type=disposition-notification", 1),
		"no reporting MTA":     strings.Replace(good, "Reporting-MTA: dns; relay.test\r\n", "", 1),
		"untyped final rcpt":   strings.Replace(good, "Final-Recipient: rfc822; ", "Final-Recipient: ", 1),
		"bad action":           strings.Replace(good, "Action: failed", "Action: exploded", 1),
		"bad status":           strings.Replace(good, "Status: 5.1.1", "Status: 9.9", 1),
		"no recipient":         good[:strings.Index(good, "\r\nFinal-Recipient")] + "\r\n\r\n--" + strings.SplitN(good[strings.Index(good, "\r\n--")+4:], "\r\n", 2)[0] + "--\r\n",
		"no status part":       strings.Replace(good, "message/delivery-status", "text/plain", 1),
		"garbage":              "hello",
		"missing content type": "Subject: x\r\n\r\nbody\r\n",
	} {
		if _, err := Parse(strings.NewReader(bad)); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}

func TestBuildDSN_DelayedAndSuccess(t *testing.T) {
	env := &queue.Envelope{ID: "q1", From: "s@sender.test", Ret: "FULL", Recipients: []queue.Recipient{{Address: "a@example.test"}}}
	for action, status := range map[string]string{"delayed": "4.0.0", "relayed": "2.0.0", "delivered": "2.0.0"} {
		d, err := Parse(bytes.NewReader(buildTestDSN(t, action, env, testBody)))
		if err != nil {
			t.Fatalf("%s: %v", action, err)
		}
		// The 550 reply has the wrong class for these actions.
		if r := d.Recipients[0]; r.Action != action || r.Status != status {
			t.Errorf("%s: %+v", action, r)
		}
		if d.OriginalType != "text/rfc822-headers" {
			t.Errorf("%s: RET=FULL must only return the message in failure reports, got %s", action, d.OriginalType)
		}
	}
}

func FuzzParseDSN(f *testing.F) {
	env := &queue.Envelope{ID: "q1", From: "s@sender.test", EnvID: "E", Recipients: []queue.Recipient{{Address: "a@example.test", ORCPT: "rfc822;a@example.test"}}}
	f.Add(buildTestDSN(f, "failed", env, testBody))
	f.Add([]byte("Content-Type: multipart/report; report-type=delivery-status; boundary=b\r\n\r\n--b\r\n\r\nx\r\n--b\r\nContent-Type: message/delivery-status\r\n\r\nReporting-MTA: dns; x\r\n\r\nFinal-Recipient: rfc822; a@b\r\nAction: failed\r\nStatus: 5.0.0\r\n--b--\r\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		d, err := Parse(bytes.NewReader(data))
		if err != nil {
			return
		}
		if d.ReportingMTA == "" || len(d.Recipients) == 0 {
			t.Fatalf("accepted a report without required fields: %+v", d)
		}
		for _, r := range d.Recipients {
			if r.Address() == "" || !smtperr.ValidEnhanced(strings.Fields(r.Status)[0]) {
				t.Fatalf("accepted a bad recipient: %+v", r)
			}
		}
	})
}

// RFC 6533: a report about an SMTPUTF8 message whose addresses or header are
// not ASCII uses message/global-delivery-status (the utf-8 address type in
// raw UTF-8 is allowed only there), message/global-headers for the header
// and message/global for the whole message; an ASCII report keeps the
// RFC 3464 types.
func TestBuildDSN_GlobalTypes(t *testing.T) {
	utf8Body := "From: Jörg <j@sender.test>\r\nSubject: Grüße\r\n\r\nhällo\r\n"
	for _, tc := range []struct {
		name, ret, body, status, orig string
		rcpt                          string
		smtputf8                      bool
	}{
		{"ascii", "", testBody, "message/delivery-status", "text/rfc822-headers", "a@example.test", false},
		{"ascii full", "FULL", testBody, "message/delivery-status", "message/rfc822", "a@example.test", false},
		{"utf-8 rcpt", "", testBody, "message/global-delivery-status", "text/rfc822-headers", "jürgen@example.test", true},
		{"utf-8 header", "", utf8Body, "message/global-delivery-status", "message/global-headers", "a@example.test", true},
		{"utf-8 header full", "FULL", utf8Body, "message/global-delivery-status", "message/global", "a@example.test", true},
	} {
		env := &queue.Envelope{ID: "q1", From: "s@sender.test", SMTPUTF8: tc.smtputf8, Ret: tc.ret,
			Recipients: []queue.Recipient{{Address: tc.rcpt}}}
		raw := buildTestDSN(t, "failed", env, tc.body)
		for _, ct := range []string{tc.status, tc.orig} {
			if !bytes.Contains(raw, []byte("\r\nContent-Type: "+ct+"\r\n")) {
				t.Errorf("%s: no %s part:\n%s", tc.name, ct, raw)
			}
		}
		if _, err := Parse(bytes.NewReader(raw)); err != nil {
			t.Errorf("%s: %v", tc.name, err)
		}
	}
}

// The returned original is labelled 8bit when it holds 8-bit octets (RFC
// 2045 §6.1: a part without Content-Transfer-Encoding is 7bit), as Postfix
// labels it: the header of a message from "Jürgen" went back in an
// unlabelled text/rfc822-headers part (found by the mtainterop black-box
// check), and so did a RET=FULL message with 8-bit text not declared
// BODY=8BITMIME (OpenSMTPD relays such mail without the parameter).
func TestBuildDSN_EightBitOriginalLabelled(t *testing.T) {
	for _, tc := range []struct {
		name, ret, body, orig string
		eight                 bool
	}{
		{"ascii header", "", testBody, "text/rfc822-headers", false},
		{"8-bit header", "", "From: J\xc3\xbcrgen <j@sender.test>\r\nSubject: x\r\n\r\nhi\r\n", "text/rfc822-headers", true},
		{"ascii full", "FULL", testBody, "message/rfc822", false},
		{"8-bit body full", "FULL", "Subject: x\r\n\r\nGr\xc3\xbc\xc3\x9fe\r\n", "message/rfc822", true},
	} {
		env := &queue.Envelope{ID: "q1", From: "s@sender.test", Ret: tc.ret, Recipients: []queue.Recipient{{Address: "a@example.test"}}}
		raw := buildTestDSN(t, "failed", env, tc.body)
		labelled := bytes.Contains(raw, []byte("\r\nContent-Type: "+tc.orig+"\r\nContent-Transfer-Encoding: 8bit\r\n"))
		if labelled != tc.eight || !bytes.Contains(raw, []byte("\r\nContent-Type: "+tc.orig+"\r\n")) {
			t.Errorf("%s: %s part labelled 8bit: %v, want %v:\n%s", tc.name, tc.orig, labelled, tc.eight, raw)
		}
		if _, err := Parse(bytes.NewReader(raw)); err != nil {
			t.Errorf("%s: %v", tc.name, err)
		}
	}
}

// A report about a message sent without SMTPUTF8 is a plain
// message/delivery-status whose fields are ASCII, however the server's
// reply or the ORCPT is written (RFC 6533 §6: the global types are for
// SMTPUTF8 mail; Postfix makes them only then): a non-ASCII character is
// written \x{HEX}, an address of the utf-8 type in its utf-8-addr-xtext
// form (RFC 6533 §3). The explanation for a person keeps the UTF-8.
func TestBuildDSN_ASCIIStatusWithoutSMTPUTF8(t *testing.T) {
	env := &queue.Envelope{ID: "q1", From: "s@sender.test", EnvID: "E1",
		Recipients: []queue.Recipient{{Address: "a@example.test", ORCPT: "utf-8;jürgen+x@bücher.test"}}}
	m, err := Build(&Input{Hostname: "relay.test", Env: env, Body: newMemBody(testBody), Now: time.Unix(1700000000, 0),
		Outcomes: []Outcome{{Rcpt: &env.Recipients[0], Action: "failed", Remote: "mx.example.test",
			Reply: &smtperr.Error{Code: 550, Enhanced: "5.1.1", Msg: "Empfänger unbekannt 😀"}}}})
	if err != nil {
		t.Fatal(err)
	}
	raw, _ := io.ReadAll(m.Reader())
	if !bytes.Contains(raw, []byte("\r\nContent-Type: message/delivery-status\r\n")) {
		t.Fatalf("not a message/delivery-status:\n%s", raw)
	}
	d, err := Parse(bytes.NewReader(raw))
	if err != nil {
		t.Fatalf("%v\n%s", err, raw)
	}
	r := d.Recipients[0]
	if want := `smtp; 550 5.1.1 Empf\x{E4}nger unbekannt \x{1F600}`; r.DiagnosticCode != want {
		t.Errorf("Diagnostic-Code %q, want %q", r.DiagnosticCode, want)
	}
	if want := `utf-8; j\x{FC}rgen\x{2B}x@b\x{FC}cher.test`; r.OriginalRecipient != want {
		t.Errorf("Original-Recipient %q, want %q", r.OriginalRecipient, want)
	}
	status := raw[bytes.Index(raw, []byte("Reporting-MTA:")):bytes.Index(raw, []byte("text/rfc822-headers"))]
	if !mime7bit.IsASCII(status) {
		t.Errorf("8-bit octets in the status part:\n%s", status)
	}
	if !strings.Contains(d.Human, "Empfänger unbekannt") || !strings.Contains(string(raw), "charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n") {
		t.Errorf("explanation:\n%s", raw)
	}
	if m.BodyType != "8BITMIME" {
		t.Errorf("body type %q, want 8BITMIME (the explanation is UTF-8)", m.BodyType)
	}

	// All ASCII: the explanation is labelled 7bit, and the report is 7-bit mail.
	env.Recipients[0].ORCPT = ""
	m, err = Build(&Input{Hostname: "relay.test", Env: env, Body: newMemBody(testBody), Now: time.Unix(1700000000, 0),
		Outcomes: []Outcome{{Rcpt: &env.Recipients[0], Action: "failed", Reply: &smtperr.Error{Code: 550, Enhanced: "5.1.1", Msg: "unknown"}}}})
	if err != nil {
		t.Fatal(err)
	}
	raw, _ = io.ReadAll(m.Reader())
	if !mime7bit.IsASCII(raw) || m.BodyType != "" || !strings.Contains(string(raw), "charset=utf-8\r\nContent-Transfer-Encoding: 7bit\r\n") {
		t.Errorf("an ASCII report (body type %q):\n%s", m.BodyType, raw)
	}
}

// RET=FULL returns a message of at most maxReturnedSize bytes whole; a
// larger one only its header, as Postfix's bounce_size_limit does, so the
// report is not itself too big for the sender's server and lost.
func TestBuildDSN_FullReturnSizeLimit(t *testing.T) {
	env := &queue.Envelope{ID: "q1", From: "s@sender.test", Ret: "FULL", Recipients: []queue.Recipient{{Address: "a@example.test"}}}
	small := "Subject: x\r\n\r\n" + strings.Repeat("y", maxReturnedSize-100) + "\r\n"
	big := "Subject: x\r\n\r\n" + strings.Repeat("y", maxReturnedSize+100) + "\r\n"
	for _, tc := range []struct{ body, want string }{{small, "message/rfc822"}, {big, "text/rfc822-headers"}} {
		raw := buildTestDSN(t, "failed", env, tc.body)
		d, err := Parse(bytes.NewReader(raw))
		if err != nil {
			t.Fatal(err)
		}
		if d.OriginalType != tc.want || len(raw) > 2*maxReturnedSize {
			t.Errorf("%d-byte message returned as %s in %d bytes, want %s", len(tc.body), d.OriginalType, len(raw), tc.want)
		}
	}
}

// A failure the relay decided itself (NXDOMAIN, null MX, a message too big
// for the server's SIZE) has no SMTP reply: its Diagnostic-Code is typed
// X-mailhop, as Postfix writes X-Postfix, instead of left out.
func TestBuildDSN_LocalDiagnostic(t *testing.T) {
	env := &queue.Envelope{ID: "q1", From: "s@sender.test", Recipients: []queue.Recipient{{Address: "a@nx.test"}}}
	m, err := Build(&Input{Hostname: "relay.test", Env: env, Body: newMemBody(testBody), Now: time.Unix(1700000000, 0),
		Outcomes: []Outcome{{Rcpt: &env.Recipients[0], Action: "failed", Reply: smtperr.New(0, "5.1.2", "domain nx.test does not exist (NXDOMAIN)")}}})
	if err != nil {
		t.Fatal(err)
	}
	raw, _ := io.ReadAll(m.Reader())
	d, err := Parse(bytes.NewReader(raw))
	if err != nil {
		t.Fatalf("%v\n%s", err, raw)
	}
	if r := d.Recipients[0]; r.Status != "5.1.2" || r.DiagnosticCode != "X-mailhop; 5.1.2 domain nx.test does not exist (NXDOMAIN)" {
		t.Errorf("status %q, Diagnostic-Code %q", r.Status, r.DiagnosticCode)
	}
}

// FuzzBuildDSN: whatever the addresses, ORCPT, ENVID, remote host and reply
// text a report is made of (they come from clients and servers), it is
// lines of at most 998 octets (RFC 5322 §2.1.1: a next hop may refuse a
// longer one, and a report about a report is never sent) ending in CRLF,
// valid UTF-8, Parse reads it back with the recipient's action, status,
// Remote-MTA, Diagnostic-Code and (for an address the relay takes) address
// as they were built, and the status part of a report about a message
// without SMTPUTF8 is ASCII.
func FuzzBuildDSN(f *testing.F) {
	f.Add("a@example.test", "rfc822;A@example.test", "E1", "mx.example.test", "no\r\nsuch user", "failed")
	f.Add("jörg@exämple.test", "utf-8;jörg@exämple.test", "", "", "x"+strings.Repeat("ü", 600), "delayed")
	f.Add(strings.Repeat("x", 64)+"@"+strings.Repeat("d", 190)+".test", "", "", strings.Repeat("m", 250)+".test", strings.Repeat("r", 2000), "failed")
	f.Add("a@example.test", "utf-8;jörg+x@exämple.test", "E", "mx.example.test", strings.Repeat("ü😀", 300), "failed")
	f.Fuzz(func(t *testing.T, addr, orcpt, envid, remote, reply, action string) {
		switch action {
		case "failed", "delayed", "delivered", "relayed":
		default:
			action = "failed"
		}
		for _, s := range []string{addr, orcpt, envid, reply} {
			if !utf8.ValidString(s) {
				return // what the relay accepts and keeps is UTF-8 (each string: two halves may make a character)
			}
		}
		if !strings.Contains(addr, "@") || strings.ContainsFunc(addr, unicode.IsSpace) {
			return // what the relay accepts and keeps is UTF-8
		}
		if remote != "" && !dnsmx.IsDomainSyntax(remote, false) {
			remote = "mx.example.test" // a name from DNS or the routes
		}
		env := &queue.Envelope{ID: "q1", From: "s@sender.test", EnvID: envid, SMTPUTF8: !mime7bit.IsASCII([]byte(addr)),
			Recipients: []queue.Recipient{{Address: addr, ORCPT: orcpt}}}
		rcpts := []Outcome{{Rcpt: &env.Recipients[0], Action: action, Remote: remote,
			Reply: &smtperr.Error{Code: 550, Enhanced: "5.1.1", Msg: reply}}}
		m, err := Build(&Input{Hostname: "relay.test", Env: env, Body: newMemBody(testBody), Outcomes: rcpts, Now: time.Unix(1700000000, 0)})
		if err != nil {
			t.Fatal(err)
		}
		raw, _ := io.ReadAll(m.Reader())
		for _, l := range bytes.SplitAfter(raw, []byte("\r\n")) {
			text := bytes.TrimSuffix(l, []byte("\r\n"))
			if len(text) > 998 {
				t.Fatalf("line of %d octets: %q", len(text), text[:80])
			}
			if bytes.ContainsAny(text, "\r\n") {
				t.Fatalf("bare CR or LF in %q", text)
			}
		}
		if !utf8.Valid(raw) {
			t.Fatalf("invalid UTF-8 in the report")
		}
		d, err := Parse(bytes.NewReader(raw))
		if err != nil {
			t.Fatalf("Parse: %v\n%s", err, raw)
		}
		// What the report says per recipient reads back as it was built.
		status := map[string]string{"failed": "5.1.1", "delayed": "4.0.0", "delivered": "2.0.0", "relayed": "2.0.0"}[action]
		if len(d.Recipients) != 1 || d.ReportingMTA != "dns; relay.test" {
			t.Fatalf("read back %d recipients, Reporting-MTA %q:\n%s", len(d.Recipients), d.ReportingMTA, raw)
		}
		r := d.Recipients[0]
		if r.Action != action || r.Status != status || !strings.HasPrefix(r.DiagnosticCode, "smtp; 550 5.1.1") ||
			remote != "" && r.RemoteMTA != "dns; "+remote {
			t.Fatalf("recipient read back as %+v; built as %s, %s, remote %q", r, action, status, remote)
		}
		// An address as the relay takes it (no control character, at most
		// 256 octets) is the Final-Recipient as it is.
		if len(addr) <= 256 && !strings.ContainsFunc(addr, func(r rune) bool { return r < ' ' || r == 0x7f }) && r.Address() != addr {
			t.Fatalf("Final-Recipient %q for %q", r.FinalRecipient, addr)
		}
		if !env.SMTPUTF8 {
			// Not global: the status part is ASCII (RFC 6533 §6).
			i, j := bytes.Index(raw, []byte("\r\nContent-Type: message/delivery-status\r\n")), bytes.Index(raw, []byte("\r\nContent-Type: text/rfc822-headers\r\n"))
			if i < 0 || j < i || !mime7bit.IsASCII(raw[i:j]) {
				t.Fatalf("a report about a message without SMTPUTF8 has no ASCII message/delivery-status:\n%s", raw)
			}
		}
	})
}
