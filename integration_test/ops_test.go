package integration_test

// Operations: what an operator and the applications on a host rely on.
//
//	cron / PHP ──stdin──▶ mailhop sendmail ──admin socket (POST /v1/inject)──▶ mailhop serve
//	                           │ relay stopped                                     ▲ drains at start
//	                           └──────▶ data_dir/pickup/<file> ────────────────────┘
//
//	Prometheus ──GET /metrics──▶ admin.metrics_address
//	operator ──SIGHUP (reload), SIGTERM (drain and stop)──▶ mailhop serve

import (
	"bufio"
	"bytes"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"
	"golang.org/x/crypto/bcrypt"

	"github.com/mailhop/mailhop/dnsmx/dnstest"
	"github.com/mailhop/mailhop/internal/testlog"
	"github.com/mailhop/mailhop/relay/admin"
	"github.com/mailhop/mailhop/relay/config"
	"github.com/mailhop/mailhop/relay/outbound/smtptest"
)

// runBin runs the binary at bin with args and stdin; it returns stdout,
// stderr and the exit code.
func runBin(t testing.TB, bin string, stdin string, args ...string) (string, string, int) {
	t.Helper()
	cmd := exec.Command(bin, args...)
	cmd.Stdin = strings.NewReader(stdin)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	done := make(chan error, 1)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { done <- cmd.Wait() }()
	select {
	case <-done:
	case <-time.After(60 * time.Second):
		cmd.Process.Kill()
		<-done
		t.Fatalf("%s %v did not finish", bin, args)
	}
	return out.String(), errb.String(), cmd.ProcessState.ExitCode()
}

// sendmail runs `mailhop sendmail ARGS --config CFG` with msg on stdin.
func (r *relay) sendmail(msg string, args ...string) (string, string, int) {
	r.t.Helper()
	return runBin(r.t, mailhopBin, msg, append(append([]string{"sendmail"}, args...), "--config", r.cfgPath)...)
}

// queuedBodies stops the relay and returns each queued message's body by ID.
func (r *relay) queuedBodies() map[string]string {
	r.t.Helper()
	r.stop()
	q := r.openQueue()
	out := map[string]string{}
	for _, e := range q.List() {
		out[e.ID] = string(body(r.t, q, e.ID))
	}
	q.Close()
	return out
}

func rcptAddrs(m admin.Message) []string {
	var out []string
	for _, r := range m.Recipients {
		out = append(out, r.Address)
	}
	sort.Strings(out)
	return out
}

func me(t testing.TB) *user.User {
	t.Helper()
	u, err := user.Current()
	if err != nil {
		t.Fatal(err)
	}
	return u
}

// The message cron writes: no Date, no Message-ID, a bare local name.
const cronMessage = "From: root (Cron Daemon)\n" +
	"To: ops@example.com\n" +
	"Cc: root\n" +
	"Bcc: audit@example.org\n" +
	"Subject: Cron <root@host> /usr/local/bin/backup --nightly\n" +
	"Content-Type: text/plain; charset=UTF-8\n" +
	"X-Cron-Env: <SHELL=/bin/sh>\n" +
	"\n" +
	"backup: 12 files\n" +
	"..a line with dots\n" +
	"done\n"

func TestOpsSendmailCronMessage(t *testing.T) {
	t.Parallel()
	r := startRelay(t, relayOpts{})
	out, errs, code := r.sendmail(cronMessage, "-t", "-i", "-v")
	if code != 0 {
		t.Fatalf("sendmail -t: exit %d: %s%s", code, out, errs)
	}
	id := strings.TrimSpace(strings.TrimPrefix(strings.TrimSpace(out), "queued as"))
	msgs := r.list()
	if len(msgs) != 1 || msgs[0].ID != id {
		t.Fatalf("queue = %+v, want one message %s", msgs, id)
	}
	u := me(t)
	m := msgs[0]
	if want := u.Username + "@mx.relay.test"; m.From != want {
		t.Errorf("envelope sender = %q, want %q", m.From, want)
	}
	if got, want := rcptAddrs(m), []string{"audit@example.org", "ops@example.com", "root@mx.relay.test"}; !equalStrings(got, want) {
		t.Errorf("recipients = %q, want %q", got, want)
	}
	if m.User != u.Username {
		t.Errorf("user = %q, want %q", m.User, u.Username)
	}
	b := r.queuedBodies()[id]
	wantRcv := fmt.Sprintf("Received: from local user %s (uid %s)\r\n\tby mx.relay.test (mailhop) with local id %s;", u.Username, u.Uid, id)
	if !strings.HasPrefix(b, wantRcv) {
		t.Errorf("body does not start with %q:\n%s", wantRcv, b)
	}
	for _, w := range []string{"\r\nFrom: root@mx.relay.test (Cron Daemon)\r\n", "\r\nSubject: Cron <root@host> /usr/local/bin/backup --nightly\r\n",
		"\r\nDate: ", "\r\nMessage-ID: <", "\r\n\r\nbackup: 12 files\r\n..a line with dots\r\ndone\r\n"} {
		if !strings.Contains(b, w) {
			t.Errorf("queued body lacks %q:\n%s", w, b)
		}
	}
	if strings.Contains(b, "Bcc") || strings.Contains(b, "audit@") {
		t.Errorf("Bcc was not removed:\n%s", b)
	}
	if !strings.HasSuffix(b, "done\r\n") {
		t.Errorf("body does not end with the message's last line: %q", b[max(0, len(b)-40):])
	}
}

func equalStrings(a, b []string) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

// Debian's cron calls `sendmail -FCronDaemon -i -B8BITMIME -oem ADDR`;
// installed as /usr/sbin/sendmail, mailhop sees argv[0] = "sendmail".
func TestOpsSendmailAsSymlink(t *testing.T) {
	t.Parallel()
	r := startRelay(t, relayOpts{})
	link := filepath.Join(t.TempDir(), "sendmail")
	if err := os.Symlink(mailhopBin, link); err != nil {
		t.Fatal(err)
	}
	msg := "Subject: Cron <root@host> date\n\nThu Jan  1 00:00:00 UTC 2026\n.\nafter a lone dot (-i keeps it)\n"
	out, errs, code := runBin(t, link, msg, "-C", r.cfgPath, "-FCronDaemon", "-i", "-B8BITMIME", "-oem", "ops@example.com")
	if code != 0 {
		t.Fatalf("sendmail (symlink): exit %d: %s%s", code, out, errs)
	}
	// Without -i a lone dot ends the message.
	out, errs, code = runBin(t, link, "Subject: dot\n\nbefore\n.\nafter\n", "-C", r.cfgPath, "-oem", "-odi", "dot@example.com")
	if code != 0 {
		t.Fatalf("sendmail (symlink, no -i): exit %d: %s%s", code, out, errs)
	}
	msgs := r.list()
	if len(msgs) != 2 {
		t.Fatalf("queued %d messages, want 2", len(msgs))
	}
	u := me(t)
	bodies := r.queuedBodies()
	for _, m := range msgs {
		b := bodies[m.ID]
		switch rcptAddrs(m)[0] {
		case "ops@example.com":
			want := fmt.Sprintf("\r\nFrom: \"CronDaemon\" <%s@mx.relay.test>\r\n", u.Username)
			if !strings.Contains(b, want) || !strings.Contains(b, "\r\n.\r\nafter a lone dot (-i keeps it)\r\n") {
				t.Errorf("body lacks %q or the text after the dot:\n%s", want, b)
			}
		case "dot@example.com":
			if !strings.HasSuffix(b, "\r\n\r\nbefore\r\n") {
				t.Errorf("without -i, the message did not end at the lone dot:\n%q", b)
			}
		default:
			t.Errorf("unexpected message %+v", m)
		}
	}
	// No recipient at all is EX_DATAERR; an unknown option EX_USAGE.
	if _, _, code := runBin(t, link, "Subject: x\n\nx\n", "-C", r.cfgPath); code != 65 {
		t.Errorf("no recipients: exit %d, want 65 (EX_DATAERR)", code)
	}
	if _, _, code := runBin(t, link, "x\n", "-C", r.cfgPath, "-Z", "a@b.test"); code != 64 {
		t.Errorf("unknown option: exit %d, want 64 (EX_USAGE)", code)
	}
}

func TestOpsSendmailPickupWhenStopped(t *testing.T) {
	t.Parallel()
	r := startRelay(t, relayOpts{})
	r.stop()
	pickup := filepath.Join(r.dir, "data", "pickup")

	// Neither the relay nor the pickup directory: EX_TEMPFAIL, said clearly.
	if err := os.RemoveAll(pickup); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(pickup, nil, 0o600); err != nil { // a file where the directory should be
		t.Fatal(err)
	}
	_, errs, code := r.sendmail("Subject: lost?\n\nx\n", "ops@example.com")
	if code != 75 || !strings.Contains(errs, "NOT sent") {
		t.Fatalf("relay down, no pickup: exit %d (%s), want 75 and a clear message", code, errs)
	}
	if err := os.Remove(pickup); err != nil {
		t.Fatal(err)
	}
	if err := os.Mkdir(pickup, 0o700); err != nil {
		t.Fatal(err)
	}

	// Relay down, pickup writable: the message waits there.
	out, errs, code := r.sendmail("Subject: later\n\nwritten while stopped\n", "-v", "-f", "app@example.com", "later@example.net")
	if code != 0 {
		t.Fatalf("sendmail with the relay stopped: exit %d: %s%s", code, out, errs)
	}
	files := pickupFiles(t, pickup)
	if len(files) != 1 {
		t.Fatalf("pickup holds %q, want one file", files)
	}
	// The relay queues it at start and deletes the file.
	r.start()
	msgs := r.list()
	if len(msgs) != 1 || msgs[0].From != "app@example.com" || rcptAddrs(msgs[0])[0] != "later@example.net" {
		t.Fatalf("after start the queue = %+v", msgs)
	}
	if files := pickupFiles(t, pickup); len(files) != 0 {
		t.Errorf("pickup still holds %q", files)
	}
	if !r.waitLine("pickup", msgs[0].ID) {
		t.Errorf("no log line with the queue ID about the pickup\n%s", r.logs.String())
	}
	b := r.queuedBodies()[msgs[0].ID]
	if !strings.Contains(b, "from local user "+me(t).Username) || !strings.HasSuffix(b, "\r\n\r\nwritten while stopped\r\n") {
		t.Errorf("queued body:\n%s", b)
	}
}

func pickupFiles(t testing.TB, dir string) []string {
	t.Helper()
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, e := range ents {
		if e.Type().IsRegular() {
			out = append(out, e.Name())
		}
	}
	return out
}

func TestOpsQueueCommandsOnRunningServer(t *testing.T) {
	t.Parallel()
	r := startRelay(t, relayOpts{}) // parked route: everything stays deferred
	send := func(from string, rcpts ...string) string {
		t.Helper()
		out, errs, code := r.sendmail("Subject: q\n\nx\n", append([]string{"-v", "-f", from}, rcpts...)...)
		if code != 0 {
			t.Fatalf("sendmail: exit %d: %s%s", code, out, errs)
		}
		return strings.TrimSpace(strings.TrimPrefix(strings.TrimSpace(out), "queued as"))
	}
	a := send("a@example.com", "x@one.test")
	b := send("b@example.com", "y@two.test", "z@one.test")
	c := send("c@example.com", "w@three.test")
	for _, id := range []string{a, b, c} {
		waitFor(t, "a first attempt of "+id, 20*time.Second, func() bool {
			for _, m := range r.list() {
				if m.ID == id {
					return m.Attempts >= 1
				}
			}
			return false
		})
	}
	list := func(args ...string) []string {
		t.Helper()
		out, errs, code := r.mailhop(append([]string{"queue", "list", "--json"}, args...)...)
		if code != 0 {
			t.Fatalf("queue list %v: exit %d: %s", args, code, errs)
		}
		var msgs []admin.Message
		if err := json.Unmarshal([]byte(out), &msgs); err != nil {
			t.Fatalf("queue list %v: %v\n%s", args, err, out)
		}
		var ids []string
		for _, m := range msgs {
			ids = append(ids, m.ID)
		}
		sort.Strings(ids)
		return ids
	}
	sorted := func(ids ...string) []string { sort.Strings(ids); return ids }
	run := func(args ...string) string {
		t.Helper()
		out, errs, code := r.mailhop(append([]string{"queue"}, args...)...)
		if code != 0 {
			t.Fatalf("queue %v: exit %d: %s%s", args, code, out, errs)
		}
		return out
	}
	checks := []struct {
		args []string
		want []string
	}{
		{nil, sorted(a, b, c)},
		{[]string{"--domain", "one.test"}, sorted(a, b)},
		{[]string{"--domain", "two.test"}, []string{b}},
		{[]string{"--sender", "b@example"}, []string{b}},
		{[]string{"--rcpt", "w@three"}, []string{c}},
		{[]string{"--state", "pending"}, sorted(a, b, c)},
		{[]string{"--state", "delivered"}, nil},
		{[]string{"--min-age", "1h"}, nil},
	}
	for _, ch := range checks {
		if got := list(ch.args...); !equalStrings(got, ch.want) {
			t.Errorf("queue list %v = %q, want %q", ch.args, got, ch.want)
		}
	}

	// show, as a table and as JSON.
	if out := run("show", b); !strings.Contains(out, b) || !strings.Contains(out, "y@two.test") || !strings.Contains(out, "z@one.test") {
		t.Errorf("queue show:\n%s", out)
	}
	var m admin.Message
	if err := json.Unmarshal([]byte(run("show", b, "--json")), &m); err != nil || m.ID != b || m.From != "b@example.com" || len(m.Recipients) != 2 {
		t.Errorf("queue show --json = %+v, %v", m, err)
	}
	if _, _, code := r.mailhop("queue", "show", "NOSUCHID"); code == 0 {
		t.Errorf("queue show of an unknown ID succeeded")
	}

	// hold and release.
	run("hold", a)
	if got := list("--state", "held"); !equalStrings(got, []string{a}) {
		t.Errorf("held = %q, want [%s]", got, a)
	}
	run("release", a)
	if got := list("--state", "held"); len(got) != 0 {
		t.Errorf("held after release = %q", got)
	}

	// flush of one domain, then of all: both answer, nothing is lost.
	before := r.list()
	run("flush", "--domain", "three.test")
	run("flush")
	waitFor(t, "the flushed messages to be tried again", 20*time.Second, func() bool {
		tried := 0
		for _, m := range r.list() {
			for _, o := range before {
				if o.ID == m.ID && m.Attempts > o.Attempts {
					tried++
				}
			}
		}
		return tried == 3
	})

	// delete: gone without a report. bounce: gone, a report to the sender.
	run("delete", c)
	run("bounce", b)
	waitFor(t, "the bounced message to leave the queue", 20*time.Second, func() bool {
		got := list()
		return len(got) == 2 && !containsID(got, b) && !containsID(got, c)
	})
	var report *admin.Message
	for _, m := range r.list() {
		if m.ID != a {
			report = &m
		}
	}
	if report == nil || report.From != "" || rcptAddrs(*report)[0] != "b@example.com" {
		t.Errorf("after bounce, the queue should hold a report from <> to b@example.com: %+v", report)
	}
	if _, _, code := r.mailhop("queue", "hold", c); code == 0 {
		t.Errorf("hold of a deleted message succeeded")
	}
}

func containsID(ids []string, id string) bool {
	for _, x := range ids {
		if x == id {
			return true
		}
	}
	return false
}

// scrape returns the metrics at addr as "name{labels}" → value.
func scrape(t testing.TB, addr string) map[string]float64 {
	t.Helper()
	resp, err := http.Get("http://" + addr + "/metrics")
	if err != nil {
		t.Fatalf("GET /metrics: %v", err)
	}
	defer resp.Body.Close()
	out := map[string]float64{}
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		line := sc.Text()
		if strings.HasPrefix(line, "#") || !strings.HasPrefix(line, "mailhop_") {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		v, err := strconv.ParseFloat(line[i+1:], 64)
		if err != nil {
			t.Fatalf("metric line %q: %v", line, err)
		}
		out[line[:i]] = v
	}
	return out
}

func TestOpsMetricsAfterKnownTraffic(t *testing.T) {
	t.Parallel()
	w := newMXWorld(t, dnstest.Zone{
		"dest.test.":    {dnstest.MX("dest.test", 10, "mx.dest.test")},
		"mx.dest.test.": {dnstest.A("mx.dest.test", "127.0.0.2")},
	})
	mx := w.mx("127.0.0.2", smtptest.Behaviour{})
	maddr := freePort(t, "127.0.0.1")
	r := w.start("1h", "", fmt.Sprintf("[admin]\nmetrics_address = %q\n", maddr))

	const accepted, refused = 3, 2
	for i := range accepted {
		submitMail(t, r, submission{From: senderAddr, To: []string{"u@dest.test"}}, deliveryMessage(fmt.Sprintf("m%d", i), "u@dest.test"))
	}
	// One more through sendmail: received counts every way in.
	if _, errs, code := r.sendmail("Subject: s\n\nx\n", "-f", senderAddr, "s@dest.test"); code != 0 {
		t.Fatalf("sendmail: %d %s", code, errs)
	}
	// Refusals: MAIL on the submission port before STARTTLS.
	for range refused {
		c, err := smtp.Dial(r.Sub)
		if err != nil {
			t.Fatal(err)
		}
		if err := c.Hello("client.test"); err != nil {
			t.Fatal(err)
		}
		if err := c.Mail(senderAddr, nil); err == nil {
			t.Fatalf("MAIL before STARTTLS on submission was accepted")
		}
		c.Close()
	}
	waitMsgs(t, mx, accepted+1, 30*time.Second)
	waitQueueEmpty(t, r, 20*time.Second)

	var m map[string]float64
	waitFor(t, "delivered counters", 10*time.Second, func() bool {
		m = scrape(t, maddr)
		return m["mailhop_messages_delivered_total"] == accepted+1
	})
	exact := map[string]float64{
		"mailhop_messages_received_total":                accepted + 1,
		"mailhop_messages_delivered_total":               accepted + 1,
		"mailhop_messages_bounced_total":                 0,
		"mailhop_messages_deferred_total":                0,
		"mailhop_queue_messages":                         0,
		"mailhop_queue_recipients":                       0,
		"mailhop_queue_oldest_age_seconds":               0,
		"mailhop_delivery_latency_seconds_count":         accepted + 1,
		`mailhop_connections_open{direction="in"}`:       0,
		`mailhop_tls_connections_total{direction="out"}`: 0,
	}
	for k, want := range exact {
		if got, ok := m[k]; !ok || got != want {
			t.Errorf("%s = %v (present %v), want %v", k, got, ok, want)
		}
	}
	var refusedSum float64
	for k, v := range m {
		if strings.HasPrefix(k, "mailhop_messages_refused_total{") {
			refusedSum += v
		}
	}
	if refusedSum != refused {
		t.Errorf("refused total = %v, want %d\n%v", refusedSum, refused, m)
	}
	for _, k := range []string{"mailhop_delivery_attempt_duration_seconds_count", "mailhop_dns_lookups_total", "mailhop_queue_fsyncs_total"} {
		if m[k] < 1 {
			t.Errorf("%s = %v, want at least 1", k, m[k])
		}
	}
	if _, ok := m["mailhop_dns_failures_total"]; !ok {
		t.Errorf("mailhop_dns_failures_total missing")
	}
}

// writeConfig replaces the relay's configuration file.
func (r *relay) writeConfig(text string) {
	r.t.Helper()
	if err := os.WriteFile(r.cfgPath, []byte(text), 0o600); err != nil {
		r.t.Fatal(err)
	}
}

// authOK logs in on the submission port with STARTTLS and AUTH PLAIN.
func authOK(addr, user, pass string) error {
	c, err := smtp.DialStartTLS(addr, &tls.Config{InsecureSkipVerify: true})
	if err != nil {
		return err
	}
	defer c.Close()
	if err := c.Auth(sasl.NewPlainClient("", user, pass)); err != nil {
		return err
	}
	return c.Quit()
}

func TestOpsReloadAddsUserAndRefusesBrokenFile(t *testing.T) {
	t.Parallel()
	r := startRelay(t, relayOpts{})
	orig, err := os.ReadFile(r.cfgPath)
	if err != nil {
		t.Fatal(err)
	}
	if err := authOK(r.Sub, "newbie", "newbie-pass"); err == nil {
		t.Fatal("a user that is not configured logged in")
	}
	hash, err := bcrypt.GenerateFromPassword([]byte("newbie-pass"), 4)
	if err != nil {
		t.Fatal(err)
	}
	added := string(orig) + fmt.Sprintf("\n[[user]]\nname = \"newbie\"\npassword_hash = %q\nsenders = [\"newbie@example.com\"]\n", hash)
	r.writeConfig(added)
	reloads := func(s string) int { return strings.Count(r.logs.String(), s) }
	r.signal(syscall.SIGHUP)
	waitFor(t, "the reload", 10*time.Second, func() bool { return reloads("configuration reloaded") == 1 })
	if err := authOK(r.Sub, "newbie", "newbie-pass"); err != nil {
		t.Fatalf("the added user cannot log in after SIGHUP: %v\n%s", err, r.logs.String())
	}

	// A broken file (a bad value and a removed user) changes nothing.
	broken := strings.Replace(added, "[log]\n", "[log]\nformat = \"yaml\"\n", 1)
	broken = strings.Replace(broken, "name = \"newbie\"", "name = \"other\"", 1)
	r.writeConfig(broken)
	r.signal(syscall.SIGHUP)
	waitFor(t, "the refused reload", 10*time.Second, func() bool { return reloads("reload refused") >= 1 })
	if !r.waitLine("reload refused", "log.format") {
		t.Errorf("the refusal does not name the bad key\n%s", r.logs.String())
	}
	if reloads("configuration reloaded") != 1 {
		t.Errorf("a broken file was loaded")
	}
	if err := authOK(r.Sub, "newbie", "newbie-pass"); err != nil {
		t.Errorf("after a refused reload the user cannot log in: %v", err)
	}
	if err := authOK(r.Sub, testUser, testPassword); err != nil {
		t.Errorf("after a refused reload the original user cannot log in: %v", err)
	}
	if err := authOK(r.Sub, "other", "newbie-pass"); err == nil {
		t.Errorf("a user from the refused file logged in")
	}
	r.writeConfig(added) // so the cleanup's stop sees a good file
}

// TestOpsReloadWarnsAboutExamplePassword: a user added by SIGHUP with the
// example's published password hash is warned about as at the start (it
// may log in at once; the warning came only at the next restart).
func TestOpsReloadWarnsAboutExamplePassword(t *testing.T) {
	t.Parallel()
	r := startRelay(t, relayOpts{})
	orig, err := os.ReadFile(r.cfgPath)
	if err != nil {
		t.Fatal(err)
	}
	if r.hasLine("password_hash is the example's") {
		t.Fatalf("warned before the user was added:\n%s", r.logs.String())
	}
	r.writeConfig(string(orig) + fmt.Sprintf("\n[[user]]\nname = \"lazy\"\npassword_hash = %q\nsenders = [\"lazy@example.com\"]\n",
		config.ExamplePasswordHash))
	r.signal(syscall.SIGHUP)
	waitFor(t, "the reload", 10*time.Second, func() bool { return r.hasLine("configuration reloaded") })
	if !r.waitLine("level=WARN", "(lazy): password_hash is the example's") {
		t.Errorf("no warning about the added user's example password after the reload:\n%s", r.logs.String())
	}
}

// SIGTERM in the middle of a load run: every acknowledged message is
// delivered exactly once after a restart.
func TestOpsSIGTERMUnderLoadLosesNothing(t *testing.T) {
	t.Parallel()
	w := newMXWorld(t, dnstest.Zone{
		"dest.test.":    {dnstest.MX("dest.test", 10, "mx.dest.test")},
		"mx.dest.test.": {dnstest.A("mx.dest.test", "127.0.0.2")},
	})
	mx := w.mx("127.0.0.2", smtptest.Behaviour{})
	r := w.start("1s", "", "[limits]\nshutdown_timeout = \"20s\"\n")

	const conns, perConn = 10, 30
	var acked sync.Map // token → true
	var nAcked atomic.Int64
	var wg sync.WaitGroup
	for c := range conns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			cl, err := dialRelayClient(r.Relay)
			if err != nil {
				return
			}
			defer cl.Close()
			for i := range perConn {
				tok := fmt.Sprintf("load-%d-%d", c, i)
				if err := sendMailOn(cl, submission{From: senderAddr, To: []string{"sink@dest.test"}}, deliveryMessage(tok, "sink@dest.test")); err != nil {
					return // refused or cut off by the shutdown: not acknowledged
				}
				acked.Store(tok, true)
				nAcked.Add(1)
			}
		}()
	}
	waitFor(t, "a third of the load to be acknowledged", 60*time.Second, func() bool { return nAcked.Load() >= conns*perConn/3 })
	r.stop() // SIGTERM; fails the test unless the exit is clean (0)
	wg.Wait()
	if !r.waitLine("shutting down") {
		t.Errorf("no shutdown line in the log")
	}
	r.start()

	var want []string
	acked.Range(func(k, _ any) bool { want = append(want, k.(string)); return true })
	t.Logf("%d of %d messages acknowledged before the shutdown", len(want), conns*perConn)
	idRe := regexp.MustCompile(`Message-ID: <(load-\d+-\d+)@client\.test>`)
	counts := func() map[string]int {
		got := map[string]int{}
		for _, m := range mx.Messages() {
			if s := idRe.FindSubmatch(m.Data); s != nil {
				got[string(s[1])]++
			}
		}
		return got
	}
	waitFor(t, "every acknowledged message at the MX", 90*time.Second, func() bool {
		got := counts()
		for _, tok := range want {
			if got[tok] == 0 {
				return false
			}
		}
		return true
	})
	waitQueueEmpty(t, r, 30*time.Second)
	for tok, n := range counts() {
		if n > 1 {
			// At least once is the invariant; twice here means a delivery
			// was cut off by the shutdown after the MX had taken it.
			t.Errorf("%s delivered %d times", tok, n)
		}
	}
}

func TestOpsDistConfigsLoad(t *testing.T) {
	t.Parallel()
	files, err := filepath.Glob("../dist/*.toml")
	if err != nil || len(files) < 3 {
		t.Fatalf("dist configs: %q, %v", files, err)
	}
	for _, f := range files {
		if _, err := config.Load(f); err != nil {
			t.Errorf("%s: %v", f, err)
		}
	}
	unit, err := os.ReadFile("../dist/mailhop.service")
	if err != nil {
		t.Fatal(err)
	}
	for _, w := range []string{"User=mailhop", "ProtectSystem=strict", "ReadWritePaths=/var/lib/mailhop",
		"AmbientCapabilities=CAP_NET_BIND_SERVICE", "CapabilityBoundingSet=CAP_NET_BIND_SERVICE", "NoNewPrivileges=yes",
		"PrivateTmp=yes", "ExecStartPre=/usr/local/bin/mailhop check-config --config /etc/mailhop/config.toml",
		"ExecReload=/bin/kill -HUP $MAINPID", "KillSignal=SIGTERM", "TimeoutStopSec="} {
		if !bytes.Contains(unit, []byte("\n"+w)) {
			t.Errorf("mailhop.service lacks %q", w)
		}
	}
}

// TestOpsSendmailDSNOptions: sendmail's -N, -R and -V are Postfix's DSN
// options: an MX with the DSN extension gets them as NOTIFY, RET and ENVID; one
// without makes mailhop report "relayed" to the sender with the envelope ID;
// -N never means a failure is not reported; a bad value is a usage error.
func TestOpsSendmailDSNOptions(t *testing.T) {
	t.Parallel()
	w := newMXWorld(t, dnstest.Zone{
		"dsn.test.":      {dnstest.MX("dsn.test", 10, "mx.dsn.test")},
		"mx.dsn.test.":   {dnstest.A("mx.dsn.test", "127.0.0.2")},
		"plain.test.":    {dnstest.MX("plain.test", 10, "mx.plain.test")},
		"mx.plain.test.": {dnstest.A("mx.plain.test", "127.0.0.3")},
		"gone.test.":     {dnstest.MX("gone.test", 10, "mx.gone.test")},
		"mx.gone.test.":  {dnstest.A("mx.gone.test", "127.0.0.4")},
	})
	withDSN := w.mx("127.0.0.2", smtptest.Behaviour{Hostname: "mx.dsn.test", DSN: true})
	plain := w.mx("127.0.0.3", smtptest.Behaviour{Hostname: "mx.plain.test"})
	w.mx("127.0.0.4", smtptest.Behaviour{Rcpt: func(string, *smtp.RcptOptions) error {
		return smtptest.Reply(550, "5.1.1", "no such user")
	}})
	r := w.start("1h", "", "")

	if _, errs, code := r.sendmail("Subject: a\n\nx\n", "-f", senderAddr, "-N", "success,failure", "-R", "hdrs",
		"-V", "job-1", "a@dsn.test"); code != 0 {
		t.Fatalf("sendmail: exit %d: %s", code, errs)
	}
	m := waitMsgs(t, withDSN, 1, 20*time.Second)[0]
	if m.MailOpts.EnvelopeID != "job-1" || m.MailOpts.Return != smtp.DSNReturnHeaders {
		t.Errorf("MAIL parameters passed on: ENVID %q RET %q, want job-1 HDRS", m.MailOpts.EnvelopeID, m.MailOpts.Return)
	}
	if len(m.RcptOpts) != 1 {
		t.Fatalf("rcpt options: %+v", m.RcptOpts)
	}
	got := m.RcptOpts[0].Notify
	slices.Sort(got)
	if !slices.Equal(got, []smtp.DSNNotify{smtp.DSNNotifyFailure, smtp.DSNNotifySuccess}) {
		t.Errorf("NOTIFY passed on as %v, want SUCCESS,FAILURE", got)
	}

	if _, errs, code := r.sendmail("Subject: b\n\nx\n", "-f", senderAddr, "-Nsuccess", "-Vjob-2", "b@plain.test"); code != 0 {
		t.Fatalf("sendmail: exit %d: %s", code, errs)
	}
	waitMsgs(t, plain, 1, 20*time.Second)
	rep := waitMsgs(t, w.senderMX, 1, 20*time.Second)[0]
	d := checkReport(t, rep)
	if rc := reportFor(t, d, "b@plain.test"); rc.Action != "relayed" {
		t.Errorf("Action %q, want relayed", rc.Action)
	}
	if d.EnvelopeID != "job-2" {
		t.Errorf("Original-Envelope-Id %q, want job-2", d.EnvelopeID)
	}

	if _, errs, code := r.sendmail("Subject: c\n\nx\n", "-f", senderAddr, "-N", "never", "c@gone.test"); code != 0 {
		t.Fatalf("sendmail: exit %d: %s", code, errs)
	}
	waitFor(t, "the bounce of c@gone.test logged", 20*time.Second, func() bool {
		return r.logLine("msg=bounced", "rcpt=c@gone.test") != ""
	})
	waitQueueEmpty(t, r, 10*time.Second)
	if n := len(w.senderMX.Messages()); n != 1 {
		t.Errorf("the sender got %d messages, want only the success report (-N never)", n)
	}

	for _, bad := range []string{"d@@dsn.test", "d@dsn.test.", "@relay.test:d@dsn.test"} {
		_, errs, code := r.sendmail("Subject: d\n\nx\n", "-f", senderAddr, bad)
		if code != 65 || !strings.Contains(errs, "not a valid address") {
			t.Errorf("sendmail %q: exit %d (%s), want 65 naming the bad address", bad, code, errs)
		}
	}
	for _, bad := range [][]string{{"-N", "never,success"}, {"-R", "body"}, {"-V", "two\twords"}} {
		_, errs, code := r.sendmail("Subject: d\n\nx\n", append(bad, "d@dsn.test")...)
		if code != 64 || !strings.Contains(errs, "mailhop sendmail") {
			t.Errorf("sendmail %q: exit %d (%s), want 64 with a message", bad, code, errs)
		}
	}
}

// TestOpsReloadResolvers: SIGHUP applies delivery.resolvers at once: with a
// dead resolver mail is deferred (DNS temporarily failing), with the working
// one back a flush delivers it.
func TestOpsReloadResolvers(t *testing.T) {
	t.Parallel()
	w := newMXWorld(t, dnstest.Zone{
		"dest.test.":    {dnstest.MX("dest.test", 10, "mx.dest.test")},
		"mx.dest.test.": {dnstest.A("mx.dest.test", "127.0.0.2")},
	})
	mx := w.mx("127.0.0.2", smtptest.Behaviour{})
	r := w.start("1h", "", "")
	good, err := os.ReadFile(r.cfgPath)
	if err != nil {
		t.Fatal(err)
	}
	live := fmt.Sprintf("resolvers = [%q]", w.dns.Addr)
	if !strings.Contains(string(good), live) {
		t.Fatalf("config has no %s", live)
	}
	reloads := func() int { return strings.Count(r.logs.String(), "configuration reloaded") }
	r.writeConfig(strings.Replace(string(good), live, fmt.Sprintf("resolvers = [%q]", freePort(t, "127.0.0.1")), 1))
	r.signal(syscall.SIGHUP)
	waitFor(t, "the reload", 10*time.Second, func() bool { return reloads() == 1 })

	submitMail(t, r, submission{From: senderAddr, To: []string{"a@dest.test"}}, deliveryMessage("resolvers", "a@dest.test"))
	waitFor(t, "the deferral", 20*time.Second, func() bool {
		return r.hasLine("msg=attempt", "domain=dest.test", "4.4.3")
	})
	if n := len(mx.Messages()); n != 0 {
		t.Fatalf("delivered %d messages through a dead resolver", n)
	}

	r.writeConfig(string(good))
	r.signal(syscall.SIGHUP)
	waitFor(t, "the second reload", 10*time.Second, func() bool { return reloads() == 2 })
	if _, errs, code := r.mailhop("queue", "flush"); code != 0 {
		t.Fatalf("queue flush: exit %d: %s", code, errs)
	}
	waitMsgs(t, mx, 1, 20*time.Second)
	if r.hasLine("take effect only after a restart") {
		t.Errorf("the reload warned that resolvers need a restart:\n%s", r.logs.String())
	}
}

// TestOpsSocketGroupMember: a member of admin.socket_group (here the user
// nobody in the group nogroup) may send mail with sendmail, also while the
// relay is stopped (the pickup directory; exit 0 once the file is there, or
// a caller that retried would send it twice), and may list the queue, but
// may not delete other people's mail: only root and the relay's user may.
// Needs root, to run commands as another user.
func TestOpsSocketGroupMember(t *testing.T) {
	t.Parallel()
	if os.Geteuid() != 0 {
		t.Skip("running commands as another user needs root")
	}
	if _, err := user.LookupGroup("nogroup"); err != nil {
		t.Skip("no group nogroup")
	}
	r := startRelay(t, relayOpts{Extra: "[admin]\nsocket_group = \"nogroup\"\n"})
	asNobody := nobodyRunner(t, r)

	out, errs, code := asNobody("Subject: running\n\nx\n", "sendmail", "-v", "-f", "web@example.com", "a@example.net")
	if code != 0 {
		t.Fatalf("sendmail as nobody: exit %d: %s%s", code, out, errs)
	}
	fields := strings.Fields(out)
	if len(fields) == 0 {
		t.Fatalf("sendmail -v printed no queue ID")
	}
	id := fields[len(fields)-1]
	if _, errs, code := asNobody("", "queue", "list"); code != 0 {
		t.Errorf("queue list as a group member: exit %d: %s", code, errs)
	}
	if _, errs, code := asNobody("", "queue", "delete", id); code == 0 || !strings.Contains(errs, "only root") {
		t.Errorf("queue delete as a group member: exit %d: %s", code, errs)
	}
	if !r.waitLine("queue delete refused", "user=nobody") {
		t.Errorf("the refused delete is not logged with the user")
	}
	if _, errs, code := r.mailhop("queue", "show", id); code != 0 {
		t.Fatalf("the message is gone after a refused delete: %s", errs)
	}

	r.stop()
	if _, errs, code := asNobody("Subject: stopped\n\nx\n", "sendmail", "-f", "web@example.com", "b@example.net"); code != 0 {
		t.Fatalf("sendmail as nobody with the relay stopped: exit %d: %s", code, errs)
	}
	r.start()
	waitFor(t, "the pickup file queued", 10*time.Second, func() bool {
		for _, m := range r.list() {
			if len(m.Recipients) == 1 && m.Recipients[0].Address == "b@example.net" {
				return true
			}
		}
		return false
	})
	if n := len(r.list()); n != 2 {
		t.Errorf("queue holds %d messages, want 2", n)
	}
}

// nobodyRunner makes the binary and r's configuration reachable by the user
// nobody in the group nogroup, and returns a function that runs mailhop as
// that user with r's configuration: its stdout, stderr and exit code. Needs
// root.
func nobodyRunner(t *testing.T, r *relay) func(stdin string, args ...string) (string, string, int) {
	t.Helper()
	nobody, err := user.Lookup("nobody")
	if err != nil {
		t.Skip("no user nobody")
	}
	grp, err := user.LookupGroup("nogroup")
	if err != nil {
		t.Skip("no group nogroup")
	}
	uid, _ := strconv.Atoi(nobody.Uid)
	gid, _ := strconv.Atoi(grp.Gid)
	bin := filepath.Join(r.dir, "bin", "mailhop")
	if err := os.MkdirAll(filepath.Dir(bin), 0o755); err != nil {
		t.Fatal(err)
	}
	data, err := os.ReadFile(mailhopBin)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(bin, data, 0o755); err != nil {
		t.Fatal(err)
	}
	for _, d := range []string{filepath.Dir(r.dir), r.dir} {
		if err := os.Chmod(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Chown(r.cfgPath, 0, gid); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(r.cfgPath, 0o640); err != nil {
		t.Fatal(err)
	}
	return func(stdin string, args ...string) (string, string, int) {
		t.Helper()
		for try := 0; ; try++ {
			cmd := exec.Command(bin, append(args, "--config", r.cfgPath)...)
			cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid), Groups: []uint32{uint32(gid)}}}
			cmd.Stdin = strings.NewReader(stdin)
			var out, errb bytes.Buffer
			cmd.Stdout, cmd.Stderr = &out, &errb
			if err := cmd.Run(); err != nil {
				if errors.Is(err, syscall.ETXTBSY) && try < 50 {
					// The copy's write descriptor lives on, for a moment,
					// in a process another test forked meanwhile (Go issue
					// 22315): exec again.
					time.Sleep(20 * time.Millisecond)
					continue
				}
				if _, ok := err.(*exec.ExitError); !ok {
					t.Fatalf("running %v as nobody: %v", args, err)
				}
			}
			return out.String(), errb.String(), cmd.ProcessState.ExitCode()
		}
	}
}

// TestOpsSocketNoPermission: a user who may not use the admin socket of a
// running relay (no socket_group) is told so by the queue commands, not that
// the relay is not running.
func TestOpsSocketNoPermission(t *testing.T) {
	t.Parallel()
	if os.Geteuid() != 0 {
		t.Skip("running commands as another user needs root")
	}
	r := startRelay(t, relayOpts{})
	asNobody := nobodyRunner(t, r)
	for _, args := range [][]string{{"queue", "flush"}, {"queue", "list"}, {"queue", "show", "0000000000000000"}, {"queue", "hold", "0000000000000000"}} {
		_, errs, code := asNobody("", args...)
		if code != 1 || !strings.Contains(errs, "no permission to use the admin socket") || strings.Contains(errs, "not running") {
			t.Errorf("%v as a user without access to the socket: exit %d: %s", args, code, errs)
		}
	}
}

// TestOpsReloadRestartOnlySettings: a reload that changes what the process
// bound at its start (a listener, the metrics address) says so, naming the
// keys, and keeps the running ones; [log] level applies at once.
func TestOpsReloadRestartOnlySettings(t *testing.T) {
	t.Parallel()
	r := startRelay(t, relayOpts{})
	orig, err := os.ReadFile(r.cfgPath)
	if err != nil {
		t.Fatal(err)
	}
	moved := freePort(t, "127.0.0.1")
	changed := strings.Replace(string(orig), fmt.Sprintf("address = %q", r.Relay), fmt.Sprintf("address = %q", moved), 1)
	changed = strings.Replace(changed, "level = \"debug\"", "level = \"info\"", 1)
	changed += "\n[admin]\nmetrics_address = \"" + freePort(t, "127.0.0.1") + "\"\n"
	r.writeConfig(changed)
	r.signal(syscall.SIGHUP)
	waitFor(t, "the reload", 10*time.Second, func() bool { return r.hasLine("configuration reloaded") })
	if !r.waitLine("take effect only after a restart", "listener", "admin.metrics_address") {
		t.Errorf("no warning naming listener and admin.metrics_address:\n%s", r.logs.String())
	}
	// The same file again: still not what runs, still warned about. The
	// warning follows the "configuration reloaded" line.
	r.signal(syscall.SIGHUP)
	waitFor(t, "the second reload", 10*time.Second, func() bool {
		return strings.Count(r.logs.String(), "configuration reloaded") == 2
	})
	warnings := func() int { return strings.Count(r.logs.String(), "take effect only after a restart") }
	waitFor(t, "the second reload's restart warning", 10*time.Second, func() bool { return warnings() >= 2 })
	if n := warnings(); n != 2 {
		t.Errorf("%d restart warnings after reloading the same changed file twice, want 2", n)
	}
	// The running listener stays.
	c, err := net.DialTimeout("tcp", r.Relay, 5*time.Second)
	if err != nil {
		t.Fatalf("the running listener went away: %v", err)
	}
	c.Close()
	// Debug lines stop: a delivery attempt's "deferred" line is debug.
	mark := len(r.logs.String())
	submitMail(t, r, submission{From: "a@example.com", To: []string{"b@example.net"}}, []byte("Subject: x\r\n\r\nx\r\n"))
	waitFor(t, "the attempt", 20*time.Second, func() bool { return strings.Contains(r.logs.String()[mark:], "msg=attempt") })
	if tail := r.logs.String()[mark:]; strings.Contains(tail, "level=DEBUG") {
		t.Errorf("debug lines after the reload to level info:\n%s", tail)
	}
	// Back to what runs: no warning. A warning would follow the third
	// "configuration reloaded" line; a fourth reload's line follows it.
	r.writeConfig(string(orig))
	r.signal(syscall.SIGHUP)
	waitFor(t, "the third reload", 10*time.Second, func() bool {
		return strings.Count(r.logs.String(), "configuration reloaded") == 3
	})
	r.signal(syscall.SIGHUP)
	waitFor(t, "the fourth reload", 10*time.Second, func() bool {
		return strings.Count(r.logs.String(), "configuration reloaded") == 4
	})
	if n := strings.Count(r.logs.String(), "take effect only after a restart"); n != 2 {
		t.Errorf("a reload back to the running settings warned (%d warnings in all)", n)
	}
}

// TestOpsStartNotifiesSystemd: under a Type=notify unit mailhop says
// READY=1 once its listeners are bound and STOPPING=1 at SIGTERM; a port
// already in use fails the start with one error line and no "started".
func TestOpsStartNotifiesSystemd(t *testing.T) {
	t.Parallel()
	sock := filepath.Join(t.TempDir(), "notify")
	pc, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: sock, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	got := make(chan string, 4)
	go func() {
		buf := make([]byte, 256)
		for {
			n, err := pc.Read(buf)
			if err != nil {
				return
			}
			got <- string(buf[:n])
		}
	}()
	expect := func(want string) {
		t.Helper()
		select {
		case s := <-got:
			if s != want {
				t.Errorf("notification %q, want %s", s, want)
			}
		case <-time.After(10 * time.Second):
			t.Fatalf("no %s", want)
		}
	}
	r := startRelay(t, relayOpts{Env: []string{"NOTIFY_SOCKET=" + sock}})
	expect("READY=1")
	r.stop()
	expect("STOPPING=1")

	// A second relay (its own data_dir) on the same ports cannot bind them.
	r.start()
	<-got // the first relay's READY=1
	orig, err := os.ReadFile(r.cfgPath)
	if err != nil {
		t.Fatal(err)
	}
	second := filepath.Join(t.TempDir(), "second.toml")
	text := strings.Replace(string(orig), filepath.Join(r.dir, "data"), filepath.Join(filepath.Dir(second), "data"), 1)
	if err := os.WriteFile(second, []byte(text), 0o600); err != nil {
		t.Fatal(err)
	}
	// A message sendmail left for the second relay (not running): a start
	// that fails must not have taken it in and sent it.
	pickup := filepath.Join(filepath.Dir(second), "data", admin.PickupDirName)
	if err := os.MkdirAll(pickup, 0o700); err != nil { // as a relay that ran before made it
		t.Fatal(err)
	}
	if _, stderr, code := runBin(t, mailhopBin, "Subject: left\r\n\r\nhi\r\n", "sendmail", "--config", second, "u@example.net"); code != 0 {
		t.Fatalf("sendmail with the relay down: exit %d: %s", code, stderr)
	}
	cmd := exec.Command(mailhopBin, "serve", "--config", second)
	var logs bytes.Buffer
	cmd.Stdout, cmd.Stderr = &logs, &logs
	cmd.Env = append(os.Environ(), "NOTIFY_SOCKET="+sock)
	if err := cmd.Run(); err == nil {
		t.Fatalf("a second relay on the same ports started:\n%s", logs.String())
	}
	if left, _ := filepath.Glob(filepath.Join(pickup, "[0-9]*")); len(left) != 1 || strings.Contains(logs.String(), "queued") {
		t.Errorf("a relay that could not bind its ports took in sendmail's message (left in pickup: %v):\n%s", left, logs.String())
	}
	out := logs.String()
	if strings.Contains(out, "mailhop started") || strings.Count(out, "mailhop stopped") != 1 || !strings.Contains(out, "address already in use") {
		t.Errorf("a failed start should log one error naming the port, no 'started':\n%s", out)
	}
	select {
	case s := <-got:
		if s == "READY=1" {
			t.Errorf("READY=1 from a relay that could not bind")
		}
	default:
	}
}

// TestOpsSIGTERMDeadlineClosesSessions: a transaction still open when
// limits.shutdown_timeout runs out gets 421, and the log says the sessions
// were closed for the deadline (not "context deadline exceeded").
func TestOpsSIGTERMDeadlineClosesSessions(t *testing.T) {
	t.Parallel()
	r := startRelay(t, relayOpts{Extra: "[limits]\nshutdown_timeout = \"1s\"\n"})
	c, err := net.Dial("tcp", r.Relay)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	br := bufio.NewReader(c)
	expect := func(code string) string {
		t.Helper()
		c.SetReadDeadline(time.Now().Add(20 * time.Second))
		for {
			l, err := br.ReadString('\n')
			if err != nil {
				t.Fatalf("waiting for %s: %v\n%s", code, err, r.logs.String())
			}
			if len(l) < 4 || l[3] != '-' {
				if !strings.HasPrefix(l, code) {
					t.Fatalf("got %q, want %s", l, code)
				}
				return l
			}
		}
	}
	expect("220")
	for _, step := range []struct{ cmd, code string }{
		{"EHLO client.test", "250"}, {"MAIL FROM:<app@example.com>", "250"},
		{"RCPT TO:<u@example.net>", "250"}, {"DATA", "354"}} {
		fmt.Fprintf(c, "%s\r\n", step.cmd)
		expect(step.code)
	}
	fmt.Fprintf(c, "Subject: never finished\r\n\r\nhalf a message\r\n")
	r.stop() // SIGTERM; the session holds the relay until the deadline
	expect("421")
	if !r.hasLine("level=WARN", "SMTP sessions did not finish in time; closed with 421", "grace=1s") {
		t.Errorf("no warning naming the deadline:\n%s", r.logs.String())
	}
}

// TestOpsSIGHUPDuringStopExitsZero: SIGHUPs that keep coming while the relay
// stops (a reload from a log rotation during a stop) do not change its
// clean exit: the signals stay caught until the process exits. They were
// released when serve returned, and a SIGHUP then killed the process
// (exit 129 after "mailhop stopped"). GORACE's exit sleep of a -race
// binary widens that last stretch of the exit, as a slow exit would.
func TestOpsSIGHUPDuringStopExitsZero(t *testing.T) {
	t.Parallel()
	r := startRelay(t, relayOpts{Env: []string{"GORACE=atexit_sleep_ms=300"}})
	r.mu.Lock()
	cmd, exited := r.cmd, r.exited
	r.cmd = nil
	r.mu.Unlock()
	cmd.Process.Signal(syscall.SIGTERM)
	deadline := time.After(40 * time.Second)
hups:
	for {
		select {
		case <-exited:
			break hups
		case <-deadline:
			cmd.Process.Kill()
			<-exited
			t.Fatalf("mailhop did not stop on SIGTERM\n%s", r.logs.String())
		case <-time.After(2 * time.Millisecond):
			cmd.Process.Signal(syscall.SIGHUP)
		}
	}
	if code := cmd.ProcessState.ExitCode(); code != 0 {
		t.Errorf("exit code %d (%v) after SIGTERM with SIGHUPs coming, want 0\n%s",
			code, cmd.ProcessState, r.logs.String())
	}
	if !r.hasLine("mailhop stopped") {
		t.Errorf("no 'mailhop stopped' line\n%s", r.logs.String())
	}
}

// TestOpsSignalsCaughtBeforeHeavyInits: the init of internal/earlysignal,
// which catches serve's signals, runs before those of protobuf, the metrics
// and DNS (GODEBUG=inittrace=1 lists the inits in the order they run): it
// imported path/filepath, whose init comes after theirs, and waited for
// about 70 packages' (2-4 ms of a start, a SIGTERM then exit 143).
func TestOpsSignalsCaughtBeforeHeavyInits(t *testing.T) {
	t.Parallel()
	cmd := exec.Command(mailhopBin, "serve", "--config", filepath.Join(t.TempDir(), "missing.toml"))
	cmd.Env = append(os.Environ(), "GODEBUG=inittrace=1")
	out, _ := cmd.CombinedOutput() // exits 1: no configuration
	var order []string
	for _, line := range strings.Split(string(out), "\n") {
		if f := strings.Fields(line); len(f) > 1 && f[0] == "init" {
			order = append(order, f[1])
		}
	}
	caught := slices.Index(order, "github.com/mailhop/mailhop/internal/earlysignal")
	if caught < 0 {
		t.Fatalf("no init of internal/earlysignal in the trace:\n%s", out)
	}
	for _, pkg := range order[:caught] {
		for _, heavy := range []string{"google.golang.org/protobuf/", "github.com/prometheus/", "github.com/miekg/dns"} {
			if strings.HasPrefix(pkg, heavy) {
				t.Errorf("%s initialized before internal/earlysignal (init %d of %d)", pkg, caught+1, len(order))
			}
		}
	}
}

// TestOpsSIGTERMDuringStartExitsZero: a SIGTERM while `mailhop serve`
// starts (here: as soon as it opens its configuration, before it has read
// it, opened the queue or bound a port) stops it cleanly, exit 0 and
// "mailhop stopped", every time. The signals were caught only once the
// configuration was loaded, and a SIGTERM in the first milliseconds of a
// start killed the process (exit 143). The configuration's open, seen with
// inotify, is the earliest moment a test can tell the relay's own code
// runs: before that (exec, the Go runtime's start) no Go program catches a
// signal.
func TestOpsSIGTERMDuringStartExitsZero(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	cfgPath := filepath.Join(dir, "config.toml")
	cfg := fmt.Sprintf("hostname = \"mx.relay.test\"\ndata_dir = %q\n\n[[listener]]\naddress = %q\nmode = \"relay\"\n\n"+
		"[delivery]\nresolvers = [%q]\nretry_intervals = [\"1h\"]\n",
		filepath.Join(dir, "data"), freePort(t, "127.0.0.1"), freePort(t, "127.0.0.1"))
	if err := os.WriteFile(cfgPath, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	for i := range 30 {
		fd, err := syscall.InotifyInit1(syscall.IN_CLOEXEC | syscall.IN_NONBLOCK)
		if err != nil {
			t.Fatal(err)
		}
		events := os.NewFile(uintptr(fd), "inotify")
		if _, err := syscall.InotifyAddWatch(fd, cfgPath, syscall.IN_OPEN); err != nil {
			events.Close()
			t.Fatal(err)
		}
		var logs bytes.Buffer
		cmd := exec.Command(mailhopBin, "serve", "--config", cfgPath)
		cmd.Stdout, cmd.Stderr = &logs, &logs
		if err := cmd.Start(); err != nil {
			events.Close()
			t.Fatal(err)
		}
		events.SetReadDeadline(time.Now().Add(30 * time.Second))
		_, err = events.Read(make([]byte, 4096))
		events.Close()
		if err != nil {
			cmd.Process.Kill()
			cmd.Wait()
			t.Fatalf("start %d: the configuration was not opened: %v\n%s", i, err, logs.String())
		}
		cmd.Process.Signal(syscall.SIGTERM)
		timer := time.AfterFunc(40*time.Second, func() { cmd.Process.Kill() })
		cmd.Wait()
		timer.Stop()
		if code := cmd.ProcessState.ExitCode(); code != 0 || !strings.Contains(logs.String(), `msg="mailhop stopped"`) {
			t.Fatalf("start %d: SIGTERM during the start: %v, want exit 0 after 'mailhop stopped'\n%s", i, cmd.ProcessState, logs.String())
		}
	}
}

// TestOpsLogLinesCarryMessageID: every log line about a message carries its
// queue ID and its Message-ID (issue 5: grep of either ID shows the message's
// whole life) — also the lines of the hosts a delivery passed over (`host
// deferred`, `host failed`), the operator's actions and the `report queued`
// of its bounce, not only `message accepted`, `attempt` and the outcomes.
func TestOpsLogLinesCarryMessageID(t *testing.T) {
	t.Parallel()
	w := newMXWorld(t, dnstest.Zone{
		"dest.test.":     {dnstest.MX("dest.test", 10, "mx1.dest.test"), dnstest.MX("dest.test", 20, "mx2.dest.test")},
		"mx1.dest.test.": {dnstest.A("mx1.dest.test", "127.0.0.2")},
		"mx2.dest.test.": {dnstest.A("mx2.dest.test", "127.0.0.3")},
	})
	// mx1 greylists (its recipients go on to mx2: "host deferred"), mx2 is
	// down ("host failed").
	w.mx("127.0.0.2", smtptest.Behaviour{Hostname: "mx1.dest.test", Rcpt: func(string, *smtp.RcptOptions) error {
		return smtptest.Reply(451, "4.7.1", "greylisted, try again later")
	}})
	w.down("127.0.0.3")
	r := w.start("1h", "", "")

	submitMail(t, r, submission{From: senderAddr, To: []string{"bob@dest.test"}}, deliveryMessage("logids", "bob@dest.test"))
	const mid = "message_id=<logids@client.test>"
	id := logField(r.logLine("message accepted", mid), "queue_id")
	if id == "" {
		t.Fatalf("no `message accepted` line with %s\n%s", mid, r.logs.String())
	}
	qid := "queue_id=" + id
	for _, m := range []string{"host deferred", "host failed", "attempt"} {
		if !r.waitLine(m, qid) {
			t.Fatalf("no %q line for %s\n%s", m, id, r.logs.String())
		}
	}
	for _, act := range []string{"hold", "release"} {
		if out, errs, code := r.mailhop("queue", act, id); code != 0 {
			t.Fatalf("queue %s: exit %d: %s%s", act, code, out, errs)
		}
	}
	// A bounce is refused while an attempt is under way: the message is
	// deferred for an hour now, so the first try normally succeeds.
	waitFor(t, "queue bounce "+id, 20*time.Second, func() bool {
		_, _, code := r.mailhop("queue", "bounce", id)
		return code == 0
	})
	for _, m := range []string{"queue hold by operator", "queue release by operator", "queue bounce by operator", "report queued", "bounced"} {
		if !r.waitLine(m, qid) {
			t.Fatalf("no %q line for %s\n%s", m, id, r.logs.String())
		}
	}
	lines := testlog.Lines(r.logs.String(), qid)
	for _, l := range lines {
		if !strings.Contains(l, mid) {
			t.Errorf("a log line about %s without its Message-ID (%s):\n%s", id, mid, l)
		}
	}
	if len(lines) < 9 {
		t.Errorf("only %d log lines name %s:\n%s", len(lines), id, strings.Join(lines, "\n"))
	}
}
