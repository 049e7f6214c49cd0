package admin

import (
	"bufio"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"os"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"testing/iotest"
	"time"

	"github.com/mailhop/mailhop/internal/testlog"
	"github.com/mailhop/mailhop/queue"
	"github.com/mailhop/mailhop/relay/config"
	"github.com/mailhop/mailhop/relay/msglimit"
)

func TestCRLFReader(t *testing.T) {
	t.Parallel()
	cases := []struct{ in, want string }{
		{"", ""},
		{"a", "a\r\n"},
		{"a\n", "a\r\n"},
		{"a\r\n", "a\r\n"},
		{"a\nb", "a\r\nb\r\n"},
		{"a\rb\r\n\n", "a\r\nb\r\n\r\n"},
		{"Subject: x\n\nbody\n.\n", "Subject: x\r\n\r\nbody\r\n.\r\n"},
	}
	for _, c := range cases {
		got, err := io.ReadAll(iotest.OneByteReader(&crlfReader{r: bufioReader(c.in)}))
		if err != nil || string(got) != c.want {
			t.Errorf("crlf(%q) = %q, %v; want %q", c.in, got, err, c.want)
		}
	}
}

func TestParsePeerAddr_RejectsLookalikes(t *testing.T) {
	t.Parallel()
	good := peerAddr{pid: 12, uid: 1000, gid: 100}.String()
	if uid, ok := parsePeerAddr(good); !ok || uid != 1000 {
		t.Fatalf("parsePeerAddr(%q) = %d, %v", good, uid, ok)
	}
	for _, s := range []string{"", "@", "127.0.0.1:5", good + "x", "peercred:pid=1,uid=0", " " + good} {
		if _, ok := parsePeerAddr(s); ok {
			t.Errorf("parsePeerAddr(%q) accepted", s)
		}
	}
}

// injectEnv is a queue and an injector behind a real admin socket.
type injectEnv struct {
	q      *queue.Queue
	in     *Injector
	client *Client
	cfg    *config.Config
}

// injected injects env with a short message over the socket and returns
// the envelope queued.
func (e *injectEnv) injected(t *testing.T, env *InjectEnvelope) *queue.Envelope {
	t.Helper()
	id, err := e.client.Inject(env, strings.NewReader("Subject: hi\n\nline\n"))
	if err != nil {
		t.Fatal(err)
	}
	qe, err := e.q.Get(id)
	if err != nil {
		t.Fatal(err)
	}
	return qe
}

func startInject(t *testing.T, withCred bool) *injectEnv {
	t.Helper()
	return startInjectLog(t, withCred, io.Discard)
}

// startInjectLog is startInject with the relay's log written to w.
func startInjectLog(t *testing.T, withCred bool, w io.Writer) *injectEnv {
	t.Helper()
	dir := t.TempDir()
	log := slog.New(slog.NewTextHandler(w, nil))
	q, err := queue.Open(filepath.Join(dir, "queue"), queue.Options{Logger: log})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { q.Close() })
	cfg := &config.Config{Hostname: "relay.test", Policy: config.Policy{MaxMessageSize: 4096}}
	in := &Injector{Queue: q, Config: func() *config.Config { return cfg }, Log: log}
	sock := filepath.Join(dir, "admin.sock")
	ln, err := Listen(sock)
	if err != nil {
		t.Fatal(err)
	}
	if withCred {
		ln = PeerCredListener(ln)
	}
	srv := &Server{Queue: q, Log: log, Extra: map[string]http.Handler{InjectPath: in}}
	done := make(chan struct{})
	go func() { srv.Serve(ln); close(done) }()
	// Closing the listener stops Serve. (Server.Shutdown would race with a
	// Serve that has not yet stored its http.Server.)
	t.Cleanup(func() { ln.Close(); <-done })
	return &injectEnv{q: q, in: in, client: NewClient(sock), cfg: cfg}
}

func queuedBody(t *testing.T, q *queue.Queue, id string) string {
	t.Helper()
	b, err := q.Body(id)
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	data, err := io.ReadAll(b)
	if err != nil {
		t.Fatal(err)
	}
	return string(data)
}

func TestInject_QueuesWithPeerUserAndReceived(t *testing.T) {
	t.Parallel()
	e := startInject(t, true)
	me, err := user.Current()
	if err != nil {
		t.Fatal(err)
	}
	// The client claims to be someone else; the kernel's word wins.
	env := &InjectEnvelope{From: "cron@relay.test", Recipients: []string{"ops@example.com"}, User: "mallory", UID: 4242}
	qe := e.injected(t, env)
	if qe.From != "cron@relay.test" || len(qe.Recipients) != 1 || qe.Recipients[0].Address != "ops@example.com" {
		t.Errorf("envelope = %+v", qe)
	}
	if qe.User != me.Username {
		t.Errorf("user = %q, want %q", qe.User, me.Username)
	}
	body := queuedBody(t, e.q, qe.ID)
	wantRcv := "Received: from local user " + me.Username + " (uid " + me.Uid + ")\r\n\tby relay.test (mailhop) with local id " + qe.ID + ";\r\n\t"
	if !strings.HasPrefix(body, wantRcv) {
		t.Errorf("body starts %q, want %q", body[:min(len(body), 120)], wantRcv)
	}
	if !strings.HasSuffix(body, "\r\nSubject: hi\r\n\r\nline\r\n") {
		t.Errorf("body = %q", body)
	}
	if e.in.Injected() != 1 {
		t.Errorf("Injected() = %d", e.in.Injected())
	}
}

// TestInject_QueuedLineCarriesMessageID: the "queued" line of a message
// from sendmail carries its Message-ID, as "message accepted" does for
// SMTP and every delivery line after it, so that grep of the Message-ID
// s-nail, mutt or git send-email generated (with LF line ends, through
// "sendmail -i -f FROM -- RCPT") finds the message's queue ID.
func TestInject_QueuedLineCarriesMessageID(t *testing.T) {
	t.Parallel()
	var logs testlog.Buffer
	e := startInjectLog(t, true, &logs)
	env := &InjectEnvelope{From: "alice@example.com", Recipients: []string{"sn3@dest.example"}}
	for _, tc := range []struct{ msg, want string }{
		{"Date: Thu, 26 Nov 2026 16:50:23 +0000\nFrom: Alice <alice@example.com>\nTo: sn3@dest.example\n" +
			"Subject: x\nMessage-ID: <20261126165023.Rcud0%alice@example.com>\nUser-Agent: s-nail v14.9.24\n\nbody\n",
			"<20261126165023.Rcud0%alice@example.com>"},
		{"Subject: folded\r\nMessage-Id:\r\n <20261126165103.6214-1-alice@example.com>\r\n\r\nMessage-ID: <not-this@x>\r\n",
			"<20261126165103.6214-1-alice@example.com>"},
		{"Subject: none\n\nMessage-ID: <in-the-body@x>\n", `""`},
	} {
		id, err := e.client.Inject(env, strings.NewReader(tc.msg))
		if err != nil {
			t.Fatal(err)
		}
		var line string
		for _, l := range strings.Split(logs.String(), "\n") {
			if strings.Contains(l, "msg=queued") && strings.Contains(l, "queue_id="+id) {
				line = l
			}
		}
		if want := " message_id=" + tc.want + " "; !strings.Contains(line+" ", want) {
			t.Errorf("queued line %q, want %s", line, want)
		}
	}
}

// TestInject_DSN: the envelope's DSN parameters (sendmail -N, -R, -V) are
// queued with the message: NOTIFY on every recipient, RET in upper case.
func TestInject_DSN(t *testing.T) {
	t.Parallel()
	e := startInject(t, true)
	env := &InjectEnvelope{From: "cron@relay.test", Recipients: []string{"a@example.com", "b@example.com"},
		Notify: "success,DELAY", Ret: "hdrs", EnvID: "job+2B1"}
	qe := e.injected(t, env)
	if qe.Ret != "HDRS" || qe.EnvID != "job+2B1" {
		t.Errorf("RET %q ENVID %q", qe.Ret, qe.EnvID)
	}
	for _, r := range qe.Recipients {
		if r.Notify != queue.NotifySuccess|queue.NotifyDelay {
			t.Errorf("%s: NOTIFY %q, want SUCCESS,DELAY", r.Address, r.Notify)
		}
	}
}

// TestInject_PerRecipientDSN: NOTIFY and ORCPT per recipient (sendmail
// -bs) are queued with their recipient, NOTIFY falling back to the
// envelope's; SMTPUTF8 is kept for an ASCII envelope too.
func TestInject_PerRecipientDSN(t *testing.T) {
	t.Parallel()
	e := startInject(t, true)
	env := &InjectEnvelope{From: "cron@relay.test", Recipients: []string{"a@example.com", "b@example.com"}, Notify: "delay",
		RcptNotify: []string{"never", ""}, ORCPT: []string{"", "RFC822;orig@example.org"}, SMTPUTF8: true}
	qe := e.injected(t, env)
	if !qe.SMTPUTF8 {
		t.Error("SMTPUTF8 not kept")
	}
	if r := qe.Recipients; len(r) != 2 || r[0].Notify != queue.NotifyNever || r[0].ORCPT != "" ||
		r[1].Notify != queue.NotifyDelay || r[1].ORCPT != "RFC822;orig@example.org" {
		t.Errorf("recipients = %+v", r)
	}
}

// TestInject_Postmaster: with a postmaster configured, local mail to
// postmaster@hostname goes to it (ORCPT keeps what was written), as mail
// from SMTP does; it was sent on to hostname's MX, which is this relay.
func TestInject_Postmaster(t *testing.T) {
	t.Parallel()
	e := startInject(t, true)
	e.cfg.Postmaster = "ops@example.com"
	env := &InjectEnvelope{From: "cron@relay.test", Recipients: []string{"Postmaster@Relay.Test", "ops@example.com", "b@example.com"}}
	qe := e.injected(t, env)
	if len(qe.Recipients) != 2 || qe.Recipients[0].Address != "ops@example.com" ||
		qe.Recipients[0].ORCPT != "rfc822;Postmaster@Relay.Test" || qe.Recipients[1].Address != "b@example.com" {
		t.Errorf("recipients = %+v", qe.Recipients)
	}
}

// TestInject_UTF8Address: a UTF-8 address is valid (RFC 6531) and the
// message is queued as needing SMTPUTF8; an ASCII one is not.
func TestInject_UTF8Address(t *testing.T) {
	t.Parallel()
	e := startInject(t, true)
	for _, c := range []struct {
		rcpt string
		utf8 bool
	}{{"jörg@bücher.test", true}, {"joerg@[192.0.2.1]", false}} {
		id, err := e.client.Inject(&InjectEnvelope{From: "a@relay.test", Recipients: []string{c.rcpt}}, strings.NewReader("Subject: x\n\nx\n"))
		if err != nil {
			t.Errorf("%s: %v", c.rcpt, err)
			continue
		}
		qe, err := e.q.Get(id)
		if err != nil || qe.SMTPUTF8 != c.utf8 {
			t.Errorf("%s: SMTPUTF8 %v, want %v (%v)", c.rcpt, qe.SMTPUTF8, c.utf8, err)
		}
	}
}

func TestInject_Refusals(t *testing.T) {
	t.Parallel()
	e := startInject(t, true)
	cases := []struct {
		name   string
		env    *InjectEnvelope
		msg    string
		status int
	}{
		{"no recipients", &InjectEnvelope{From: "a@b.test"}, "x\n", http.StatusBadRequest},
		{"bad recipient", &InjectEnvelope{Recipients: []string{"a b@c.test"}}, "x\n", http.StatusBadRequest},
		{"unqualified recipient", &InjectEnvelope{Recipients: []string{"root"}}, "x\n", http.StatusBadRequest},
		{"two @", &InjectEnvelope{Recipients: []string{"a@@b.test"}}, "x\n", http.StatusBadRequest},
		{"trailing dot", &InjectEnvelope{Recipients: []string{"a@b.test."}}, "x\n", http.StatusBadRequest},
		{"source route", &InjectEnvelope{From: "@relay.test:x@b.test", Recipients: []string{"a@b.test"}}, "x\n", http.StatusBadRequest},
		{"empty label", &InjectEnvelope{Recipients: []string{"a@b..test"}}, "x\n", http.StatusBadRequest},
		{"too large", &InjectEnvelope{Recipients: []string{"a@b.test"}}, strings.Repeat("x\n", 4000), http.StatusRequestEntityTooLarge},
		{"NOTIFY never with success", &InjectEnvelope{Recipients: []string{"a@b.test"}, Notify: "never,success"}, "x\n", http.StatusBadRequest},
		{"RET body", &InjectEnvelope{Recipients: []string{"a@b.test"}, Ret: "body"}, "x\n", http.StatusBadRequest},
		{"ENVID with a tab", &InjectEnvelope{Recipients: []string{"a@b.test"}, EnvID: "a\tb"}, "x\n", http.StatusBadRequest},
		{"NOTIFY per recipient, too few", &InjectEnvelope{Recipients: []string{"a@b.test", "c@b.test"}, RcptNotify: []string{"never"}}, "x\n", http.StatusBadRequest},
		{"NOTIFY per recipient, bad", &InjectEnvelope{Recipients: []string{"a@b.test"}, RcptNotify: []string{"sometimes"}}, "x\n", http.StatusBadRequest},
		{"ORCPT without type", &InjectEnvelope{Recipients: []string{"a@b.test"}, ORCPT: []string{"orig@b.test"}}, "x\n", http.StatusBadRequest},
		{"ORCPT with a line end", &InjectEnvelope{Recipients: []string{"a@b.test"}, ORCPT: []string{"rfc822;o@b.test\r\nX: y"}}, "x\n", http.StatusBadRequest},
	}
	for _, c := range cases {
		_, err := e.client.Inject(c.env, strings.NewReader(c.msg))
		var se *StatusError
		if !errors.As(err, &se) || se.Code != c.status {
			t.Errorf("%s: err = %v, want status %d", c.name, err, c.status)
		}
	}
	if n := len(e.q.List()); n != 0 {
		t.Errorf("%d messages queued after refusals", n)
	}
}

func TestInject_WithoutPeerCredentialsIsForbidden(t *testing.T) {
	t.Parallel()
	e := startInject(t, false)
	_, err := e.client.Inject(&InjectEnvelope{Recipients: []string{"a@b.test"}}, strings.NewReader("x\n"))
	var se *StatusError
	if !errors.As(err, &se) || se.Code != http.StatusForbidden {
		t.Fatalf("err = %v, want 403", err)
	}
}

func TestPickup_WriteThenDrain(t *testing.T) {
	t.Parallel()
	e := startInject(t, true)
	dir, err := PreparePickup(t.TempDir(), "")
	if err != nil {
		t.Fatal(err)
	}
	env := &InjectEnvelope{From: "app@relay.test", Recipients: []string{"x@example.com", "y@example.net"}, UID: os.Getuid()}
	path, err := WritePickup(dir, env, strings.NewReader("Subject: later\n\nbody\n"))
	if err != nil {
		t.Fatal(err)
	}
	// A damaged file is moved aside, never deleted.
	if err := os.WriteFile(filepath.Join(dir, "broken"), []byte("not json\nSubject: x\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	// A temporary file being written is left alone.
	if err := os.WriteFile(filepath.Join(dir, ".partial.tmp"), []byte("{"), 0o600); err != nil {
		t.Fatal(err)
	}
	n, err := e.in.DrainPickup(dir)
	if err != nil || n != 1 {
		t.Fatalf("DrainPickup = %d, %v", n, err)
	}
	if _, err := os.Stat(path); !os.IsNotExist(err) {
		t.Errorf("pickup file still there: %v", err)
	}
	if _, err := os.Stat(filepath.Join(dir, "bad", "broken")); err != nil {
		t.Errorf("broken file not in bad/: %v", err)
	}
	if _, err := os.Stat(filepath.Join(dir, ".partial.tmp")); err != nil {
		t.Errorf("temporary file touched: %v", err)
	}
	msgs := e.q.List()
	if len(msgs) != 1 || msgs[0].From != "app@relay.test" || len(msgs[0].Recipients) != 2 {
		t.Fatalf("queued = %+v", msgs)
	}
	body := queuedBody(t, e.q, msgs[0].ID)
	if !strings.Contains(body, "(uid "+strconv.Itoa(os.Getuid())+")") || !strings.HasSuffix(body, "Subject: later\r\n\r\nbody\r\n") {
		t.Errorf("body = %q", body)
	}
	// Draining again finds nothing.
	if n, err := e.in.DrainPickup(dir); err != nil || n != 0 {
		t.Errorf("second drain = %d, %v", n, err)
	}
}

// A temporary file that a sendmail killed while writing it left in the
// pickup directory is deleted once it has gone unchanged for an hour: the
// drain skipped every such file, and they stayed for good (a kill -9 of
// sendmail writing an 8 MiB message to a stopped relay left 4 MiB there).
// A younger one, which a sendmail may be writing, and other dot files stay.
func TestPickup_StaleTempRemoved(t *testing.T) {
	t.Parallel()
	e := startInject(t, true)
	dir, err := PreparePickup(t.TempDir(), "")
	if err != nil {
		t.Fatal(err)
	}
	old := time.Now().Add(-2 * time.Hour)
	files := map[string]bool{ // name: removed
		".1795702789012438210.3953.4d4b91f767700fbe.tmp": true,
		".1795702789012438211.3954.4d4b91f767700fbf.tmp": false, // being written
		".keep": false, // not ours
	}
	for name, stale := range files {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(`{"from":"a@b.test","recipients":["c@d.test"]}`+"\nSubject: x\n"), 0o600); err != nil {
			t.Fatal(err)
		}
		if stale || name == ".keep" {
			if err := os.Chtimes(p, old, old); err != nil {
				t.Fatal(err)
			}
		}
	}
	if n, err := e.in.DrainPickup(dir); err != nil || n != 0 {
		t.Fatalf("DrainPickup = %d, %v", n, err)
	}
	for name, removed := range files {
		_, err := os.Stat(filepath.Join(dir, name))
		if gone := os.IsNotExist(err); gone != removed {
			t.Errorf("%s: removed = %v, want %v (stat: %v)", name, gone, removed, err)
		}
	}
	if n := len(e.q.List()); n != 0 {
		t.Errorf("%d messages queued, want none", n)
	}
}

func TestSetSocketGroup(t *testing.T) {
	t.Parallel()
	g, err := user.LookupGroupId(strconv.Itoa(os.Getgid()))
	if err != nil {
		t.Skip("own group has no name:", err)
	}
	sock := filepath.Join(t.TempDir(), "s.sock")
	ln, err := Listen(sock)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	if err := SetSocketGroup(sock, g.Name); err != nil {
		t.Fatal(err)
	}
	st, err := os.Stat(sock)
	if err != nil {
		t.Fatal(err)
	}
	if st.Mode().Perm() != 0o660 {
		t.Errorf("mode = %v, want 0660", st.Mode().Perm())
	}
	if err := SetSocketGroup(sock, "no-such-group-mailhop-test"); err == nil {
		t.Error("a missing group was accepted")
	}
}

func bufioReader(s string) *bufio.Reader { return bufio.NewReader(strings.NewReader(s)) }

// TestCheckLimits pins each limit at its edge, with the meaning SMTP gives
// it: line length without the CRLF, the header up to its last field's CRLF
// (not the empty line), the size with CRLF line endings.
func TestCheckLimits(t *testing.T) {
	t.Parallel()
	lim := msglimit.Limits{MaxMessageSize: 200, MaxLineLength: 10, MaxHeaderSize: 30}
	line := func(n int) string { return strings.Repeat("b", n) }
	cases := []struct {
		name, msg string
		key       string // "": accepted
		inHeader  bool
	}{
		{"header line at the limit", "S: " + line(7) + "\n\nx\n", "", false},
		{"header line over", "S: " + line(8) + "\n\nx\n", msglimit.KeyMaxLineLength, true},
		{"header line at the limit, CRLF", "S: " + line(7) + "\r\n\r\nx\r\n", "", false},
		{"header line at the limit, CR alone", "S: " + line(7) + "\r\rx\r", "", false},
		{"body line at the limit", "S: x\n\n" + line(10) + "\n", "", false},
		{"body line over", "S: x\n\n" + line(11) + "\n", msglimit.KeyMaxLineLength, false},
		{"last line without a line ending, over", "S: x\n\n" + line(11), msglimit.KeyMaxLineLength, false},
		// Header: 3 fields of 8 octets + CRLF = 30 octets; the empty line is not counted.
		{"header at the limit", "A: 12345\nB: 12345\nC: 12345\n\nx\n", "", false},
		{"header over", "A: 12345\nB: 12345\nC: 123456\n\nx\n", msglimit.KeyMaxHeaderSize, false},
		{"no empty line: all header", "A: 12345\nB: 12345\nC: 12345\nD:\n", msglimit.KeyMaxHeaderSize, false},
		{"no empty line: a text line starts the body", "A: 12345\nB: 12345\ntext\nC: 12345\n", "", false},
		{"starts with the empty line: no header", "\n12345678\n12345678\n12345678\n12345678\n", "", false},
		{"big body after a small header", "S: x\n\n" + strings.Repeat("1234567\n", 20), "", false},
		// Size: the empty line and 22 lines of 7 + CRLF = 200 octets with CRLF (177 with LF).
		{"size at the limit", "\n" + strings.Repeat("1234567\n", 22), "", false},
		{"size over", "\n" + strings.Repeat("1234567\n", 21) + "12345678\n", msglimit.KeyMaxMessageSize, false},
	}
	for _, c := range cases {
		for _, oneByte := range []bool{false, true} { // a CRLF split across reads changes nothing
			var r io.Reader = strings.NewReader(c.msg)
			if oneByte {
				r = iotest.OneByteReader(r)
			}
			err := CheckLimits(r, lim)
			var le *msglimit.Error
			switch {
			case c.key == "" && err != nil:
				t.Errorf("%s (one byte: %v): %v, want accepted", c.name, oneByte, err)
			case c.key != "" && (!errors.As(err, &le) || le.Key != c.key || le.InHeader != c.inHeader):
				t.Errorf("%s (one byte: %v): %v, want %s (header: %v)", c.name, oneByte, err, c.key, c.inHeader)
			case le != nil && !strings.Contains(le.Error(), c.key):
				t.Errorf("%s: %q does not name %s", c.name, le.Error(), c.key)
			}
		}
	}
	if err := CheckLimits(strings.NewReader("S: "+line(5000)+"\n\n"+line(5000)+"\n"), msglimit.Limits{}); err != nil {
		t.Errorf("no limits: %v", err)
	}
}

// TestInject_LimitsOfTheRunningConfig: each limit refuses the message with
// the status sendmail turns into EX_DATAERR, nothing is queued, and a
// reloaded configuration's limits apply to the next message.
func TestInject_LimitsOfTheRunningConfig(t *testing.T) {
	t.Parallel()
	e := startInject(t, true)
	var cur atomic.Pointer[config.Config]
	cfg := *e.cfg
	cfg.Policy.MaxMessageSize = 4096
	cfg.Limits = config.Limits{MaxLineLength: 998, MaxHeaderSize: 1024}
	cur.Store(&cfg)
	e.in.Config = cur.Load
	env := &InjectEnvelope{From: "a@relay.test", Recipients: []string{"b@example.com"}}
	hundreds := strings.Repeat(strings.Repeat("b", 98)+"\n", 40)
	cases := []struct {
		name, msg string
		status    int
		key       string
	}{
		{"line of 998", "Long: " + strings.Repeat("b", 992) + "\n\nx\n", http.StatusOK, ""},
		{"line of 999", "Long: " + strings.Repeat("b", 993) + "\n\nx\n", http.StatusBadRequest, msglimit.KeyMaxLineLength},
		{"header of 1024", strings.Repeat("X-F: "+strings.Repeat("h", 121)+"\n", 8) + "\nx\n", http.StatusOK, ""},
		{"header of 1025", strings.Repeat("X-F: "+strings.Repeat("h", 121)+"\n", 7) + "X-F: " + strings.Repeat("h", 122) + "\n\nx\n", http.StatusRequestEntityTooLarge, msglimit.KeyMaxHeaderSize},
		// "S: x" CRLF CRLF is 8 octets, then 40 lines of 100 with their CRLF, then 88.
		{"size of 4096", "S: x\n\n" + hundreds + strings.Repeat("b", 86) + "\n", http.StatusOK, ""},
		{"size of 4097", "S: x\n\n" + hundreds + strings.Repeat("b", 87) + "\n", http.StatusRequestEntityTooLarge, msglimit.KeyMaxMessageSize},
	}
	queued := 0
	for _, c := range cases {
		_, err := e.client.Inject(env, strings.NewReader(c.msg))
		if c.status == http.StatusOK {
			if err != nil {
				t.Errorf("%s: %v", c.name, err)
			}
			queued++
			continue
		}
		var se *StatusError
		if !errors.As(err, &se) || se.Code != c.status || !strings.Contains(se.Msg, c.key) {
			t.Errorf("%s: err = %v, want status %d naming %s", c.name, err, c.status, c.key)
		}
	}
	if n := len(e.q.List()); n != queued {
		t.Errorf("%d messages queued, want %d", n, queued)
	}
	// A reload (SIGHUP) lowers the line limit: the next message meets it.
	lower := cfg
	lower.Limits.MaxLineLength = 100
	cur.Store(&lower)
	_, err := e.client.Inject(env, strings.NewReader("Long: "+strings.Repeat("b", 95)+"\n\nx\n"))
	var se *StatusError
	if !errors.As(err, &se) || !strings.Contains(se.Msg, "limits.max_line_length (100 octets") {
		t.Errorf("after the reload: err = %v, want the 100-octet limit", err)
	}
}

// TestPickup_OverLimitMovedAside: a pickup file whose message breaks a
// limit is moved to bad/ with a log line naming the limit, like any file
// the relay cannot take; the others are queued.
func TestPickup_OverLimitMovedAside(t *testing.T) {
	t.Parallel()
	e := startInject(t, true)
	logs := &testlog.Buffer{}
	e.in.Log = slog.New(slog.NewTextHandler(logs, nil))
	cfg := *e.cfg
	cfg.Policy.MaxMessageSize = 300000
	cfg.Limits = config.Limits{MaxLineLength: 998, MaxHeaderSize: 102400}
	e.in.Config = func() *config.Config { return &cfg }
	dir, err := PreparePickup(t.TempDir(), "")
	if err != nil {
		t.Fatal(err)
	}
	env := &InjectEnvelope{From: "app@relay.test", Recipients: []string{"x@example.com"}, UID: os.Getuid()}
	files := map[string]string{ // message -> the key its refusal names ("": queued)
		"Subject: ok\n\nbody\n": "",
		"Subject: bl\nLong: " + strings.Repeat("b", 3000) + "\n\nx\n":        msglimit.KeyMaxLineLength,
		strings.Repeat("X-F: "+strings.Repeat("h", 900)+"\n", 250) + "\nx\n": msglimit.KeyMaxHeaderSize,
		"S: x\n\n" + strings.Repeat(strings.Repeat("b", 900)+"\n", 400):      msglimit.KeyMaxMessageSize,
	}
	paths := map[string]string{}
	for msg, key := range files {
		p, err := WritePickup(dir, env, strings.NewReader(msg))
		if err != nil {
			t.Fatal(err)
		}
		paths[p] = key
	}
	n, err := e.in.DrainPickup(dir)
	if err != nil || n != 1 {
		t.Fatalf("DrainPickup = %d, %v; want 1 queued", n, err)
	}
	for p, key := range paths {
		if _, err := os.Stat(p); !os.IsNotExist(err) {
			t.Errorf("%s still in pickup/: %v", filepath.Base(p), err)
		}
		bad := filepath.Join(dir, "bad", filepath.Base(p))
		_, err := os.Stat(bad)
		if key == "" {
			if err == nil {
				t.Errorf("the good file was moved aside")
			}
			continue
		}
		if err != nil {
			t.Errorf("file refused for %s not in bad/: %v", key, err)
		}
		if len(testlog.Lines(logs.String(), "pickup: file refused; moved aside", filepath.Base(p), key)) == 0 {
			t.Errorf("no log line naming %s and %s:\n%s", filepath.Base(p), key, logs.String())
		}
	}
	if msgs := e.q.List(); len(msgs) != 1 {
		t.Errorf("%d queued, want 1", len(msgs))
	}
}

// TestList_StateValidated: the API refuses a state it does not know (400)
// instead of listing nothing, and matches the known ones in any case.
func TestList_StateValidated(t *testing.T) {
	e := startInject(t, false)
	if err := e.q.Enqueue(&queue.Envelope{From: "a@example.com", Recipients: []queue.Recipient{{Address: "b@example.net"}}},
		strings.NewReader("Subject: x\r\n\r\nhi\r\n")); err != nil {
		t.Fatal(err)
	}
	for _, st := range []string{"pending", "PENDING"} {
		if l, err := e.client.List(Filter{State: st}); err != nil || len(l) != 1 {
			t.Errorf("state %q: %d messages, %v; want 1", st, len(l), err)
		}
	}
	for _, st := range []string{"bogus", "deferred"} {
		_, err := e.client.List(Filter{State: st})
		var se *StatusError
		if !errors.As(err, &se) || se.Code != http.StatusBadRequest || !strings.Contains(se.Msg, "pending, delivered, failed, held") {
			t.Errorf("state %q: %v, want a 400 naming the states", st, err)
		}
	}
}

// TestFilter_NullSender: --sender '<>' (or MAILER-DAEMON) finds bounces, the
// messages of the null sender, and nothing else.
func TestFilter_NullSender(t *testing.T) {
	t.Parallel()
	now := time.Now()
	bounce, mail := Message{From: ""}, Message{From: "app@example.com"}
	for _, s := range []string{"<>", "MAILER-DAEMON", "mailer-daemon"} {
		f := Filter{Sender: s}
		if !f.Match(&bounce, now) || f.Match(&mail, now) {
			t.Errorf("--sender %q: bounce %v, other mail %v", s, f.Match(&bounce, now), f.Match(&mail, now))
		}
	}
	if f := (Filter{Sender: "example"}); f.Match(&bounce, now) || !f.Match(&mail, now) {
		t.Errorf("--sender example matches the null sender, or not app@example.com")
	}
}

// A pickup file swapped for a FIFO or a symlink after the directory was
// read (a member of admin.socket_group can) is refused at once: opening a
// FIFO blocked the relay's main loop (signals, reloads, pickup) until
// someone wrote to it, and a symlink had the relay read a file of its
// choosing as its own.
func TestPickup_FIFOAndSymlinkRefused(t *testing.T) {
	t.Parallel()
	e := startInject(t, true)
	dir, err := PreparePickup(t.TempDir(), "")
	if err != nil {
		t.Fatal(err)
	}
	fifo := filepath.Join(dir, "fifo")
	if err := syscall.Mkfifo(fifo, 0o600); err != nil {
		t.Fatal(err)
	}
	good, err := WritePickup(dir, &InjectEnvelope{From: "app@relay.test", Recipients: []string{"x@example.com"}, UID: os.Getuid()},
		strings.NewReader("Subject: x\n\nx\n"))
	if err != nil {
		t.Fatal(err)
	}
	link := filepath.Join(dir, "link")
	if err := os.Symlink(good, link); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 2)
	go func() {
		_, err := e.in.pickupOne(fifo)
		done <- err
	}()
	go func() {
		_, err := e.in.pickupOne(link)
		done <- err
	}()
	for range 2 {
		select {
		case err := <-done:
			if err == nil {
				t.Error("a FIFO or a symlink was queued")
			}
		case <-time.After(10 * time.Second):
			t.Fatal("pickupOne blocked on a FIFO")
		}
	}
	if n := len(e.q.List()); n != 0 {
		t.Errorf("%d messages queued, want none", n)
	}
	if f, err := os.OpenFile(fifo, os.O_WRONLY|syscall.O_NONBLOCK, 0); err == nil {
		f.Close() // lets a blocked open return, so the test ends
	}
}
