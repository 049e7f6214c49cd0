package integration_test

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net"
	"net/mail"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
)

// testMessage returns a message that exercises what a relay must keep byte
// for byte: lines that start with dots (".", "..", ".x" — a client stuffs
// them on the wire, the server must unstuff them), 8-bit UTF-8 text in a
// header and the body, a line of exactly 998 bytes (the RFC 5322 limit),
// trailing white space and an empty line before the end. Lines end in CRLF,
// and so does the message. With idDate, it carries Message-ID and Date, so
// the relay has nothing to add.
func testMessage(from, to, subject string, idDate bool) []byte {
	var b bytes.Buffer
	fmt.Fprintf(&b, "From: Sender <%s>\r\nTo: <%s>\r\nSubject: %s — ünïcödé\r\n", from, to, subject)
	if idDate {
		fmt.Fprintf(&b, "Message-ID: <%s@client.test>\r\nDate: Tue, 2 Jan 2024 03:04:05 +0100\r\n",
			strings.ReplaceAll(subject, " ", "-"))
	}
	b.WriteString("MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n" +
		"Content-Transfer-Encoding: 8bit\r\nX-Folded: first part,\r\n\tsecond part\r\n\r\n")
	b.WriteString("Dots follow.\r\n.\r\n..\r\n.x\r\n...three\r\n . not at the start\r\n")
	b.WriteString("Grüße aus Köln, naïve café, 日本語のテキスト, emoji 📬.\r\n")
	b.WriteString("trailing spaces and tab   \t\r\n")
	long := strings.Repeat("0123456789abcdef", 64)[:998]
	b.WriteString(long + "\r\n")
	b.WriteString(strings.Repeat("ä", 400) + "\r\n") // 800 bytes of 8-bit text
	b.WriteString("\r\nlast line\r\n")
	return b.Bytes()
}

// bigMessage returns a message of exactly size bytes (size well above the
// headers), CRLF lines of varied length with a dot line now and then and
// 8-bit text, ending in CRLF.
func bigMessage(from, to, subject string, size int) []byte {
	var b bytes.Buffer
	b.Grow(size)
	fmt.Fprintf(&b, "From: <%s>\r\nTo: <%s>\r\nSubject: %s\r\nMessage-ID: <%s@client.test>\r\n"+
		"Date: Tue, 2 Jan 2024 03:04:05 +0100\r\n\r\n", from, to, subject, strings.ReplaceAll(subject, " ", "-"))
	pattern := []byte("The quick brown fox jumps over the lazy dog. Größe: 𝄞 — 0123456789 ABCDEFGHIJKLMNOPQRSTUVWXYZ")
	for i := 0; b.Len()+300 < size; i++ {
		switch {
		case i%97 == 0:
			b.WriteString(".\r\n")
		case i%89 == 0:
			fmt.Fprintf(&b, ".. dot-started line %d\r\n", i)
		default:
			line := fmt.Sprintf("%08d %s", i, pattern[:i%len(pattern)])
			b.WriteString(strings.ToValidUTF8(line, "?"))
			b.WriteString("\r\n")
		}
	}
	rest := size - b.Len() // 2 to 300 bytes
	b.WriteString(strings.Repeat("z", rest-2) + "\r\n")
	return b.Bytes()
}

// sentMail is what a client submitted, and what the queue must hold for it.
type sentMail struct {
	name  string
	id    string // from the 250 reply to DATA
	from  string
	rcpts []string
	user  string
	tls   bool
	body  []byte // the bytes after mailhop's Received header
	// idDateAdded: the client sent neither Message-ID nor Date, and the
	// relay (a submission listener) must have added both; otherwise the
	// body must be exactly body.
	idDateAdded bool
}

// pyClient is a smtplib client: argv[1] is JSON with mode ("plain",
// "starttls" or "ssl"), host, port, user, password, from, rcpts,
// mail_options and file (the message, sent as bytes with sendmail). It
// prints the reply to DATA as "DATA-REPLY code text".
const pyClient = `
import json, smtplib, ssl, sys
a = json.loads(sys.argv[1])
ctx = ssl._create_unverified_context()
if a["mode"] == "ssl":
    s = smtplib.SMTP_SSL(a["host"], a["port"], local_hostname="client.test", context=ctx, timeout=120)
else:
    s = smtplib.SMTP(a["host"], a["port"], local_hostname="client.test", timeout=120)
s.ehlo()
if a["mode"] == "starttls":
    s.starttls(context=ctx)
    s.ehlo()
if a.get("user"):
    s.login(a["user"], a["password"])
orig_data = s.data
def data(msg):
    code, resp = orig_data(msg)
    print("DATA-REPLY", code, resp.decode("utf-8", "replace"))
    return code, resp
s.data = data
with open(a["file"], "rb") as f:
    msg = f.read()
refused = s.sendmail(a["from"], a["rcpts"], msg, mail_options=a.get("mail_options", []))
if refused:
    print("REFUSED", refused)
    sys.exit(3)
s.quit()
`

type pyArgs struct {
	Mode        string   `json:"mode"`
	Host        string   `json:"host"`
	Port        int      `json:"port"`
	User        string   `json:"user,omitempty"`
	Password    string   `json:"password,omitempty"`
	From        string   `json:"from"`
	Rcpts       []string `json:"rcpts"`
	MailOptions []string `json:"mail_options,omitempty"`
	File        string   `json:"file"`
}

func hostPort(t testing.TB, addr string) (string, int) {
	t.Helper()
	h, p, err := net.SplitHostPort(addr)
	if err != nil {
		t.Fatal(err)
	}
	var port int
	fmt.Sscan(p, &port)
	return h, port
}

// runPython submits msg with smtplib and returns the queue ID from the reply.
func runPython(t *testing.T, addr string, a pyArgs, msg []byte) string {
	t.Helper()
	a.Host, a.Port = hostPort(t, addr)
	a.File = filepath.Join(t.TempDir(), "msg.eml")
	if err := os.WriteFile(a.File, msg, 0o600); err != nil {
		t.Fatal(err)
	}
	js, _ := json.Marshal(a)
	out, err := runTool(t, nil, "python3", "-c", pyClient, string(js))
	if err != nil {
		t.Fatalf("smtplib: %v\n%s", err, out)
	}
	if !strings.Contains(out, "DATA-REPLY 250 2.0.0 OK: queued as ") {
		t.Fatalf("smtplib: no '250 2.0.0 OK: queued as ID' reply to DATA:\n%s", out)
	}
	return mustID(t, out)
}

func mustID(t *testing.T, out string) string {
	t.Helper()
	id := queuedID(out)
	if id == "" {
		t.Fatalf("no queue ID in the client's output:\n%s", out)
	}
	return id
}

// TestRealClients submits mail with swaks, curl and Python's smtplib over
// every listener mode, then checks the queue directly: envelope, user and
// the body byte for byte.
func TestRealClients(t *testing.T) {
	t.Parallel()
	r := startRelay(t, relayOpts{})
	tmp := t.TempDir()
	var (
		sent []sentMail
		n    int
	)
	file := func(b []byte) string {
		n++
		p := filepath.Join(tmp, fmt.Sprintf("msg%d.eml", n))
		if err := os.WriteFile(p, b, 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}

	// swaks reads the file, rebuilds the header lines with CRLF (they are
	// CRLF already), stuffs leading dots, and sends "\r\n.\r\n" after the
	// data: for a file that does not end in a newline the server receives
	// the file plus CRLF. (The test messages contain no "\n" two-character
	// sequences and no %TOKEN%s, which swaks would replace.)
	swaks := func(name, addr string, extra ...string) {
		t.Run(name, func(t *testing.T) {
			rcpt := name + "@example.net"
			msg := testMessage("app@example.com", rcpt, name, true)
			f := file(bytes.TrimSuffix(msg, []byte("\r\n")))
			h, p := hostPort(t, addr)
			args := append([]string{"--server", h, "--port", fmt.Sprint(p), "--ehlo", "client.test",
				"--from", "app@example.com", "--to", rcpt, "--data", "@" + f,
				"--auth-user", testUser, "--auth-password", testPassword, "--timeout", "60"}, extra...)
			out, err := runTool(t, nil, "swaks", args...)
			if err != nil {
				t.Fatalf("swaks: %v\n%s", err, out)
			}
			sent = append(sent, sentMail{name: name, id: mustID(t, out), from: "app@example.com",
				rcpts: []string{rcpt}, user: testUser, tls: true, body: msg})
		})
	}
	swaks("swaks-starttls-plain", r.Sub, "--tls", "--auth", "PLAIN")
	swaks("swaks-starttls-login", r.Sub, "--tls", "--auth", "LOGIN")
	swaks("swaks-tls-on-connect-login", r.Subs, "--tls-on-connect", "--auth", "LOGIN")
	swaks("swaks-tls-on-connect-plain", r.Subs, "--tls-on-connect", "--auth", "PLAIN")

	// curl sends the file as it is (no line-ending conversion without
	// --crlf), stuffs leading dots, and ends with ".\r\n" after a file that
	// ends in CRLF: the server receives the file exactly.
	curl := func(name, url string, msg []byte, rcpts ...string) {
		t.Run(name, func(t *testing.T) {
			f := file(msg)
			args := []string{"-sS", "-v", "--max-time", "120", "-k", "--user", testUser + ":" + testPassword,
				"--mail-from", "app@example.com", "--upload-file", f, url}
			if strings.HasPrefix(url, "smtp://") {
				args = append(args, "--ssl-reqd")
			}
			for _, rc := range rcpts {
				args = append(args, "--mail-rcpt", rc)
			}
			out, err := runTool(t, nil, "curl", args...)
			if err != nil {
				t.Fatalf("curl: %v\n%s", err, truncate(out, 4000))
			}
			sent = append(sent, sentMail{name: name, id: mustID(t, out), from: "app@example.com",
				rcpts: rcpts, user: testUser, tls: true, body: msg})
		})
	}
	curl("curl-smtp-ssl-reqd", "smtp://"+r.Sub+"/client.test",
		testMessage("app@example.com", "curl1@example.net", "curl smtp", true),
		"curl1@example.net", "curl1b@example.org")
	curl("curl-smtps", "smtps://"+r.Subs+"/client.test",
		testMessage("app@example.com", "curl2@example.net", "curl smtps", true), "curl2@example.net")
	curl("curl-smtps-20MiB", "smtps://"+r.Subs+"/client.test",
		bigMessage("app@example.com", "curl3@example.net", "curl big", 20<<20), "curl3@example.net")

	// smtplib sends a bytes message as it is (dots stuffed), ending with
	// ".\r\n" after a message that ends in CRLF.
	py := func(name, addr string, a pyArgs, msg []byte, user string, idDateAdded bool) {
		t.Run(name, func(t *testing.T) {
			id := runPython(t, addr, a, msg)
			sent = append(sent, sentMail{name: name, id: id, from: a.From, rcpts: a.Rcpts, user: user,
				tls: a.Mode != "plain", body: msg, idDateAdded: idDateAdded})
		})
	}
	auth := pyArgs{Mode: "starttls", User: testUser, Password: testPassword, From: "app@example.com"}
	a := auth
	a.Rcpts = []string{"py1@example.net", "py1b@example.net", "py1c@example.com"}
	py("python-starttls-login", r.Sub, a, testMessage("app@example.com", "py1@example.net", "python starttls", true), testUser, false)

	a = auth
	a.Mode, a.From, a.Rcpts = "ssl", "boss@example.org", []string{"py2@example.net"}
	py("python-ssl-login", r.Subs, a, testMessage("boss@example.org", "py2@example.net", "python ssl", true), testUser, false)

	a = auth
	a.Rcpts = []string{"py3@example.net"}
	py("python-20MiB", r.Sub, a, bigMessage("app@example.com", "py3@example.net", "python big", 20<<20), testUser, false)

	a = pyArgs{Mode: "plain", From: "josé@example.com", Rcpts: []string{"ñandú@example.net", "plain@example.net"},
		MailOptions: []string{"SMTPUTF8"}}
	py("python-smtputf8-relay", r.Relay, a, testMessage("josé@example.com", "ñandú@example.net", "python utf8", true), "", false)

	// Without Message-ID and Date: added on a submission listener...
	a = auth
	a.Rcpts = []string{"py5@example.net"}
	py("python-no-id-date-submission", r.Sub, a, testMessage("app@example.com", "py5@example.net", "no id submission", false), testUser, true)
	// ...and not on the relay listener (port-25 style: the relay does not
	// rewrite mail in transit).
	a = pyArgs{Mode: "plain", From: "someone@elsewhere.test", Rcpts: []string{"py6@example.net"}}
	py("python-no-id-date-relay", r.Relay, a, testMessage("someone@elsewhere.test", "py6@example.net", "no id relay", false), "", false)

	r.stop()
	q := r.openQueue()
	if got := len(q.List()); got != len(sent) {
		t.Errorf("queue holds %d messages, %d were acknowledged", got, len(sent))
	}
	for _, s := range sent {
		t.Run(s.name+"/queued", func(t *testing.T) {
			env, err := q.Get(s.id)
			if err != nil {
				t.Fatalf("message %s: %v", s.id, err)
			}
			if env.From != s.from {
				t.Errorf("from %q, want %q", env.From, s.from)
			}
			var rcpts []string
			for _, rc := range env.Recipients {
				rcpts = append(rcpts, rc.Address)
				if rc.State.String() != "pending" {
					t.Errorf("recipient %s: state %s", rc.Address, rc.State)
				}
			}
			if !slices.Equal(rcpts, s.rcpts) {
				t.Errorf("recipients %q, want %q", rcpts, s.rcpts)
			}
			if want := strings.Contains(s.name, "smtputf8"); env.SMTPUTF8 != want {
				t.Errorf("envelope SMTPUTF8 %v, want %v", env.SMTPUTF8, want)
			}
			if env.User != s.user {
				t.Errorf("user %q, want %q", env.User, s.user)
			}
			if env.ClientAddr == "" || !strings.Contains(env.ClientAddr, "127.0.0.1") {
				t.Errorf("client address %q", env.ClientAddr)
			}
			full := body(t, q, s.id)
			if env.Size != int64(len(full)) {
				t.Errorf("envelope size %d, body %d bytes", env.Size, len(full))
			}
			checkReceived(t, full, s)
			got := stripReceived(t, full)
			if s.idDateAdded {
				got = checkAddedIDDate(t, got)
			}
			if !bytes.Equal(got, s.body) {
				t.Errorf("body differs from what the client sent: %s", firstDiff(got, s.body))
			}
		})
	}
}

// checkReceived checks mailhop's Received header: by our hostname, with the
// protocol the session used, for the recipient when there is one.
func checkReceived(t *testing.T, full []byte, s sentMail) {
	t.Helper()
	end := bytes.Index(full, []byte("\r\n\r\n"))
	if end < 0 {
		t.Fatalf("no end of header")
	}
	m, err := mail.ReadMessage(bytes.NewReader(full[:end+4]))
	if err != nil {
		t.Fatalf("parsing the stored header: %v", err)
	}
	rcv := m.Header["Received"]
	if len(rcv) == 0 {
		t.Fatalf("no Received header")
	}
	h := rcv[0]
	for _, want := range []string{"by mx.relay.test", "id " + s.id} {
		if !strings.Contains(h, want) {
			t.Errorf("Received %q lacks %q", h, want)
		}
	}
	// RFC 3848 (and RFC 6531 §3.7.4 for SMTPUTF8, where UTF8SMTP* is
	// preferred and ESMTP* accepted here).
	with := "ESMTP"
	if s.tls {
		with += "S"
	}
	if s.user != "" {
		with += "A"
	}
	re := `with (` + with
	if strings.Contains(s.name, "smtputf8") {
		re += `|` + strings.Replace(with, "ESMTP", "UTF8SMTP", 1)
	}
	re += `)\b`
	if !regexp.MustCompile(re).MatchString(h) {
		t.Errorf("Received %q: want %s", h, re)
	}
	if s.tls && !strings.Contains(h, "TLS") {
		t.Errorf("Received %q names no TLS version", h)
	}
}

// checkAddedIDDate checks that the header (after Received) has a Message-ID
// and a Date the client did not send, removes those two header fields and
// returns the rest, which must then be what the client sent.
func checkAddedIDDate(t *testing.T, b []byte) []byte {
	t.Helper()
	end := bytes.Index(b, []byte("\r\n\r\n"))
	if end < 0 {
		t.Fatalf("no end of header")
	}
	m, err := mail.ReadMessage(bytes.NewReader(b[:end+4]))
	if err != nil {
		t.Fatalf("parsing header: %v", err)
	}
	if _, err := m.Header.Date(); err != nil {
		t.Errorf("Date %q: %v", m.Header.Get("Date"), err)
	}
	id := m.Header.Get("Message-ID")
	if !strings.HasPrefix(id, "<") || !strings.HasSuffix(id, ">") || !strings.Contains(id, "@") {
		t.Errorf("Message-ID %q is not <left@right>", id)
	}
	// Remove the two fields (with any continuation lines).
	var out bytes.Buffer
	lines := strings.SplitAfter(string(b[:end+2]), "\r\n")
	skip := false
	for _, l := range lines {
		if l == "" {
			continue
		}
		if l[0] == ' ' || l[0] == '\t' {
			if !skip {
				out.WriteString(l)
			}
			continue
		}
		name := strings.ToLower(l[:max(strings.IndexByte(l, ':'), 0)])
		skip = name == "message-id" || name == "date"
		if !skip {
			out.WriteString(l)
		}
	}
	out.Write(b[end+2:])
	return out.Bytes()
}

func firstDiff(got, want []byte) string {
	i := 0
	for i < len(got) && i < len(want) && got[i] == want[i] {
		i++
	}
	lo := max(i-40, 0)
	return fmt.Sprintf("lengths got %d want %d; first difference at byte %d:\n got %q\nwant %q",
		len(got), len(want), i, got[lo:min(i+40, len(got))], want[lo:min(i+40, len(want))])
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n/2] + "\n...\n" + s[len(s)-n/2:]
}
