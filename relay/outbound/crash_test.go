package outbound

import (
	"errors"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/emersion/go-smtp"
	"github.com/mailhop/mailhop/internal/testlog"
	"github.com/mailhop/mailhop/queue"
	"github.com/mailhop/mailhop/relay/outbound/smtptest"
)

// crashStore is the queue's LogStore, copying the queue directory right
// after the first report is stored (before the store writes anything
// else): the copy is what a kill -9 at that moment leaves, since every
// record the store acknowledged has been written.
type crashStore struct {
	queue.Store
	t         *testing.T
	dir, snap string
	once      sync.Once
	taken     atomic.Bool
}

func (s *crashStore) snapshot() {
	s.once.Do(func() {
		copyTree(s.t, s.dir, s.snap)
		s.taken.Store(true)
	})
}

func (s *crashStore) Put(env *queue.Envelope, body io.Reader) error {
	err := s.Store.Put(env, body)
	if err == nil && env.From == "" {
		s.snapshot() // a report queued on its own
	}
	return err
}

func (s *crashStore) UpdateWithReports(u *queue.StateUpdate, reports []queue.Report) (*queue.Envelope, bool, error) {
	env, removed, err := s.Store.UpdateWithReports(u, reports)
	if err == nil && len(reports) > 0 {
		s.snapshot()
	}
	return env, removed, err
}

// useQueue gives the harness a queue in dir (on store, when not nil)
// instead of its own, so a test can copy what a crash would leave. Call it
// before start.
func (h *harness) useQueue(dir string, store queue.Store) *queue.Queue {
	h.t.Helper()
	q, err := queue.Open(dir, queue.Options{Store: store, RetryIntervals: []time.Duration{time.Hour}})
	if err != nil {
		h.t.Fatal(err)
	}
	h.t.Cleanup(func() { q.Close() })
	h.q.Close()
	h.q = q
	return q
}

// copyTree copies the files under from to to, but for the lock and the
// spare segment a start deletes (it may be renamed under the walk).
func copyTree(t *testing.T, from, to string) {
	t.Helper()
	err := filepath.WalkDir(from, func(path string, d fs.DirEntry, err error) error {
		if errors.Is(err, fs.ErrNotExist) {
			return nil
		}
		if err != nil {
			return err
		}
		if strings.HasPrefix(d.Name(), "spare.") {
			return nil
		}
		rel, _ := filepath.Rel(from, path)
		if d.IsDir() {
			return os.MkdirAll(filepath.Join(to, rel), 0o700)
		}
		if d.Name() == "LOCK" {
			return nil
		}
		data, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		return os.WriteFile(filepath.Join(to, rel), data, 0o600)
	})
	if err != nil {
		t.Errorf("copying the queue: %v", err) // not Fatal: called from the agent's goroutines
	}
}

// TestDSN_CrashAfterReport_OneReport: the process is killed right after a
// report is queued, before it could do anything else. After the restart
// the sender gets exactly one report and the original is not tried again:
// the report and the original's outcome were one commit. (They were two:
// the report fsynced, then the outcome; a crash between them bounced the
// message a second time, or delivered it after `queue bounce`.)
func TestDSN_CrashAfterReport_OneReport(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name   string
		bounce bool // 451 downstream, then `mailhop queue bounce ID`
	}{
		{name: "permanent failure"},
		{name: "queue bounce", bounce: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			var rcpts atomic.Int32 // RCPTs the destination saw
			var senderUp atomic.Bool
			h := newHarness(t, smtptest.Behaviour{Rcpt: func(string, *smtp.RcptOptions) error {
				rcpts.Add(1)
				if tc.bounce {
					return smtptest.Reply(451, "4.2.1", "mailbox busy")
				}
				return smtptest.Reply(550, "5.1.1", "no such user here")
			}}, zone("example.test", "127.0.0.2"))
			// The sender's MX takes reports only after the restart, so
			// every report it holds was sent by the restarted relay.
			senderMX := h.server("127.0.0.250", smtptest.Behaviour{Rcpt: func(string, *smtp.RcptOptions) error {
				if !senderUp.Load() {
					return smtptest.Reply(451, "4.3.0", "not yet")
				}
				return nil
			}})

			dir, snap := t.TempDir(), t.TempDir()
			ls, err := queue.OpenLogStore(dir, nil)
			if err != nil {
				t.Fatal(err)
			}
			cs := &crashStore{Store: ls, t: t, dir: dir, snap: snap}
			q := h.useQueue(dir, cs)
			h.start()
			id := h.submit(testBody, []string{"a@example.test"})
			h.waitRecords(id, 1)
			if tc.bounce {
				if err := h.agent.BounceNow(id); err != nil {
					t.Fatalf("BounceNow: %v", err)
				}
			}
			if !cs.taken.Load() {
				t.Fatalf("no report was queued\nlog:\n%s", h.logs.String())
			}
			h.stop()
			q.Close()

			// The restart, from what the crash left.
			q2, err := queue.Open(snap, queue.Options{RetryIntervals: []time.Duration{time.Hour}})
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { q2.Close() })
			left := q2.List()
			if len(left) != 1 || left[0].ID == id || left[0].From != "" || left[0].Recipients[0].Address != "sender@sender.test" {
				for _, e := range left {
					t.Errorf("after the crash: %s from <%s> to %v, %d attempts", e.ID, e.From, e.Recipients, e.Attempts)
				}
				t.Fatalf("after the crash %d messages are queued, want only the report (original %s)", len(left), id)
			}
			report := left[0].ID
			before := rcpts.Load()
			h.mu.Lock()
			tried := h.records[report] // by the first process, refused
			h.mu.Unlock()
			senderUp.Store(true)
			h.q = q2
			h.start()
			h.waitRecords(report, tried+1)
			if n := len(q2.List()); n != 0 {
				t.Errorf("%d messages queued after the report went out", n)
			}
			if n := len(senderMX.Messages()); n != 1 {
				t.Errorf("the sender got %d reports, want 1", n)
			}
			parseBounce(t, senderMX.Messages()[0])
			if n := rcpts.Load() - before; n != 0 {
				t.Errorf("the original was tried again %d times after the restart", n)
			}
		})
	}
}

// TestDelivery_MultiDomain_DeliveredRecordedBeforeSlowDomain: a message to
// two domains, one of which stalls after the data: the recipient the fast
// domain took is recorded as delivered at once, so a kill -9 while the slow
// one still waits (what copying the queue directory then leaves) does not
// send it to the fast domain again.
func TestDelivery_MultiDomain_DeliveredRecordedBeforeSlowDomain(t *testing.T) {
	t.Parallel()
	h := newHarness(t, smtptest.Behaviour{}, zone("fast.test", "127.0.0.2", "slow.test", "127.0.0.3"))
	slow := h.server("127.0.0.3", smtptest.Behaviour{StallData: true})
	h.cfg.Delivery.DataEndTimeout.Duration = time.Minute
	dir, snap := t.TempDir(), t.TempDir()
	h.useQueue(dir, nil)
	h.start()
	id := h.submit(testBody, []string{"a@fast.test", "b@slow.test"})
	h.first.Wait(t, 1)
	select {
	case <-slow.Stalled():
	case <-time.After(10 * time.Second):
		t.Fatal("the slow domain never got the message")
	}
	// The fast domain's outcome is written while the slow one waits.
	deadline := time.Now().Add(10 * time.Second)
	for {
		if env := h.envelope(id); env != nil && env.Recipients[0].State == queue.Delivered {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("a@fast.test not recorded as delivered while b@slow.test waits: %+v", h.envelope(id))
		}
		time.Sleep(10 * time.Millisecond)
	}
	copyTree(t, dir, snap) // what a kill -9 now leaves
	q2, err := queue.Open(snap, queue.Options{RetryIntervals: []time.Duration{time.Hour}})
	if err != nil {
		t.Fatal(err)
	}
	defer q2.Close()
	env, err := q2.Get(id)
	if err != nil {
		t.Fatal(err)
	}
	if env.Recipients[0].State != queue.Delivered || env.Recipients[1].State != queue.Pending || env.Attempts != 0 {
		t.Errorf("after the crash: %+v; want a@fast.test delivered, b@slow.test pending, no attempt counted", env.Recipients)
	}
}

// TestDelivery_MultiDomain_DeliveredLoggedWhenRecorded: the recipient a fast
// domain took is logged "delivered" when it is recorded, while the slow
// domain still waits, and not again at the attempt's end; it was logged at
// the end only, so a process killed meanwhile never logged it.
func TestDelivery_MultiDomain_DeliveredLoggedWhenRecorded(t *testing.T) {
	t.Parallel()
	release := make(chan struct{})
	h := newHarness(t, smtptest.Behaviour{}, zone("fast.test", "127.0.0.2", "slow.test", "127.0.0.3"))
	h.server("127.0.0.3", smtptest.Behaviour{Data: func(*smtptest.Message) error {
		<-release
		return nil
	}})
	h.cfg.Delivery.DataEndTimeout.Duration = time.Minute
	h.start()
	id := h.submit(testBody, []string{"a@fast.test", "b@slow.test"})
	line := h.logs.WaitLine(10*time.Second, "msg=delivered", "queue_id="+id, "rcpt=a@fast.test")
	close(release)
	if line == "" {
		t.Fatalf("a@fast.test not logged delivered while b@slow.test waits:\n%s", h.logs.String())
	}
	h.waitRecords(id, 1)
	logs := h.logs.String()
	if n := len(testlog.Lines(logs, "msg=delivered", "rcpt=a@fast.test")); n != 1 {
		t.Errorf("%d 'delivered' lines for a@fast.test, want 1:\n%s", n, logs)
	}
	if n := len(testlog.Lines(logs, "msg=delivered", "rcpt=b@slow.test")); n != 1 {
		t.Errorf("%d 'delivered' lines for b@slow.test, want 1:\n%s", n, logs)
	}
	if s := h.agent.Stats(); s.Delivered != 2 {
		t.Errorf("Stats().Delivered = %d, want 2", s.Delivered)
	}
}
