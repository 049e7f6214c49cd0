package main

import (
	"bytes"
	"errors"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/mailhop/mailhop/queue"
	"github.com/mailhop/mailhop/relay/admin"
)

// runQueue runs `mailhop queue ARGS --config CFG` in this process.
func runQueue(cfgPath string, args ...string) (stdout, stderr string, code int) {
	var out, errs bytes.Buffer
	code = run(append(append([]string{"mailhop", "queue"}, args...), "--config", cfgPath), strings.NewReader(""), &out, &errs)
	return out.String(), errs.String(), code
}

// stoppedRelayWithMessage writes a configuration whose relay is not
// running and queues one message from a@example.com to b@example.net in
// its data_dir; it returns the configuration's path.
func stoppedRelayWithMessage(t *testing.T) string {
	t.Helper()
	path := writeConfig(t, "")
	q, err := queue.Open(filepath.Join(filepath.Dir(path), "data", "queue"), queue.Options{Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	env := &queue.Envelope{ID: q.NewID(), From: "a@example.com", Recipients: []queue.Recipient{{Address: "b@example.net"}}}
	if err := q.Enqueue(env, strings.NewReader("Subject: x\r\n\r\nx\r\n")); err != nil {
		t.Fatal(err)
	}
	if err := q.Close(); err != nil {
		t.Fatal(err)
	}
	return path
}

// TestQueueList_State: --state takes the documented states in any case; any
// other value is a usage error (exit 2) naming the valid ones, like a bad
// --min-age, whether the relay is running (the filter goes over the admin
// socket) or stopped (the queue directory is read).
func TestQueueList_State(t *testing.T) {
	t.Parallel()
	running := startLocalRelay(t, "")
	if _, errs, code := runSendmail(running.cfgPath, "Subject: x\n\nx\n", "-f", "a@example.com", "b@example.net"); code != 0 {
		t.Fatalf("sendmail: exit %d: %s", code, errs)
	}
	stopped := stoppedRelayWithMessage(t)

	for name, cfgPath := range map[string]string{"running": running.cfgPath, "stopped": stopped} {
		for _, s := range []string{"pending", "PENDING", "Pending"} {
			out, errs, code := runQueue(cfgPath, "list", "--state", s)
			if code != 0 || !strings.Contains(out, "b@example.net") || !strings.Contains(out, "1 message(s)") {
				t.Errorf("%s: --state %s: exit %d, %q %q; want the pending message", name, s, code, out, errs)
			}
		}
		for _, s := range []string{"delivered", "FAILED", "held"} {
			out, errs, code := runQueue(cfgPath, "list", "--state", s)
			// The queue is not empty: no message matches.
			if code != 0 || out != "no queued message matches\n" {
				t.Errorf("%s: --state %s: exit %d, %q %q; want an empty list", name, s, code, out, errs)
			}
		}
		for _, s := range []string{"bogus", "", "deferred", "pending,held"} {
			out, errs, code := runQueue(cfgPath, "list", "--state", s)
			if code != exitUsage || out != "" || !strings.Contains(errs, `invalid value "`+s+`" for flag -state: want one of pending, delivered, failed, held`) {
				t.Errorf("%s: --state %q: exit %d, stdout %q, stderr %q; want 2 naming the valid states", name, s, code, out, errs)
			}
		}
		if _, errs, _ := runQueue(cfgPath, "list", "--state", "deferred"); !strings.Contains(errs, "use pending") {
			t.Errorf("%s: --state deferred does not point to pending: %q", name, errs)
		}
		if _, _, code := runQueue(cfgPath, "list", "--min-age", "bogus"); code != exitUsage {
			t.Errorf("%s: --min-age bogus: exit %d, want 2 (as for --state)", name, code)
		}
	}
}

// failingWriter fails every write, as stdout on a full disk does.
type failingWriter struct{}

func (failingWriter) Write([]byte) (int, error) { return 0, errors.New("no space left on device") }

// TestQueueList_JSONWriteErrorFails: `queue list --json` whose output cannot
// be written exits 1 naming the error. The list went through a 64 KiB
// buffer flushed by a defer that dropped its error: a queue listed to a
// full disk exited 0 with nothing written.
func TestQueueList_JSONWriteErrorFails(t *testing.T) {
	t.Parallel()
	path := stoppedRelayWithMessage(t)
	if out, errs, code := runQueue(path, "list", "--json"); code != exitOK || !strings.Contains(out, "b@example.net") {
		t.Fatalf("list --json: exit %d, %q %q; want the message", code, out, errs)
	}
	var errs bytes.Buffer
	code := run([]string{"mailhop", "queue", "list", "--json", "--config", path}, strings.NewReader(""), failingWriter{}, &errs)
	if code != exitFail || !strings.Contains(errs.String(), "no space left on device") {
		t.Errorf("list --json to a failing stdout: exit %d, stderr %q; want 1 naming the write error", code, errs.String())
	}
}

// TestQueueShow_JSONAndBodyIsUsage: --json (the envelope) and --body (the
// message) exclude each other; both printed the message alone, exit 0.
func TestQueueShow_JSONAndBodyIsUsage(t *testing.T) {
	t.Parallel()
	r := startLocalRelay(t, "")
	id, errs, code := runSendmail(r.cfgPath, "Subject: x\n\nx\n", "-v", "-f", "a@example.com", "b@example.net")
	if code != 0 {
		t.Fatalf("sendmail: exit %d: %s", code, errs)
	}
	id = strings.TrimPrefix(strings.TrimSpace(id), "queued as ")
	if out, _, code := runQueue(r.cfgPath, "show", "--body", id); code != 0 || !strings.Contains(out, "Subject: x") {
		t.Fatalf("show --body %s: exit %d, %q", id, code, out)
	}
	out, errs, code := runQueue(r.cfgPath, "show", "--json", "--body", id)
	if code != exitUsage || out != "" || !strings.Contains(errs, "usage: mailhop queue show [--json | --body] ID") {
		t.Errorf("show --json --body: exit %d, stdout %q, stderr %q; want 2 and the usage", code, out, errs)
	}
}

// TestQueue_ExtraArgumentIsUsage: list and flush take no argument; one
// ("flush example.com", meant as --domain) is a usage error (exit 2) that
// names --domain, and nothing is flushed.
func TestQueue_ExtraArgumentIsUsage(t *testing.T) {
	t.Parallel()
	r := startLocalRelay(t, "")
	for _, sub := range []string{"list", "flush"} {
		out, errs, code := runQueue(r.cfgPath, sub, "example.net")
		if code != exitUsage || out != "" || !strings.Contains(errs, "unexpected argument \"example.net\"") || !strings.Contains(errs, "--domain") {
			t.Errorf("queue %s example.net: exit %d, stdout %q, stderr %q; want 2 and a hint to --domain", sub, code, out, errs)
		}
	}
}

// TestPrintTable_Layout: the message columns line up over every message, a
// long reply on a recipient line does not widen them, and a reply without an
// SMTP code (a DNS error) is shown without a made-up code 0.
func TestPrintTable_Layout(t *testing.T) {
	t.Parallel()
	at := time.Date(2026, 11, 25, 12, 0, 0, 0, time.UTC)
	msgs := []admin.Message{
		{ID: "003628CBROVGIJSR", From: "a@example.com", Size: 307, Arrived: at, NextAttempt: at, Attempts: 1,
			Recipients: []admin.Recipient{{Address: "x@example.net", State: "pending", Reply: "4.4.3 dns example.net: " + strings.Repeat("timeout ", 10)}}},
		{ID: "003628CBRPTGS78S", From: "", Size: 1234567, Arrived: at, Held: true,
			Recipients: []admin.Recipient{{Address: "y@example.org", State: "failed", Code: 550, Reply: "5.1.1 no such user"}}},
	}
	var b bytes.Buffer
	printTable(&b, msgs)
	lines := strings.Split(strings.TrimSuffix(b.String(), "\n"), "\n")
	if len(lines) != 6 {
		t.Fatalf("want a header, 2 message lines, 2 recipient lines and a count, got:\n%s", b.String())
	}
	col := strings.Index(lines[0], "SENDER")
	for _, i := range []int{1, 3} {
		if len(lines[i]) < col || strings.Contains(lines[i][:col], "example") {
			t.Errorf("message line %q: the sender does not start at column %d of the header", lines[i], col)
		}
	}
	if !strings.HasSuffix(lines[1], "a@example.com") || !strings.HasSuffix(lines[3], "<>") || !strings.Contains(lines[3], "held") {
		t.Errorf("message lines:\n%s\n%s", lines[1], lines[3])
	}
	if col > 100 {
		t.Errorf("the recipient's reply widened the columns: SENDER at column %d", col)
	}
	if !strings.Contains(lines[2], "pending") || !strings.Contains(lines[2], "(4.4.3 dns") || strings.Contains(lines[2], "(0 ") {
		t.Errorf("recipient line %q", lines[2])
	}
	if !strings.Contains(lines[4], "failed") || !strings.Contains(lines[4], "(550 5.1.1 no such user)") {
		t.Errorf("recipient line %q", lines[4])
	}
	if lines[5] != "2 message(s)" {
		t.Errorf("last line %q", lines[5])
	}
}

// TestPrintTable_Activity: a message being delivered or parked (waiting for
// a connection slot to its domain) says so instead of a next attempt in the
// past: a parked message listed with 0 attempts, no error and a time long
// gone looked stuck.
func TestPrintTable_Activity(t *testing.T) {
	t.Parallel()
	at := time.Date(2026, 11, 25, 12, 0, 0, 0, time.UTC)
	msgs := []admin.Message{
		{ID: "003628CBROVGIJSR", From: "a@example.com", Arrived: at, NextAttempt: at, Delivering: true,
			Recipients: []admin.Recipient{{Address: "x@example.net", State: "pending"}}},
		{ID: "003628CBRPTGS78S", From: "a@example.com", Arrived: at, NextAttempt: at, Parked: true,
			Recipients: []admin.Recipient{{Address: "y@example.net", State: "pending"}}},
	}
	var b bytes.Buffer
	printTable(&b, msgs)
	lines := strings.Split(b.String(), "\n")
	if !strings.Contains(lines[1], "delivering now") || !strings.Contains(lines[3], "waiting for a slot") {
		t.Errorf("table:\n%s", b.String())
	}
	b.Reset()
	printDetail(&b, &msgs[1])
	if !strings.Contains(b.String(), "waiting for a slot (when a connection to its domain frees") {
		t.Errorf("show:\n%s", b.String())
	}
}

// TestQueueShow_Message: `queue show ID` prints the envelope and then the
// message; `show --body ID` prints the message alone, byte for byte as
// queued (8-bit text, a leading dot, no final newline), whether the relay is
// running (over the admin socket) or stopped (from the queue directory).
func TestQueueShow_Message(t *testing.T) {
	t.Parallel()
	body := "Subject: caf\xc3\xa9\r\n\r\n.leading dot\r\n\xff8-bit\r\nno final newline"
	enqueue := func(dataDir string) string {
		q, err := queue.Open(filepath.Join(dataDir, "queue"), queue.Options{Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
		if err != nil {
			t.Fatal(err)
		}
		env := &queue.Envelope{ID: q.NewID(), From: "a@example.com", Recipients: []queue.Recipient{{Address: "b@example.net"}}}
		if err := q.Enqueue(env, strings.NewReader(body)); err != nil {
			t.Fatal(err)
		}
		if err := q.Close(); err != nil {
			t.Fatal(err)
		}
		return env.ID
	}
	stopped := writeConfig(t, "")
	stoppedID := enqueue(filepath.Join(filepath.Dir(stopped), "data"))

	running := startLocalRelay(t, "")
	runningID := ""
	if _, errs, code := runSendmail(running.cfgPath, body, "-f", "a@example.com", "b@example.net"); code != 0 {
		t.Fatalf("sendmail: exit %d: %s", code, errs)
	}
	for _, m := range running.q.List() {
		runningID = m.ID
	}
	runningBody := ""
	if b, err := running.q.Body(runningID); err == nil {
		buf := make([]byte, b.Size())
		b.ReadAt(buf, 0)
		b.Close()
		runningBody = string(buf)
	}
	if runningBody == "" {
		t.Fatal("sendmail queued nothing readable")
	}

	for name, c := range map[string]struct{ cfg, id, want string }{
		"running": {running.cfgPath, runningID, runningBody},
		"stopped": {stopped, stoppedID, body},
	} {
		out, errs, code := runQueue(c.cfg, "show", "--body", c.id)
		if code != 0 || out != c.want {
			t.Errorf("%s: show --body: exit %d, %q (stderr %q); want exactly %q", name, code, out, errs, c.want)
		}
		out, errs, code = runQueue(c.cfg, "show", c.id)
		if code != 0 || !strings.Contains(out, "b@example.net") || !strings.HasSuffix(out, "\n\n"+c.want) {
			t.Errorf("%s: show: exit %d, %q (stderr %q); want the envelope, a blank line and the message", name, code, out, errs)
		}
		if _, errs, code := runQueue(c.cfg, "show", "--body", "NOSUCHID"); code == 0 || errs == "" {
			t.Errorf("%s: show --body of an unknown ID: exit %d, stderr %q", name, code, errs)
		}
	}
}

// Called as mailq (or sendmail -bp), mailhop lists the queue; as newaliases
// (or sendmail -bi, -I) it has nothing to rebuild and says so, exit 0: a
// package script that runs newaliases after installing an MTA failed
// with exit 2 (mailq, newaliases) or 64 (-bp, -bi).
func TestSendmailNames_MailqNewaliases(t *testing.T) {
	t.Parallel()
	relay := startLocalRelay(t, "")
	if _, errs, code := runSendmail(relay.cfgPath, "Subject: x\n\nx\n", "-f", "a@example.com", "b@example.net"); code != 0 {
		t.Fatalf("sendmail: exit %d: %s", code, errs)
	}
	c := relay.cfgPath
	for _, args := range [][]string{{"/usr/bin/mailq", "-C", c}, {"sendmail", "-bp", "-C", c}, {"mailhop", "sendmail", "-bp", "--config", c}} {
		var out, errs bytes.Buffer
		if code := run(args, strings.NewReader(""), &out, &errs); code != 0 || !strings.Contains(out.String(), "b@example.net") {
			t.Errorf("%q: exit %d, stdout %q, stderr %q; want the queue listed", args, code, out.String(), errs.String())
		}
	}
	for _, args := range [][]string{{"/usr/bin/newaliases"}, {"sendmail", "-bi"}, {"sendmail", "-I"}} {
		var out, errs bytes.Buffer
		if code := run(args, strings.NewReader(""), &out, &errs); code != 0 || !strings.Contains(errs.String(), "no aliases") {
			t.Errorf("%q: exit %d, stderr %q; want 0 and a note", args, code, errs.String())
		}
	}
}

// TestQueueShow_UnreadableContent: when a message's content cannot be read
// (here its body file is gone), `queue show ID` prints the envelope and
// fails naming the queue ID, whether the relay is running or stopped; it
// printed the envelope, the error, and exited 0.
func TestQueueShow_UnreadableContent(t *testing.T) {
	t.Parallel()
	body := "Subject: big\r\n\r\n" + strings.Repeat("x", queue.InlineMax+1)
	enqueue := func(q *queue.Queue) string {
		env := &queue.Envelope{ID: q.NewID(), From: "a@example.com", Recipients: []queue.Recipient{{Address: "b@example.net"}}}
		if err := q.Enqueue(env, strings.NewReader(body)); err != nil {
			t.Fatal(err)
		}
		return env.ID
	}
	stopped := writeConfig(t, "")
	stoppedDir := filepath.Join(filepath.Dir(stopped), "data", "queue")
	q, err := queue.Open(stoppedDir, queue.Options{Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	stoppedID := enqueue(q)
	if err := q.Close(); err != nil {
		t.Fatal(err)
	}
	running := startLocalRelay(t, "")
	runningID := enqueue(running.q)

	for name, c := range map[string]struct{ cfg, dir, id string }{
		"running": {running.cfgPath, filepath.Join(filepath.Dir(running.cfgPath), "data", "queue"), runningID},
		"stopped": {stopped, stoppedDir, stoppedID},
	} {
		if err := os.Remove(filepath.Join(c.dir, "bodies", c.id)); err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		out, errs, code := runQueue(c.cfg, "show", c.id)
		if code != exitFail || !strings.Contains(out, "b@example.net") || !strings.Contains(errs, "message content of "+c.id) {
			t.Errorf("%s: show of a message without its body: exit %d, stdout %q, stderr %q; want the envelope, then exit 1 naming %s",
				name, code, out, errs, c.id)
		}
	}
}
