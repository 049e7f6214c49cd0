package queue

import (
	"bytes"
	"context"
	"errors"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// copyQueue copies a live store's directory, bodies/ included (the lock
// and spares aside, which a start deletes): what a kill -9 leaves, since
// every acknowledged record has been written.
func copyQueue(t *testing.T, from, to string) {
	t.Helper()
	copyDir(t, from, to)
	entries, err := os.ReadDir(filepath.Join(from, "bodies"))
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		data, err := os.ReadFile(filepath.Join(from, "bodies", e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(to, "bodies", e.Name()), data, 0o600); err != nil {
			t.Fatal(err)
		}
	}
}

// TestDoneWithReportsOneCommit: a report and the outcome of the attempt
// that called for it are one commit. Cut the write at every byte (a crash
// in mid-write) and the queue read back holds both or neither: never a
// report whose original is still to be tried (it would be reported twice),
// nor an outcome without its report.
func TestDoneWithReportsOneCommit(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name       string
		rcpts      int
		res        Result // for the original
		reportBody []byte
	}{
		{name: "bounce", rcpts: 1, reportBody: []byte("Subject: failed\r\n\r\nreport\r\n"),
			res: Result{LastError: "550 no", Recipients: []RcptUpdate{{Index: 0, State: Failed, Code: 550, Reply: "5.1.1 no"}}}},
		{name: "delay warning", rcpts: 2, reportBody: []byte("Subject: delayed\r\n\r\nreport\r\n"),
			res: Result{LastError: "451 later", DelayWarned: true, Recipients: []RcptUpdate{
				{Index: 0, State: Failed, Code: 550, Reply: "5.1.1 no"}, {Index: 1, State: Pending, Code: 451, Reply: "4.2.1 later"}}}},
		{name: "large report", rcpts: 1, reportBody: bigBody(InlineMax + 5000),
			res: Result{Recipients: []RcptUpdate{{Index: 0, State: Failed, Code: 550, Reply: "5.1.1 no"}}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			dir := t.TempDir()
			q := openTest(t, dir)
			var rcpts []string
			for i := range tc.rcpts {
				rcpts = append(rcpts, string(rune('a'+i))+"@example.test")
			}
			orig := newEnv(rcpts...)
			if err := q.Enqueue(orig, strings.NewReader("Subject: hi\r\n\r\noriginal\r\n")); err != nil {
				t.Fatal(err)
			}
			if got, err := q.Next(context.Background()); err != nil || got.ID != orig.ID {
				t.Fatalf("Next: %v %v", got, err)
			}
			ls := q.store.(*LogStore)
			ls.mu.Lock()
			seg, start := ls.active.path, ls.active.size
			ls.mu.Unlock()

			rep := &Envelope{From: "", Recipients: []Recipient{{Address: orig.From}}}
			if err := q.DoneWithReports(orig.ID, tc.res, []Report{{Env: rep, Body: bytes.NewReader(tc.reportBody)}}); err != nil {
				t.Fatalf("DoneWithReports: %v", err)
			}
			ls.mu.Lock()
			end := ls.active.size
			ls.mu.Unlock()
			if rep.ID == "" || rep.Size != int64(len(tc.reportBody)) {
				t.Fatalf("report envelope after DoneWithReports: %+v", rep)
			}
			removed := tc.rcpts == 1

			// In memory: the report is due, the outcome applied.
			if got, err := q.Next(context.Background()); err != nil || got.ID != rep.ID {
				t.Fatalf("Next after DoneWithReports: %v %v, want the report %s", got, err, rep.ID)
			}
			if b := bodyOf(t, q, rep.ID); !bytes.Equal(b, tc.reportBody) {
				t.Fatalf("report body read back: %d bytes, want %d", len(b), len(tc.reportBody))
			}
			if _, err := q.Get(orig.ID); removed != errors.Is(err, ErrNotFound) {
				t.Fatalf("original after DoneWithReports: %v (removed: %v)", err, removed)
			}

			full := t.TempDir()
			copyQueue(t, dir, full)
			data, err := os.ReadFile(filepath.Join(full, filepath.Base(seg)))
			if err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(filepath.Join(full, "LOCK"), nil, 0o600); err != nil {
				t.Fatal(err)
			}
			quiet := slog.New(slog.NewTextHandler(io.Discard, nil))
			for cut := start; cut <= end; cut++ {
				if err := os.WriteFile(filepath.Join(full, filepath.Base(seg)), data[:cut], 0o600); err != nil {
					t.Fatal(err)
				}
				q2, err := Open(full, Options{ReadOnly: true, Logger: quiet})
				if err != nil {
					t.Fatal(err)
				}
				got, gotErr := q2.Get(rep.ID)
				after, afterErr := q2.Get(orig.ID)
				switch {
				case gotErr != nil: // neither: the original as it was
					if afterErr != nil || after.Attempts != 0 || after.Pending() != tc.rcpts || after.DelayWarned {
						t.Errorf("cut at %d of %d..%d: no report, and the original is %+v (%v)", cut, start, end, after, afterErr)
					}
					if cut == end {
						t.Errorf("the whole commit read back without the report")
					}
				default: // both: the report, and the outcome applied
					if b := bodyOf(t, q2, rep.ID); !bytes.Equal(b, tc.reportBody) || got.From != "" {
						t.Errorf("cut at %d: report from <%s>, body of %d bytes", cut, got.From, len(b))
					}
					if removed && afterErr == nil {
						t.Errorf("cut at %d of %d..%d: the report without its outcome: the original is still queued: %+v", cut, start, end, after)
					}
					if !removed && (afterErr != nil || after.Attempts != 1 || !after.DelayWarned || after.Recipients[0].State != Failed || after.Pending() != 1) {
						t.Errorf("cut at %d of %d..%d: the report without its outcome: the original is %+v (%v)", cut, start, end, after, afterErr)
					}
					if cut != end {
						t.Errorf("cut at %d of %d..%d: a part of the commit read back as a whole", cut, start, end)
					}
				}
				q2.Close()
				if t.Failed() {
					break
				}
			}
		})
	}
}

// TestDoneWithReportsFailureKeepsMessage: a report that cannot be stored
// stores nothing, and the message stays handed out for Done.
func TestDoneWithReportsFailureKeepsMessage(t *testing.T) {
	t.Parallel()
	q := openTest(t, t.TempDir())
	orig := newEnv("a@example.test")
	if err := q.Enqueue(orig, strings.NewReader("original\r\n")); err != nil {
		t.Fatal(err)
	}
	if _, err := q.Next(context.Background()); err != nil {
		t.Fatal(err)
	}
	res := Result{Recipients: []RcptUpdate{{Index: 0, State: Failed}}}
	rep := &Envelope{Recipients: []Recipient{{Address: orig.From}}}
	err := q.DoneWithReports(orig.ID, res, []Report{{Env: rep, Body: &failingReader{}}})
	if err == nil {
		t.Fatal("DoneWithReports with an unreadable report succeeded")
	}
	if n := len(q.List()); n != 1 {
		t.Fatalf("%d messages queued after a failed DoneWithReports, want the original only", n)
	}
	if !q.InFlight(orig.ID) {
		t.Fatal("the message is no longer handed out")
	}
	if err := q.Done(orig.ID, res); err != nil {
		t.Fatalf("Done after a failed DoneWithReports: %v", err)
	}
	if n := len(q.List()); n != 0 {
		t.Fatalf("%d messages queued, want none", n)
	}
}

// updateFailStore is a LogStore whose outcomes cannot be recorded, as on a
// full disk.
type updateFailStore struct{ *LogStore }

func (s updateFailStore) Update(*StateUpdate) (*Envelope, bool, error) {
	return nil, false, errors.New("write seg: no space left on device")
}

// TestDoneFailureKeepsBackoff: an outcome that cannot be recorded leaves
// the message due when the outcome said, not at once (it was retried in a
// tight loop against the remote server while the disk was full).
func TestDoneFailureKeepsBackoff(t *testing.T) {
	t.Parallel()
	ls, err := OpenLogStore(t.TempDir(), slog.Default())
	if err != nil {
		t.Fatal(err)
	}
	q, err := Open("", Options{Store: updateFailStore{ls}, RetryIntervals: []time.Duration{time.Hour}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { q.Close() })
	env := newEnv("a@example.test")
	if err := q.Enqueue(env, strings.NewReader("body\r\n")); err != nil {
		t.Fatal(err)
	}
	if _, err := q.Next(context.Background()); err != nil {
		t.Fatal(err)
	}
	before := time.Now()
	res := Result{Recipients: []RcptUpdate{{Index: 0, State: Pending, Code: 451, Reply: "4.3.0 later"}}}
	if err := q.Done(env.ID, res); err == nil {
		t.Fatal("Done succeeded on a store that cannot record")
	}
	if q.InFlight(env.ID) {
		t.Fatal("the message is still handed out")
	}
	due, ok := q.Due(env.ID)
	if !ok {
		t.Fatal("the message is no longer scheduled")
	}
	if due.Before(before.Add(50 * time.Minute)) {
		t.Fatalf("due %v after a failed Done, want about an hour from %v (the retry interval)", due, before)
	}
}

// TestProgressWithReports: the outcome of some recipients of a message whose
// attempt goes on is recorded with their report in one commit that counts no
// attempt: a kill -9 then (a copy of the directory) leaves the report queued,
// those recipients delivered, the others pending and the schedule as it was.
func TestProgressWithReports(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	q := openTest(t, dir)
	orig := newEnv("a@one.test", "b@two.test")
	if err := q.Enqueue(orig, strings.NewReader("Subject: hi\r\n\r\noriginal\r\n")); err != nil {
		t.Fatal(err)
	}
	if got, err := q.Next(context.Background()); err != nil || got.ID != orig.ID {
		t.Fatalf("Next: %v %v", got, err)
	}
	rep := &Envelope{From: "", Recipients: []Recipient{{Address: orig.From}}}
	body := []byte("Subject: relayed\r\n\r\nreport\r\n")
	err := q.ProgressWithReports(orig.ID, []RcptUpdate{{Index: 0, State: Delivered, Code: 250, Reply: "2.0.0 ok"}},
		[]Report{{Env: rep, Body: bytes.NewReader(body)}})
	if err != nil {
		t.Fatalf("ProgressWithReports: %v", err)
	}
	if rep.ID == "" {
		t.Fatal("the report got no queue ID")
	}
	if !q.InFlight(orig.ID) {
		t.Error("the original is no longer handed out")
	}
	if got, err := q.Next(context.Background()); err != nil || got.ID != rep.ID {
		t.Fatalf("Next: %v %v, want the report %s due", got, err, rep.ID)
	}
	crash := t.TempDir()
	copyQueue(t, dir, crash)
	q2 := openTest(t, crash)
	if b := bodyOf(t, q2, rep.ID); !bytes.Equal(b, body) {
		t.Errorf("report after the crash: %q", b)
	}
	after, err := q2.Get(orig.ID)
	if err != nil {
		t.Fatal(err)
	}
	if after.Recipients[0].State != Delivered || after.Recipients[1].State != Pending || after.Attempts != 0 ||
		!after.NextAttempt.Equal(orig.NextAttempt) {
		t.Errorf("original after the crash: %+v, want a delivered, b pending, no attempt, due as before", after)
	}
}
