package main

import (
	"bytes"
	"io"
	"log/slog"
	"path/filepath"
	"strings"
	"testing"

	"github.com/mailhop/mailhop/queue"
)

// runQueue runs `mailhop queue ARGS --config CFG` in this process.
func runQueue(cfgPath string, args ...string) (stdout, stderr string, code int) {
	var out, errs bytes.Buffer
	code = run(append(append([]string{"mailhop", "queue"}, args...), "--config", cfgPath), strings.NewReader(""), &out, &errs)
	return out.String(), errs.String(), code
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
	stopped := writeConfig(t, "")
	q, err := queue.Open(filepath.Join(filepath.Dir(stopped), "data", "queue"), queue.Options{Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
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

	for name, cfgPath := range map[string]string{"running": running.cfgPath, "stopped": stopped} {
		for _, s := range []string{"pending", "PENDING", "Pending"} {
			out, errs, code := runQueue(cfgPath, "list", "--state", s)
			if code != 0 || !strings.Contains(out, "b@example.net") || !strings.Contains(out, "1 message(s)") {
				t.Errorf("%s: --state %s: exit %d, %q %q; want the pending message", name, s, code, out, errs)
			}
		}
		for _, s := range []string{"delivered", "FAILED", "held"} {
			out, errs, code := runQueue(cfgPath, "list", "--state", s)
			if code != 0 || !strings.Contains(out, "queue is empty") {
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
