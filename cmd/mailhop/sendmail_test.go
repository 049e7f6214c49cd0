package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/smtp"
	"net/textproto"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/mailhop/mailhop/internal/testlog"
	"github.com/mailhop/mailhop/queue"
	"github.com/mailhop/mailhop/relay/admin"
	"github.com/mailhop/mailhop/relay/config"
	"github.com/mailhop/mailhop/relay/inbound"
	"github.com/mailhop/mailhop/relay/msglimit"
	"github.com/mailhop/mailhop/relay/sendmail"
)

func TestParseSendmailArgs(t *testing.T) {
	t.Parallel()
	cases := []struct {
		args []string
		want sendmailOpts
	}{
		{[]string{"-t", "-i"}, sendmailOpts{Options: sendmail.Options{Extract: true, NoDot: true}}},
		{[]string{"-ti", "-oem", "-odi", "-oQ/var/spool", "-v"}, sendmailOpts{Options: sendmail.Options{Extract: true, NoDot: true, Verbose: true}}},
		{[]string{"-oi", "-f", "cron@x.test", "-F", "Cron Daemon", "a@b.test"},
			sendmailOpts{Options: sendmail.Options{NoDot: true, From: "cron@x.test", FromSet: true, FullName: "Cron Daemon", Rcpts: []string{"a@b.test"}}}},
		{[]string{"-fme@x.test", "-FMe", "-C", "/c.toml", "a@b.test", "--config", "/d.toml"},
			sendmailOpts{Options: sendmail.Options{From: "me@x.test", FromSet: true, FullName: "Me", Rcpts: []string{"a@b.test"}}, config: "/d.toml"}},
		{[]string{"-it", "-B", "8BITMIME", "-N", "never", "-bm", "--", "-odd@b.test"},
			sendmailOpts{Options: sendmail.Options{Extract: true, NoDot: true, Notify: "never", Rcpts: []string{"-odd@b.test"}}}},
		{[]string{"-N", "success,delay", "-Rhdrs", "-V", "job-42", "a@b.test"},
			sendmailOpts{Options: sendmail.Options{Notify: "success,delay", Ret: "hdrs", EnvID: "job-42", Rcpts: []string{"a@b.test"}}}},
		{[]string{"-r", "<>", "x@y.test"}, sendmailOpts{Options: sendmail.Options{From: "<>", FromSet: true, Rcpts: []string{"x@y.test"}}}},
	}
	for _, c := range cases {
		got, err := parseSendmailArgs(c.args)
		if err != nil {
			t.Errorf("%q: %v", c.args, err)
			continue
		}
		if !reflect.DeepEqual(*got, c.want) {
			t.Errorf("%q = %+v, want %+v", c.args, *got, c.want)
		}
	}
	for _, bad := range [][]string{{"-bv"}, {"-q"}, {"-f"}, {"-Z"}, {"--frobnicate"},
		{"-N", "never,success", "a@b.test"}, {"-N", "sometimes", "a@b.test"}, {"-R", "body", "a@b.test"},
		{"-V", "two\twords", "a@b.test"}, {"-V", strings.Repeat("x", 101), "a@b.test"}} {
		_, err := parseSendmailArgs(bad)
		se, ok := err.(*sendmail.Error)
		if !ok || se.Code != sendmail.ExUsage {
			t.Errorf("%q: err = %v, want EX_USAGE", bad, err)
		}
	}
}

// writeConfig writes a relay configuration into a new directory (data_dir
// there, one relay listener on a kernel-chosen port, loopback trusted)
// with extra appended, and returns its path.
func writeConfig(t *testing.T, extra string) string {
	t.Helper()
	dir := t.TempDir()
	path := filepath.Join(dir, "mailhop.toml")
	cfg := `hostname = "relay.test"
data_dir = "data"

[[listener]]
address = "127.0.0.1:0"
mode = "relay"

[delivery]
resolvers = ["127.0.0.1:1"]
retry_intervals = ["1h"]
` + extra
	if err := os.WriteFile(path, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// localRelay is the part of a running relay that mail enters through, in
// this process: the SMTP server and the admin socket with the injector,
// queueing into one queue, wired as serve wires them.
type localRelay struct {
	cfgPath string
	smtp    string // host:port of the relay listener
	q       *queue.Queue
}

func startLocalRelay(t *testing.T, extra string) *localRelay {
	t.Helper()
	path := writeConfig(t, extra)
	cfg, err := config.Load(path)
	if err != nil {
		t.Fatal(err)
	}
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	q, err := queue.Open(filepath.Join(cfg.DataDir, "queue"), queue.Options{Logger: log})
	if err != nil {
		t.Fatal(err)
	}
	in, err := inbound.New(cfg, q, log)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", cfg.Listener[0].Address)
	if err != nil {
		t.Fatal(err)
	}
	smtpDone := make(chan struct{})
	go func() { in.Serve(ln, cfg.Listener[0]); close(smtpDone) }()
	inj := &admin.Injector{Queue: q, Config: func() *config.Config { return cfg }, Log: log}
	aln, err := admin.Listen(cfg.Admin.Socket)
	if err != nil {
		t.Fatal(err)
	}
	adm := &admin.Server{Queue: q, Log: log, Extra: map[string]http.Handler{admin.InjectPath: inj}}
	admDone := make(chan struct{})
	go func() { adm.Serve(admin.PeerCredListener(aln)); close(admDone) }()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		in.Shutdown(ctx)
		<-smtpDone
		aln.Close() // stops Serve (Shutdown could race with a Serve not yet started)
		<-admDone
		q.Close()
	})
	return &localRelay{cfgPath: path, smtp: ln.Addr().String(), q: q}
}

// sendSMTP sends msg (LF line endings, made CRLF) over SMTP and returns the
// reply to the end of data: 250, or the refusal's code and text.
func sendSMTP(t *testing.T, addr, msg string) (int, string) {
	t.Helper()
	c, err := smtp.Dial(addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := c.Hello("localhost"); err != nil {
		t.Fatal(err)
	}
	if err := c.Mail("a@example.com"); err != nil {
		t.Fatal(err)
	}
	if err := c.Rcpt("b@example.net"); err != nil {
		t.Fatal(err)
	}
	w, err := c.Data()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.WriteString(w, strings.ReplaceAll(msg, "\n", "\r\n")); err != nil {
		t.Fatal(err)
	}
	err = w.Close()
	var te *textproto.Error
	if errors.As(err, &te) {
		return te.Code, te.Msg
	}
	if err != nil {
		t.Fatal(err)
	}
	return 250, ""
}

// runSendmail runs `mailhop sendmail --config CFG ARGS` in this process.
func runSendmail(cfgPath, msg string, args ...string) (stdout, stderr string, code int) {
	var out, errs bytes.Buffer
	argv := append([]string{"mailhop", "sendmail", "--config", cfgPath}, args...)
	code = run(argv, strings.NewReader(msg), &out, &errs)
	return out.String(), errs.String(), code
}

// limitCases are messages at and just over each limit of limitsTOML. Each
// has From, Date and Message-ID, so sendmail adds nothing to it and SMTP
// and sendmail see the same bytes.
const limitsTOML = `
[policy]
max_message_size = 4096

[limits]
max_line_length = 100
max_header_size = 1024
`

var limitCases = func() []struct{ name, msg, key string } {
	head := "From: a@example.com\nDate: Wed, 04 Mar 2026 05:06:07 +0000\nMessage-ID: <1@relay.test>\n"
	headLen := len(head) + strings.Count(head, "\n")                                 // with CRLF
	field := func(n int) string { return "X-F: " + strings.Repeat("h", n-7) + "\n" } // n octets with CRLF
	body := func(n int) string {                                                     // n octets with CRLF, in lines of 100
		return strings.Repeat(strings.Repeat("b", 98)+"\n", n/100) + strings.Repeat("b", n%100-2) + "\n"
	}
	return []struct{ name, msg, key string }{
		{"header line of 100", head + field(102) + "\nx\n", ""},
		{"header line of 101", head + field(103) + "\nx\n", msglimit.KeyMaxLineLength},
		{"body line of 100", head + "\n" + strings.Repeat("b", 100) + "\n", ""},
		{"body line of 101", head + "\n" + strings.Repeat("b", 101) + "\n", msglimit.KeyMaxLineLength},
		// The empty line that ends the header does not count.
		{"header of 1024", head + strings.Repeat(field(100), 9) + field(1024-headLen-900) + "\nx\n", ""},
		{"header of 1025", head + strings.Repeat(field(100), 9) + field(1025-headLen-900) + "\nx\n", msglimit.KeyMaxHeaderSize},
		{"message of 4096", head + "\n" + body(4096-headLen-2), ""},
		{"message of 4097", head + "\n" + body(4097-headLen-2), msglimit.KeyMaxMessageSize},
	}
}()

// TestSendmail_LimitsAsSMTP sends each message over SMTP and through
// sendmail to the same relay: SMTP's 500 5.5.2 or 552 5.3.4 is sendmail's
// EX_DATAERR naming the limit, SMTP's 250 is sendmail's 0, and only those
// are queued.
func TestSendmail_LimitsAsSMTP(t *testing.T) {
	t.Parallel()
	r := startLocalRelay(t, limitsTOML)
	wantSMTP := map[string]string{"": "250", msglimit.KeyMaxLineLength: "500 5.5.2",
		msglimit.KeyMaxHeaderSize: "552 5.3.4", msglimit.KeyMaxMessageSize: "552 5.3.4"}
	accepted := 0
	for _, c := range limitCases {
		code, text := sendSMTP(t, r.smtp, c.msg)
		if got := strings.TrimSpace(fmt.Sprintf("%d %.5s", code, text)); got != wantSMTP[c.key] {
			t.Errorf("%s: SMTP answered %d %s, want %s", c.name, code, text, wantSMTP[c.key])
		}
		_, errs, exit := runSendmail(r.cfgPath, c.msg, "-f", "a@example.com", "b@example.net")
		switch {
		case c.key == "" && exit != 0:
			t.Errorf("%s: sendmail exit %d (%s), want 0", c.name, exit, errs)
		case c.key != "" && (exit != sendmail.ExDataErr || !strings.Contains(errs, c.key) || strings.Count(errs, "\n") != 1):
			t.Errorf("%s: sendmail exit %d, stderr %q; want 65 and one line naming %s", c.name, exit, errs, c.key)
		}
		if c.key == "" {
			accepted++
		}
	}
	if n := len(r.q.List()); n != 2*accepted {
		t.Errorf("%d messages queued, want %d (each accepted message twice)", n, 2*accepted)
	}
}

// TestSendmail_RelayStopped_LimitsBeforePickup: with the relay down,
// sendmail applies the configuration's limits itself: a message that
// breaks one is refused (EX_DATAERR) and never left in the pickup
// directory.
func TestSendmail_RelayStopped_LimitsBeforePickup(t *testing.T) {
	t.Parallel()
	path := writeConfig(t, limitsTOML)
	pickupDir, err := admin.PreparePickup(filepath.Join(filepath.Dir(path), "data"), "")
	if err != nil {
		t.Fatal(err)
	}
	left := 0
	for _, c := range limitCases {
		_, errs, exit := runSendmail(path, c.msg, "-f", "a@example.com", "b@example.net")
		switch {
		case c.key == "" && exit != 0:
			t.Errorf("%s: exit %d (%s), want 0", c.name, exit, errs)
		case c.key != "" && (exit != sendmail.ExDataErr || !strings.Contains(errs, c.key)):
			t.Errorf("%s: exit %d, stderr %q; want 65 naming %s", c.name, exit, errs, c.key)
		}
		if c.key == "" {
			left++
		}
		ents, err := os.ReadDir(pickupDir)
		if err != nil {
			t.Fatal(err)
		}
		if files := len(ents) - 1; files != left { // bad/ is there too
			t.Fatalf("after %s: %d files in pickup, want %d", c.name, files, left)
		}
	}
}

// TestSendmailBinary_LimitsAndPickup runs the real binary: the cases of the
// bug report against a running relay (EX_DATAERR, one line on stderr,
// nothing queued), the same with the relay stopped (nothing left in the
// pickup directory), and a pickup file over a limit — written by a sendmail
// that did not check — moved to pickup/bad when the relay starts, with a
// log line naming the limit.
func TestSendmailBinary_LimitsAndPickup(t *testing.T) {
	t.Parallel()
	bin := filepath.Join(t.TempDir(), "mailhop")
	if out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	path := writeConfig(t, "[policy]\nmax_message_size = 300000\n")
	dataDir := filepath.Join(filepath.Dir(path), "data")
	pickupDir := filepath.Join(dataDir, admin.PickupDirName)
	logs := &testlog.Buffer{}
	mailhop := func(stdin string, args ...string) (string, string, int) {
		t.Helper()
		cmd := exec.Command(bin, args...)
		cmd.Stdin = strings.NewReader(stdin)
		var out, errs bytes.Buffer
		cmd.Stdout, cmd.Stderr = &out, &errs
		err := cmd.Run()
		var ee *exec.ExitError
		if err != nil && !errors.As(err, &ee) {
			t.Fatal(err)
		}
		return out.String(), errs.String(), cmd.ProcessState.ExitCode()
	}
	send := func(msg string) (string, int) {
		_, errs, code := mailhop(msg, "sendmail", "--config", path, "-f", "a@example.com", "bl@example.net")
		return errs, code
	}
	queued := func() int {
		t.Helper()
		out, errs, code := mailhop("", "queue", "list", "--json", "--config", path)
		var msgs []admin.Message
		if code != 0 || json.Unmarshal([]byte(out), &msgs) != nil {
			t.Fatalf("queue list: exit %d: %s%s", code, out, errs)
		}
		return len(msgs)
	}
	serve := startServe(t, bin, path, filepath.Join(dataDir, "admin.sock"), logs)

	bad := map[string]string{
		msglimit.KeyMaxLineLength:  "Subject: bl\nLong: " + strings.Repeat("b", 3000) + "\n\nx\n",
		msglimit.KeyMaxHeaderSize:  "Subject: bl\n" + strings.Repeat("X-F: "+strings.Repeat("h", 900)+"\n", 250) + "\nx\n",
		msglimit.KeyMaxMessageSize: "Subject: bl\n\n" + strings.Repeat(strings.Repeat("b", 900)+"\n", 400),
	}
	for key, msg := range bad {
		errs, code := send(msg)
		if code != sendmail.ExDataErr || !strings.Contains(errs, key) || strings.Count(errs, "\n") != 1 {
			t.Errorf("relay running, over %s: exit %d, stderr %q; want 65 and one line naming it", key, code, errs)
		}
	}
	good := "Subject: ok\nLong: " + strings.Repeat("b", 992) + "\n\nx\n" // a line of 998
	if errs, code := send(good); code != 0 {
		t.Fatalf("relay running, a line of 998: exit %d: %s", code, errs)
	}
	if n := queued(); n != 1 {
		t.Errorf("relay running: %d queued, want 1", n)
	}
	serve.stop()

	for key, msg := range bad {
		errs, code := send(msg)
		if code != sendmail.ExDataErr || !strings.Contains(errs, key) {
			t.Errorf("relay stopped, over %s: exit %d, stderr %q; want 65 naming it", key, code, errs)
		}
	}
	if files, _ := filepath.Glob(filepath.Join(pickupDir, "[0-9]*")); len(files) != 0 {
		t.Fatalf("relay stopped: refused messages left in pickup: %q", files)
	}
	if errs, code := send(good); code != 0 {
		t.Fatalf("relay stopped, a line of 998: exit %d: %s", code, errs)
	}
	over, err := admin.WritePickup(pickupDir, &admin.InjectEnvelope{From: "a@example.com",
		Recipients: []string{"bl@example.net"}, UID: os.Getuid()}, strings.NewReader(bad[msglimit.KeyMaxLineLength]))
	if err != nil {
		t.Fatal(err)
	}

	startServe(t, bin, path, filepath.Join(dataDir, "admin.sock"), logs) // drains pickup before it opens the socket
	if _, err := os.Stat(filepath.Join(pickupDir, "bad", filepath.Base(over))); err != nil {
		t.Errorf("the pickup file over the line limit is not in pickup/bad: %v", err)
	}
	if files, _ := filepath.Glob(filepath.Join(pickupDir, "[0-9]*")); len(files) != 0 {
		t.Errorf("pickup still holds %q", files)
	}
	if len(testlog.Lines(logs.String(), "pickup: file refused; moved aside", filepath.Base(over), msglimit.KeyMaxLineLength)) == 0 {
		t.Errorf("no log line naming the file and the limit:\n%s", logs.String())
	}
	if n := queued(); n != 2 {
		t.Errorf("after the restart: %d queued, want 2", n)
	}
}

// served is a `mailhop serve` process.
type served struct {
	t      *testing.T
	cmd    *exec.Cmd
	exited chan struct{}
}

// startServe runs `mailhop serve` and waits until its admin socket answers;
// it is stopped (SIGTERM) at the end of the test.
func startServe(t *testing.T, bin, cfgPath, socket string, logs *testlog.Buffer) *served {
	t.Helper()
	cmd := exec.Command(bin, "serve", "--config", cfgPath)
	cmd.Stdout, cmd.Stderr = logs, logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	s := &served{t: t, cmd: cmd, exited: make(chan struct{})}
	go func() { cmd.Wait(); close(s.exited) }()
	t.Cleanup(s.stop)
	deadline := time.Now().Add(20 * time.Second)
	for {
		if c, err := net.Dial("unix", socket); err == nil {
			c.Close()
			return s
		}
		select {
		case <-s.exited:
			t.Fatalf("mailhop serve exited:\n%s", logs.String())
		case <-time.After(20 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			t.Fatalf("mailhop serve: no admin socket after 20s:\n%s", logs.String())
		}
	}
}

// stop sends SIGTERM and waits for the exit (SIGKILL after 10 s).
func (s *served) stop() {
	select {
	case <-s.exited:
		return
	default:
	}
	s.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-s.exited:
	case <-time.After(10 * time.Second):
		s.cmd.Process.Kill()
		<-s.exited
		s.t.Error("mailhop serve did not stop on SIGTERM")
	}
}

// TestSendmail_BS: -bs speaks SMTP on stdin and stdout, as Symfony Mailer
// and Laravel's default sendmail path run it: each message is queued with
// its envelope (a local name qualified), dots unstuffed, and a bad
// recipient, DATA without one, an over-size message each get their reply
// while the session goes on. It was refused with a usage error (exit 64).
func TestSendmail_BS(t *testing.T) {
	t.Parallel()
	r := startLocalRelay(t, limitsTOML)
	in := "EHLO app.local\r\nMAIL FROM:<app@example.com> SIZE=100\r\nRCPT TO:<b@example.net>\r\nRCPT TO:<root>\r\nDATA\r\n" +
		"Subject: one\r\n\r\n..dot\r\n.\r\n" +
		"MAIL FROM:<>\r\nRCPT TO:<bad address>\r\nDATA\r\nRSET\r\n" +
		"MAIL FROM:<app@example.com>\r\nRCPT TO:<c@example.net>\r\nDATA\r\n" + strings.Repeat("x\r\n", 2000) + ".\r\n" +
		"MAIL FROM:<app@example.com>\r\nRCPT TO:<c@example.net>\r\nDATA\r\n" + strings.Repeat("x", 101) + "\r\n.\r\n" +
		"NOOP\r\nQUIT\r\n"
	out, errs, code := runSendmail(r.cfgPath, in, "-bs", "-i")
	if code != 0 {
		t.Fatalf("exit %d: %s", code, errs)
	}
	want := "220 250 250 250 250 354 250 250 501 554 250 250 250 354 552 250 250 354 500 250 221"
	if got := replyCodes(out); got != want {
		t.Errorf("replies %s, want %s:\n%s", got, want, out)
	}
	ids := r.q.List()
	if len(ids) != 1 {
		t.Fatalf("%d messages queued, want 1", len(ids))
	}
	qe, err := r.q.Get(ids[0].ID)
	if err != nil {
		t.Fatal(err)
	}
	if qe.From != "app@example.com" || len(qe.Recipients) != 2 || qe.Recipients[1].Address != "root@relay.test" {
		t.Errorf("envelope %+v", qe)
	}
	b, err := r.q.Body(qe.ID)
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	body, _ := io.ReadAll(b)
	if !strings.HasSuffix(string(body), "\r\n\r\n.dot\r\n") || !strings.Contains(string(body), "\r\nMessage-ID: <") {
		t.Errorf("queued %q", body)
	}
}

// -f "Name <addr>" gives the address as the envelope sender, as Postfix's
// sendmail reads it; it was refused, exit 65.
func TestSendmail_FromWithDisplayName(t *testing.T) {
	t.Parallel()
	r := startLocalRelay(t, "")
	if _, errs, code := runSendmail(r.cfgPath, "Subject: x\n\nx\n", "-f", "Build Bot <bot@example.com>", "b@example.net"); code != 0 {
		t.Fatalf("exit %d: %s", code, errs)
	}
	ids := r.q.List()
	if len(ids) != 1 {
		t.Fatalf("%d messages queued, want 1", len(ids))
	}
	if qe, err := r.q.Get(ids[0].ID); err != nil || qe.From != "bot@example.com" {
		t.Errorf("envelope %+v (%v), want sender bot@example.com", qe, err)
	}
}

// Each recipient argument is an address list, as Postfix's sendmail reads
// it ("Name <addr>" was refused, exit 65, naming "Name <addr"), and a
// quoted local part keeps its quotes, from the arguments, from -t's header
// fields and from -bs (john smith@example.net was refused; "a,b"@example.net
// was split in two).
func TestSendmail_RecipientLists(t *testing.T) {
	t.Parallel()
	r := startLocalRelay(t, "")
	msg := "To: \"john smith\"@example.net, Ops <ops@example.net>\nSubject: x\n\nx\n"
	if _, errs, code := runSendmail(r.cfgPath, msg, "-t", "Bob <bob@example.net>, c@example.net", "root", `"a,b"@example.net`); code != 0 {
		t.Fatalf("exit %d: %s", code, errs)
	}
	bs := "MAIL FROM:<app@example.com>\r\nRCPT TO:<\"a,b\"@example.net>\r\nDATA\r\nSubject: y\r\n\r\ny\r\n.\r\nQUIT\r\n"
	if out, errs, code := runSendmail(r.cfgPath, bs, "-bs"); code != 0 || !strings.Contains(out, "250 2.0.0 Ok: ") {
		t.Fatalf("-bs: exit %d: %s%s", code, out, errs)
	}
	got := map[string]bool{}
	for _, m := range r.q.List() {
		qe, err := r.q.Get(m.ID)
		if err != nil {
			t.Fatal(err)
		}
		var rcpts []string
		for _, rc := range qe.Recipients {
			rcpts = append(rcpts, rc.Address)
		}
		got[strings.Join(rcpts, " ")] = true
	}
	want := []string{`bob@example.net c@example.net root@relay.test "a,b"@example.net "john smith"@example.net ops@example.net`, `"a,b"@example.net`}
	for _, w := range want {
		if !got[w] {
			t.Errorf("no message to %s; queued: %v", w, got)
		}
	}
}

// Without -F the full name of an added From: comes from the NAME
// environment variable, as with Postfix's sendmail; -F overrides it.
func TestSendmail_FullNameFromEnvironment(t *testing.T) {
	t.Setenv("NAME", "Env Name")
	r := startLocalRelay(t, "")
	for _, args := range [][]string{{"-f", "bot@example.com", "b@example.net"}, {"-F", "Flag Name", "-f", "bot@example.com", "b@example.net"}} {
		if _, errs, code := runSendmail(r.cfgPath, "Subject: x\n\nx\n", args...); code != 0 {
			t.Fatalf("%v: exit %d: %s", args, code, errs)
		}
	}
	var froms []string
	for _, m := range r.q.List() {
		b, err := r.q.Body(m.ID)
		if err != nil {
			t.Fatal(err)
		}
		content, err := io.ReadAll(b)
		b.Close()
		if err != nil {
			t.Fatal(err)
		}
		for _, line := range strings.Split(string(content), "\r\n") {
			if strings.HasPrefix(line, "From: ") {
				froms = append(froms, line)
			}
		}
	}
	slices.Sort(froms)
	want := []string{`From: "Env Name" <bot@example.com>`, `From: "Flag Name" <bot@example.com>`}
	if !slices.Equal(froms, want) {
		t.Errorf("From fields %q, want %q", froms, want)
	}
}

// A parameter -bs does not offer is refused with 555 (RFC 5321 §4.1.1.11)
// instead of being dropped unseen (a NOTIFY=NEVER, before DSN was offered,
// was ignored, so the sender got the bounce it had declined), and a
// declared SIZE over the limit is refused at MAIL.
func TestSendmail_BSParameters(t *testing.T) {
	t.Parallel()
	r := startLocalRelay(t, limitsTOML)
	in := "EHLO app.local\r\n" +
		"MAIL FROM:<app@example.com> SIZE=5000\r\n" +
		"MAIL FROM:<app@example.com> REQUIRETLS\r\n" +
		"MAIL FROM:<app@example.com> SIZE=x\r\n" +
		"MAIL FROM:<app@example.com> BODY=8BITMIME SIZE=100\r\n" +
		"RCPT TO:<b@example.net> FOO=BAR\r\n" +
		"RCPT TO:<c@example.net>\r\nDATA\r\nSubject: one\r\n\r\nx\r\n.\r\nQUIT\r\n"
	bsOneRecipient(t, r, in, "220 250 552 555 501 250 555 250 354 250 221", "c@example.net")
}

// TestSendmail_BSDSNAndSMTPUTF8: -bs offers DSN and SMTPUTF8 as the relay's
// listeners do, and the message is queued with what they gave: RET and
// ENVID of MAIL (xtext decoded; a space is printable ASCII, as the
// listeners take it, a tab is not), NOTIFY and ORCPT of each RCPT (-N for a
// recipient without NOTIFY), SMTPUTF8 and a UTF-8 recipient. Without
// SMTPUTF8 a UTF-8 address gets 553 5.6.7, and a malformed or repeated DSN
// parameter 501. Both were refused with 555.
func TestSendmail_BSDSNAndSMTPUTF8(t *testing.T) {
	t.Parallel()
	r := startLocalRelay(t, "")
	in := "EHLO app.local\r\n" +
		"MAIL FROM:<app@example.com> RET=hdrs ENVID=job+20+2B42 SMTPUTF8\r\n" +
		"RCPT TO:<b@example.net> NOTIFY=NEVER\r\n" +
		"RCPT TO:<jörg@bücher.example> NOTIFY=success,FAILURE ORCPT=rfc822;orig+2Bx@example.org\r\n" +
		"RCPT TO:<c@example.net>\r\n" +
		"DATA\r\nSubject: one\r\n\r\nx\r\n.\r\n" +
		"MAIL FROM:<app@example.com>\r\n" +
		"RCPT TO:<jörg@bücher.example>\r\n" +
		"RCPT TO:<d@example.net> NOTIFY=NEVER NOTIFY=NEVER\r\n" +
		"RCPT TO:<d@example.net> NOTIFY=NEVER,SUCCESS\r\n" +
		"RCPT TO:<d@example.net> ORCPT=bogus\r\n" +
		"RSET\r\nMAIL FROM:<app@example.com> ENVID=two+09words\r\n" +
		"MAIL FROM:<app@example.com> RET=BODY\r\n" +
		"QUIT\r\n"
	qe, out := bsQueued(t, r, in, "220 250 250 250 250 250 354 250 250 553 501 501 501 250 501 501 221", "-N", "delay")
	if !strings.Contains(out, "250-DSN\r\n") || !strings.Contains(out, "250-SMTPUTF8\r\n") {
		t.Errorf("EHLO does not offer DSN and SMTPUTF8:\n%s", out)
	}
	if qe.Ret != "HDRS" || qe.EnvID != "job +42" || !qe.SMTPUTF8 {
		t.Errorf("RET %q, ENVID %q, SMTPUTF8 %v; want HDRS, \"job +42\", true", qe.Ret, qe.EnvID, qe.SMTPUTF8)
	}
	want := []queue.Recipient{
		{Address: "b@example.net", Notify: queue.NotifyNever},
		{Address: "jörg@bücher.example", Notify: queue.NotifySuccess | queue.NotifyFailure, ORCPT: "RFC822;orig+x@example.org"},
		{Address: "c@example.net", Notify: queue.NotifyDelay},
	}
	if len(qe.Recipients) != len(want) {
		t.Fatalf("recipients %+v, want %+v", qe.Recipients, want)
	}
	for i, w := range want {
		if g := qe.Recipients[i]; g.Address != w.Address || g.Notify != w.Notify || g.ORCPT != w.ORCPT {
			t.Errorf("recipient %d = %q notify %v orcpt %q; want %q notify %v orcpt %q", i, g.Address, g.Notify, g.ORCPT, w.Address, w.Notify, w.ORCPT)
		}
	}
}

// TestSendmail_BSSMTPUTF8TakesNoValue: -bs reads SMTPUTF8 as the relay's
// listeners do (go-smtp patch 63): the keyword in any case and after BODY
// is taken, and with a value, an empty one too, it gets 501 5.5.4 with the
// listeners' text. "SMTPUTF8=" was taken as SMTPUTF8, and "SMTPUTF8=yes"
// got 555 as an unknown parameter.
func TestSendmail_BSSMTPUTF8TakesNoValue(t *testing.T) {
	t.Parallel()
	r := startLocalRelay(t, "")
	in := "EHLO app.local\r\n" +
		"MAIL FROM:<app@example.com> SMTPUTF8=\r\n" +
		"MAIL FROM:<app@example.com> smtputf8=yes\r\n" +
		"MAIL FROM:<app@example.com> BODY=8BITMIME smtputf8\r\n" +
		"RCPT TO:<jörg@bücher.example>\r\n" +
		"DATA\r\nSubject: one\r\n\r\nx\r\n.\r\nQUIT\r\n"
	qe, out := bsQueued(t, r, in, "220 250 501 501 250 250 354 250 221")
	if n := strings.Count(out, "501 5.5.4 MAIL parameter SMTPUTF8 takes no value\r\n"); n != 2 {
		t.Errorf("%d refusals worded as the listeners', want 2:\n%s", n, out)
	}
	if !qe.SMTPUTF8 || len(qe.Recipients) != 1 || qe.Recipients[0].Address != "jörg@bücher.example" {
		t.Errorf("envelope %+v, want SMTPUTF8 and the one UTF-8 recipient", qe)
	}
}

// TestSendmail_BSBareVRFYAndRSETWithParameter: -bs answers a VRFY without
// an address and an RSET with a parameter 501 5.5.4, with the listeners'
// texts (go-smtp patch 65), and the RSET refused leaves the transaction
// as it was: its message is queued with its recipients. They got 252 and
// 250 (the RSET ending the transaction, so that its DATA got 503), where
// the listeners answer 501.
func TestSendmail_BSBareVRFYAndRSETWithParameter(t *testing.T) {
	t.Parallel()
	r := startLocalRelay(t, "")
	in := "EHLO app.local\r\n" +
		"VRFY\r\n" +
		"VRFY ops@example.net\r\n" +
		"MAIL FROM:<app@example.com>\r\n" +
		"RCPT TO:<ops@example.net>\r\n" +
		"RSET x\r\n" +
		"DATA\r\nSubject: one\r\n\r\nx\r\n.\r\nQUIT\r\n"
	qe, out := bsQueued(t, r, in, "220 250 501 252 250 250 501 354 250 221")
	for _, want := range []string{"501 5.5.4 Syntax: VRFY address\r\n", "501 5.5.4 Syntax: RSET\r\n"} {
		if !strings.Contains(out, want) {
			t.Errorf("no %q in the dialog:\n%s", strings.TrimSpace(want), out)
		}
	}
	if len(qe.Recipients) != 1 || qe.Recipients[0].Address != "ops@example.net" {
		t.Errorf("recipients %+v, want ops@example.net (the transaction kept through the refused RSET)", qe.Recipients)
	}
}

// TestSendmail_BSORCPTRefusedAtRCPT: an ORCPT the relay would not take (a
// control character, which utf-8-addr-xtext can carry; over 1,000 octets)
// gets 501 at RCPT. It got 250 there, and then the whole message, to every
// recipient, was refused with 554 after DATA.
func TestSendmail_BSORCPTRefusedAtRCPT(t *testing.T) {
	t.Parallel()
	r := startLocalRelay(t, "")
	in := "EHLO app.local\r\nMAIL FROM:<app@example.com>\r\n" +
		"RCPT TO:<a@example.net> ORCPT=utf-8;a\\x{09}b@example.org\r\n" +
		"RCPT TO:<b@example.net> ORCPT=rfc822;" + strings.Repeat("x", 1000) + "@example.org\r\n" +
		"RCPT TO:<c@example.net>\r\n" +
		"DATA\r\nSubject: one\r\n\r\nx\r\n.\r\nQUIT\r\n"
	bsOneRecipient(t, r, in, "220 250 250 501 501 250 354 250 221", "c@example.net")
}

// TestSendmail_BSEnvelopeWithoutDSN_ForAnOlderRelay: the per-recipient
// NOTIFY and ORCPT lists go to the relay only when some RCPT gave one. A
// relay from before them refuses an envelope with fields it does not know
// (400), and one still runs after the binary is upgraded until its
// restart: every -bs message, with DSN parameters or not, carried both
// lists (of empty strings) and was refused. The envelope is read from the
// pickup directory (no relay running), as that relay would decode it.
func TestSendmail_BSEnvelopeWithoutDSN_ForAnOlderRelay(t *testing.T) {
	t.Parallel()
	path := writeConfig(t, "")
	pickupDir, err := admin.PreparePickup(filepath.Join(filepath.Dir(path), "data"), "")
	if err != nil {
		t.Fatal(err)
	}
	// The envelope of a relay from before -bs offered DSN.
	type olderEnvelope struct {
		From       string   `json:"from"`
		Recipients []string `json:"recipients"`
		User       string   `json:"user,omitempty"`
		UID        int      `json:"uid"`
		Notify     string   `json:"notify,omitempty"`
		Ret        string   `json:"ret,omitempty"`
		EnvID      string   `json:"envid,omitempty"`
	}
	seen := map[string]bool{}
	next := func(in string) string { // the envelope line of the file in leaves in pickup
		t.Helper()
		if _, errs, code := runSendmail(path, in, "-bs"); code != 0 {
			t.Fatalf("exit %d: %s", code, errs)
		}
		ents, err := os.ReadDir(pickupDir)
		if err != nil {
			t.Fatal(err)
		}
		for _, e := range ents {
			if e.Type().IsRegular() && !seen[e.Name()] {
				seen[e.Name()] = true
				data, err := os.ReadFile(filepath.Join(pickupDir, e.Name()))
				if err != nil {
					t.Fatal(err)
				}
				line, _, _ := strings.Cut(string(data), "\n")
				return line
			}
		}
		t.Fatal("no new file in the pickup directory")
		return ""
	}
	const session = "EHLO app.local\r\nMAIL FROM:<app@example.com>\r\nRCPT TO:<a@example.net>\r\nRCPT TO:<b@example.net>%s\r\n" +
		"DATA\r\nSubject: one\r\n\r\nx\r\n.\r\nQUIT\r\n"

	line := next(fmt.Sprintf(session, ""))
	dec := json.NewDecoder(strings.NewReader(line))
	dec.DisallowUnknownFields()
	var old olderEnvelope
	if err := dec.Decode(&old); err != nil || len(old.Recipients) != 2 {
		t.Errorf("a relay from before per-recipient DSN cannot read the envelope of plain -bs mail: %v: %s", err, line)
	}

	line = next(fmt.Sprintf(session, " NOTIFY=NEVER"))
	var env admin.InjectEnvelope
	if err := json.Unmarshal([]byte(line), &env); err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(env.RcptNotify, []string{"", "NEVER"}) || env.ORCPT != nil {
		t.Errorf("rcpt_notify %q, orcpt %q; want [\"\" NEVER] and none: %s", env.RcptNotify, env.ORCPT, line)
	}
}

// bsOneRecipient runs a sendmail -bs session of in, and checks its reply
// codes and that it queued one message, to rcpt alone.
func bsOneRecipient(t *testing.T, r *localRelay, in, wantCodes, rcpt string) {
	t.Helper()
	if qe, _ := bsQueued(t, r, in, wantCodes); len(qe.Recipients) != 1 || qe.Recipients[0].Address != rcpt {
		t.Errorf("envelope %+v, want the one recipient %s", qe, rcpt)
	}
}

// bsQueued runs a sendmail -bs session of in with args, checks its reply
// codes, and returns the one message it queued and its output.
func bsQueued(t *testing.T, r *localRelay, in, wantCodes string, args ...string) (*queue.Envelope, string) {
	t.Helper()
	out, errs, code := runSendmail(r.cfgPath, in, append([]string{"-bs"}, args...)...)
	if code != 0 {
		t.Fatalf("exit %d: %s", code, errs)
	}
	if got := replyCodes(out); got != wantCodes {
		t.Errorf("replies %s, want %s:\n%s", got, wantCodes, out)
	}
	ids := r.q.List()
	if len(ids) != 1 {
		t.Fatalf("%d messages queued, want 1", len(ids))
	}
	qe, err := r.q.Get(ids[0].ID)
	if err != nil {
		t.Fatal(err)
	}
	return qe, out
}

// -bs reads a path up to the '>' that ends it, not one inside a quoted
// local part ("a>b"@example.net is an address), and something stuck to
// the path is a syntax error (501), not a parameter it does not know (555).
func TestSendmail_BSPathSyntax(t *testing.T) {
	t.Parallel()
	r := startLocalRelay(t, "")
	in := "EHLO app.local\r\nMAIL FROM:<app@example.com>\r\n" +
		"RCPT TO:<\"a>b\"@example.net>\r\n" +
		"RCPT TO:<Ops <ops@example.net>>\r\n" +
		"RCPT TO:<c@example.net>junk\r\n" +
		"DATA\r\nSubject: one\r\n\r\nx\r\n.\r\nQUIT\r\n"
	bsOneRecipient(t, r, in, "220 250 250 250 501 501 354 250 221", `"a>b"@example.net`)
}

// replyCodes returns the codes of the replies in an SMTP server's output
// (the last line of each), separated by spaces.
func replyCodes(out string) string {
	var codes []string
	for _, l := range strings.Split(strings.TrimSuffix(out, "\r\n"), "\r\n") {
		if len(l) > 3 && l[3] == ' ' {
			codes = append(codes, l[:3])
		}
	}
	return strings.Join(codes, " ")
}
