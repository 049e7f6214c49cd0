package queue

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/mailhop/mailhop/internal/testlog"
)

func openTest(t *testing.T, dir string) *Queue {
	t.Helper()
	q, err := Open(dir, Options{})
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	t.Cleanup(func() { q.Close() })
	return q
}

func newEnv(rcpts ...string) *Envelope {
	env := &Envelope{From: "sender@example.org", ClientAddr: "127.0.0.1", BodyType: "8BITMIME",
		Ret: "HDRS", EnvID: "env-1", User: "app"}
	for _, r := range rcpts {
		env.Recipients = append(env.Recipients, Recipient{Address: r, Notify: NotifyFailure | NotifyDelay, ORCPT: "rfc822;" + r})
	}
	return env
}

func bodyOf(t *testing.T, q *Queue, id string) []byte {
	t.Helper()
	b, err := q.Body(id)
	if err != nil {
		t.Fatalf("Body(%s): %v", id, err)
	}
	defer b.Close()
	data, err := io.ReadAll(b)
	if err != nil {
		t.Fatalf("reading body: %v", err)
	}
	if int64(len(data)) != b.Size() {
		t.Fatalf("body size %d, Size() %d", len(data), b.Size())
	}
	return data
}

func bigBody(n int) []byte {
	var b bytes.Buffer
	for i := 0; b.Len() < n; i++ {
		fmt.Fprintf(&b, "line %d: the quick brown fox jumps over the lazy dog\r\n", i)
	}
	return b.Bytes()[:n]
}

func TestEnqueueAndRecover(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	q := openTest(t, dir)
	small := []byte("Subject: hi\r\n\r\n.leading dot\r\n\xc3\xa9t\xc3\xa9\r\n")
	large := bigBody(3*InlineMax + 17)
	envS, envL := newEnv("a@x.test", "b@y.test"), newEnv("c@x.test")
	if err := q.Enqueue(envS, bytes.NewReader(small)); err != nil {
		t.Fatal(err)
	}
	if err := q.Enqueue(envL, bytes.NewReader(large)); err != nil {
		t.Fatal(err)
	}
	if envS.Size != int64(len(small)) || envL.Size != int64(len(large)) {
		t.Fatalf("sizes %d %d", envS.Size, envL.Size)
	}
	if envS.ID >= envL.ID {
		t.Fatalf("IDs do not sort by arrival: %s %s", envS.ID, envL.ID)
	}
	q.Close()

	q2 := openTest(t, dir)
	list := q2.List()
	if len(list) != 2 || list[0].ID != envS.ID || list[1].ID != envL.ID {
		t.Fatalf("recovered %v", list)
	}
	got := list[0]
	if got.From != envS.From || len(got.Recipients) != 2 || got.Recipients[1].Address != "b@y.test" ||
		got.Recipients[0].ORCPT != "rfc822;a@x.test" || got.Recipients[0].Notify != NotifyFailure|NotifyDelay ||
		got.Ret != "HDRS" || got.EnvID != "env-1" || got.User != "app" || got.BodyType != "8BITMIME" {
		t.Fatalf("envelope changed: %+v", got)
	}
	if !bytes.Equal(bodyOf(t, q2, envS.ID), small) || !bytes.Equal(bodyOf(t, q2, envL.ID), large) {
		t.Fatal("body changed across restart")
	}
	if id := q2.NewID(); id <= envL.ID {
		t.Fatalf("new ID %s does not sort after recovered %s", id, envL.ID)
	}
}

type failingReader struct{ n int }

var errBadData = errors.New("bad data")

func (r *failingReader) Read(p []byte) (int, error) {
	if r.n <= 0 {
		return 0, errBadData
	}
	n := min(len(p), r.n)
	for i := range p[:n] {
		p[i] = 'x'
	}
	r.n -= n
	return n, nil
}

func TestEnqueueBodyErrorStoresNothing(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	q := openTest(t, dir)
	for _, n := range []int{10, 5 * InlineMax} {
		err := q.Enqueue(newEnv("a@x.test"), &failingReader{n: n})
		if !errors.Is(err, errBadData) {
			t.Fatalf("want errBadData, got %v", err)
		}
	}
	if n := len(q.List()); n != 0 {
		t.Fatalf("%d messages stored after failed reads", n)
	}
	if ents, _ := os.ReadDir(filepath.Join(dir, "bodies")); len(ents) != 0 {
		t.Fatalf("body files left: %v", ents)
	}
}

func TestDeliveryCycle(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	var mu sync.Mutex
	clock := func() time.Time { mu.Lock(); defer mu.Unlock(); return now }
	q, err := Open(dir, Options{Now: clock, RetryIntervals: []time.Duration{time.Minute, time.Hour}})
	if err != nil {
		t.Fatal(err)
	}
	env := newEnv("ok@x.test", "bad@x.test", "later@y.test")
	if err := q.Enqueue(env, strings.NewReader("body\r\n")); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	got, err := q.Next(ctx)
	if err != nil || got.ID != env.ID {
		t.Fatalf("Next: %v %v", got, err)
	}
	if _, err := q.Claim(env.ID); !errors.Is(err, ErrBusy) {
		t.Fatalf("Claim of in-flight message: %v", err)
	}
	err = q.Done(env.ID, Result{LastError: "451 try later", Recipients: []RcptUpdate{
		{Index: 0, State: Delivered, Code: 250, Reply: "ok"},
		{Index: 1, State: Failed, Code: 550, Reply: "no such user"},
		{Index: 2, State: Pending, Code: 451, Reply: "try later"},
	}})
	if err != nil {
		t.Fatal(err)
	}
	e, _ := q.Get(env.ID)
	if e.Attempts != 1 || e.Recipients[0].State != Delivered || e.Recipients[1].State != Failed ||
		e.Recipients[2].State != Pending || e.Recipients[2].Code != 451 {
		t.Fatalf("after attempt: %+v", e)
	}
	if d := e.NextAttempt.Sub(now); d < 54*time.Second || d > 66*time.Second {
		t.Fatalf("next attempt in %v, want about 1m", d)
	}
	if due, ok := q.Due(env.ID); !ok || !due.Equal(e.NextAttempt) {
		t.Fatalf("Due = %v %v, want %v", due, ok, e.NextAttempt)
	}
	// Not due yet: Next must wait.
	short, cancelShort := context.WithTimeout(ctx, 50*time.Millisecond)
	if _, err := q.Next(short); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Next before due: %v", err)
	}
	cancelShort()
	if st := q.Stats(); st.Messages != 1 || st.Recipients != 1 {
		t.Fatalf("stats %+v", st)
	}
	if n := q.Flush("y.test"); n != 1 {
		t.Fatalf("Flush(y.test) = %d", n)
	}
	if n := q.Flush("x.test"); n != 0 {
		t.Fatalf("Flush(x.test) = %d (no pending recipient there)", n)
	}
	if _, err := q.Next(ctx); err != nil {
		t.Fatal(err)
	}
	if err := q.Done(env.ID, Result{Recipients: []RcptUpdate{{Index: 2, State: Delivered, Code: 250}}}); err != nil {
		t.Fatal(err)
	}
	if _, err := q.Get(env.ID); !errors.Is(err, ErrNotFound) {
		t.Fatalf("finished message still queued: %v", err)
	}
	if _, ok := q.Due(env.ID); ok {
		t.Fatal("finished message still scheduled")
	}
	q.Close()
	q2 := openTest(t, dir)
	if n := len(q2.List()); n != 0 {
		t.Fatalf("finished message resurrected after restart (%d)", n)
	}
}

func TestScheduleSurvivesRestart(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	q := openTest(t, dir)
	env := newEnv("a@x.test", "b@x.test")
	if err := q.Enqueue(env, strings.NewReader("x\r\n")); err != nil {
		t.Fatal(err)
	}
	if _, err := q.Next(context.Background()); err != nil {
		t.Fatal(err)
	}
	retry := time.Now().Add(3 * time.Hour).Truncate(time.Second)
	if err := q.Done(env.ID, Result{RetryAt: retry, LastError: "451 later", Recipients: []RcptUpdate{{Index: 0, State: Delivered, Code: 250}}}); err != nil {
		t.Fatal(err)
	}
	if err := q.Hold(env.ID); err != nil {
		t.Fatal(err)
	}
	q.Close()
	q2 := openTest(t, dir)
	e, err := q2.Get(env.ID)
	if err != nil {
		t.Fatal(err)
	}
	if !e.NextAttempt.Equal(retry) || e.Attempts != 1 || !e.Held || e.LastError != "451 later" ||
		e.Recipients[0].State != Delivered || e.Recipients[1].State != Pending {
		t.Fatalf("state after restart: %+v", e)
	}
	if err := q2.Release(env.ID); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if got, err := q2.Next(ctx); err != nil || got.ID != env.ID {
		t.Fatalf("released message not due: %v", err)
	}
	if err := q2.Requeue(env.ID); err != nil {
		t.Fatal(err)
	}
	if err := q2.Delete(env.ID); err != nil {
		t.Fatal(err)
	}
	if _, err := q2.Get(env.ID); !errors.Is(err, ErrNotFound) {
		t.Fatal("deleted message still there")
	}
}

func TestConcurrentEnqueueGroupCommit(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	q := openTest(t, dir)
	const writers, each = 20, 25
	var wg sync.WaitGroup
	ids := make(chan string, writers*each)
	for w := 0; w < writers; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			for i := 0; i < each; i++ {
				env := newEnv(fmt.Sprintf("r%d-%d@x.test", w, i))
				body := fmt.Sprintf("Subject: %d-%d\r\n\r\nhello\r\n", w, i)
				if err := q.Enqueue(env, strings.NewReader(body)); err != nil {
					t.Error(err)
					return
				}
				ids <- env.ID
			}
		}(w)
	}
	wg.Wait()
	close(ids)
	seen := map[string]bool{}
	for id := range ids {
		if seen[id] {
			t.Fatalf("duplicate ID %s", id)
		}
		seen[id] = true
	}
	q.Close()
	q2 := openTest(t, dir)
	if n := len(q2.List()); n != writers*each {
		t.Fatalf("recovered %d of %d", n, writers*each)
	}
}

// segments returns the segment files in dir, oldest first.
func segments(t *testing.T, dir string) []string {
	t.Helper()
	m, _ := filepath.Glob(filepath.Join(dir, "seg-*.log"))
	return m
}

func TestCorruptRecordQuarantined(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	q := openTest(t, dir)
	var ids []string
	for i := 0; i < 3; i++ {
		env := newEnv("a@x.test")
		if err := q.Enqueue(env, strings.NewReader(fmt.Sprintf("message %d\r\n", i))); err != nil {
			t.Fatal(err)
		}
		ids = append(ids, env.ID)
	}
	q.Close()
	seg := segments(t, dir)[0]
	data, _ := os.ReadFile(seg)
	// Damage the middle record's payload, and add a torn half-record at the end.
	i := bytes.Index(data, []byte("message 1"))
	data[i] ^= 0xff
	data = append(data, data[:20]...)
	os.WriteFile(seg, data, 0o600)

	q2 := openTest(t, dir)
	list := q2.List()
	if len(list) != 2 || list[0].ID != ids[0] || list[1].ID != ids[2] {
		t.Fatalf("after damage recovered %v", list)
	}
	if string(bodyOf(t, q2, ids[2])) != "message 2\r\n" {
		t.Fatal("record after the damaged one is wrong")
	}
	if q, _ := filepath.Glob(filepath.Join(dir, "quarantine", "*.bad")); len(q) != 1 {
		t.Fatalf("quarantine holds %v", q)
	}
}

func TestMissingBodyFileQuarantined(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	q := openTest(t, dir)
	env := newEnv("a@x.test")
	if err := q.Enqueue(env, bytes.NewReader(bigBody(2*InlineMax))); err != nil {
		t.Fatal(err)
	}
	q.Close()
	os.Remove(filepath.Join(dir, "bodies", env.ID))
	os.WriteFile(filepath.Join(dir, "bodies", "ORPHAN0000000000"), []byte("x"), 0o600)
	q2 := openTest(t, dir)
	if n := len(q2.List()); n != 0 {
		t.Fatalf("message without body still queued")
	}
	if _, err := os.Stat(filepath.Join(dir, "quarantine", env.ID+".envelope.json")); err != nil {
		t.Fatalf("envelope not quarantined: %v", err)
	}
	if _, err := os.Stat(filepath.Join(dir, "bodies", "ORPHAN0000000000")); !os.IsNotExist(err) {
		t.Fatalf("orphan body file not removed: %v", err)
	}
	q2.Close()
	q3 := openTest(t, dir) // and the next start is clean too
	if n := len(q3.List()); n != 0 {
		t.Fatal("quarantined message came back")
	}
}

func TestCompactionKeepsLiveMessages(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	q := openTest(t, dir)
	q.store.(*LogStore).segMax = 4096
	// One long-lived message with a state update, then lots of traffic.
	keep := newEnv("stay@x.test", "done@x.test")
	if err := q.Enqueue(keep, strings.NewReader("keep me\r\n")); err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	if _, err := q.Next(ctx); err != nil {
		t.Fatal(err)
	}
	if err := q.Done(keep.ID, Result{RetryAt: time.Now().Add(time.Hour), Recipients: []RcptUpdate{{Index: 1, State: Delivered, Code: 250}}}); err != nil {
		t.Fatal(err)
	}
	body := bigBody(1500)
	for i := 0; i < 100; i++ {
		env := newEnv("x@y.test")
		if err := q.Enqueue(env, bytes.NewReader(body)); err != nil {
			t.Fatal(err)
		}
		if _, err := q.Next(ctx); err != nil {
			t.Fatal(err)
		}
		if err := q.Done(env.ID, Result{Recipients: []RcptUpdate{{Index: 0, State: Delivered}}}); err != nil {
			t.Fatal(err)
		}
	}
	if n := len(segments(t, dir)); n > compactAt+2 {
		t.Fatalf("%d segments left: compaction did not run", n)
	}
	q.Close()
	q2 := openTest(t, dir)
	list := q2.List()
	if len(list) != 1 || list[0].ID != keep.ID || list[0].Recipients[1].State != Delivered ||
		list[0].Recipients[0].State != Pending || list[0].Attempts != 1 {
		t.Fatalf("after compaction: %+v", list)
	}
	if string(bodyOf(t, q2, keep.ID)) != "keep me\r\n" {
		t.Fatal("body lost in compaction")
	}
}

// Compaction waits while the disk has no room for what it copies (a
// segment and the reserve), and runs once there is room again.
func TestCompactionWaitsForRoom(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	q := openTest(t, dir)
	ls := q.store.(*LogStore)
	ls.segMax = 4096
	var free atomic.Int64 // bytes the "file system" has free
	ls.freeSpace = free.Load
	keep := newEnv("stay@x.test")
	if err := q.Enqueue(keep, strings.NewReader("keep me\r\n")); err != nil {
		t.Fatal(err)
	}
	traffic := func(n int) {
		for i := 0; i < n; i++ {
			passThrough(t, q)
		}
	}
	traffic(40)
	if n := len(segments(t, dir)); n <= compactAt+2 {
		t.Fatalf("%d segments with no room on the disk: compaction ran anyway", n)
	}
	free.Store(1 << 40)
	traffic(40)
	if n := len(segments(t, dir)); n > compactAt+2 {
		t.Fatalf("%d segments once there is room: compaction did not run", n)
	}
	if string(bodyOf(t, q, keep.ID)) != "keep me\r\n" {
		t.Fatal("body lost in compaction")
	}
}

// passThrough queues a message of 1500 bytes, takes it (putting back any
// other message that is due) and records it delivered: traffic that fills
// segments and leaves nothing behind.
func passThrough(t *testing.T, q *Queue) {
	t.Helper()
	env := newEnv("x@y.test")
	if err := q.Enqueue(env, bytes.NewReader(bigBody(1500))); err != nil {
		t.Fatal(err)
	}
	for {
		got, err := q.Next(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		if got.ID == env.ID {
			break
		}
		q.Requeue(got.ID) // a long-lived message: not now
	}
	if err := q.Done(env.ID, Result{Recipients: []RcptUpdate{{Index: 0, State: Delivered}}}); err != nil {
		t.Fatal(err)
	}
}

func TestBodyReadableWhileItsSegmentGoes(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	q := openTest(t, dir)
	q.store.(*LogStore).segMax = 4096
	keep := newEnv("stay@x.test")
	if err := q.Enqueue(keep, strings.NewReader("keep me\r\n")); err != nil {
		t.Fatal(err)
	}
	b, err := q.Body(keep.ID)
	if err != nil {
		t.Fatal(err)
	}
	first := segments(t, dir)[0]
	// Traffic until compaction has moved the message and its first
	// segment is deleted.
	for i := 0; i < 200; i++ {
		if _, err := os.Stat(first); os.IsNotExist(err) {
			break
		}
		passThrough(t, q)
	}
	if _, err := os.Stat(first); !os.IsNotExist(err) {
		t.Fatal("the first segment was never deleted")
	}
	data, err := io.ReadAll(b)
	b.Close()
	if err != nil || string(data) != "keep me\r\n" {
		t.Fatalf("reading a body whose segment went: %q %v", data, err)
	}
	if string(bodyOf(t, q, keep.ID)) != "keep me\r\n" {
		t.Fatal("body after compaction")
	}
}

func TestSecondOpenRefused(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	openTest(t, dir)
	if _, err := Open(dir, Options{}); err == nil {
		t.Fatal("a second Open of the same directory succeeded")
	}
}

func BenchmarkEnqueue10K(b *testing.B) {
	q, err := Open(b.TempDir(), Options{})
	if err != nil {
		b.Fatal(err)
	}
	defer q.Close()
	body := bigBody(10 << 10)
	b.SetBytes(int64(len(body)))
	b.SetParallelism(10) // 10 × GOMAXPROCS writers, like 20 SMTP sessions on 2 cores
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if err := q.Enqueue(newEnv("a@x.test"), bytes.NewReader(body)); err != nil {
				b.Error(err)
				return
			}
		}
	})
	batches, records := q.store.(*LogStore).CommitStats()
	b.ReportMetric(float64(records)/float64(max(batches, 1)), "msgs/fsync")
}

func TestParseNotify(t *testing.T) {
	t.Parallel()
	good := map[string]Notify{
		"":                      0,
		"never":                 NotifyNever,
		"NEVER":                 NotifyNever,
		"success,failure,delay": NotifySuccess | NotifyFailure | NotifyDelay,
		"Delay, Failure":        NotifyDelay | NotifyFailure,
	}
	for in, want := range good {
		if got, err := ParseNotify(in); err != nil || got != want {
			t.Errorf("ParseNotify(%q) = %v, %v; want %v", in, got, err, want)
		}
	}
	for _, in := range []string{"never,success", "sometimes", "success,success", ",", "success,"} {
		if _, err := ParseNotify(in); err == nil {
			t.Errorf("ParseNotify(%q): no error", in)
		}
	}
}

// TestOpenReadOnly: a read-only open lists what is queued, creates and
// changes nothing, refuses changes, fails on a directory that is no queue
// and while a writer holds the queue.
func TestOpenReadOnly(t *testing.T) {
	t.Parallel()
	dir := filepath.Join(t.TempDir(), "queue")
	if _, err := Open(dir, Options{ReadOnly: true}); err == nil || !strings.Contains(err.Error(), "no queue at") {
		t.Fatalf("read-only open of a missing queue: %v", err)
	}
	if _, err := os.Stat(dir); !os.IsNotExist(err) {
		t.Fatalf("the read-only open created %s", dir)
	}
	q, err := Open(dir, Options{})
	if err != nil {
		t.Fatal(err)
	}
	env := &Envelope{ID: q.NewID(), From: "a@example.com", Recipients: []Recipient{{Address: "b@example.net"}}}
	if err := q.Enqueue(env, strings.NewReader("Subject: x\r\n\r\nbody\r\n")); err != nil {
		t.Fatal(err)
	}
	if _, err := Open(dir, Options{ReadOnly: true}); err == nil {
		t.Error("a read-only open succeeded while a writer holds the queue")
	}
	q.Close()

	before := treeOf(t, dir)
	ro, err := Open(dir, Options{ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	if got := ro.List(); len(got) != 1 || got[0].ID != env.ID {
		t.Errorf("read-only list = %+v", got)
	}
	if err := ro.Hold(env.ID); !errors.Is(err, ErrReadOnly) {
		t.Errorf("Hold on a read-only queue: %v", err)
	}
	if err := ro.Enqueue(&Envelope{ID: ro.NewID(), From: "a@example.com", Recipients: []Recipient{{Address: "c@example.net"}}},
		strings.NewReader("x\r\n")); !errors.Is(err, ErrReadOnly) {
		t.Errorf("Enqueue on a read-only queue: %v", err)
	}
	ro.Close()
	if after := treeOf(t, dir); !slices.Equal(before, after) {
		t.Errorf("the read-only open changed the directory:\nbefore %v\nafter  %v", before, after)
	}
}

// treeOf lists dir's files with their sizes.
func treeOf(t *testing.T, dir string) []string {
	t.Helper()
	var out []string
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		fi, err := d.Info()
		if err != nil {
			return err
		}
		out = append(out, fmt.Sprintf("%s %d", p, fi.Size()))
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// TestShortBodyFileQuarantined: a body file cut short (or replaced by
// something else) is moved aside at start like a missing one, and the log
// says what is wrong with it, not err=<nil>.
func TestShortBodyFileQuarantined(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	q := openTest(t, dir)
	short, other := newEnv("a@x.test"), newEnv("b@x.test")
	for _, env := range []*Envelope{short, other} {
		if err := q.Enqueue(env, bytes.NewReader(bigBody(2*InlineMax))); err != nil {
			t.Fatal(err)
		}
	}
	q.Close()
	if err := os.Truncate(filepath.Join(dir, "bodies", short.ID), 100); err != nil {
		t.Fatal(err)
	}
	os.Remove(filepath.Join(dir, "bodies", other.ID))
	os.Mkdir(filepath.Join(dir, "bodies", other.ID), 0o700)
	var logs testlog.Buffer
	q2, err := Open(dir, Options{Logger: slog.New(slog.NewTextHandler(&logs, nil))})
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	defer q2.Close()
	if n := len(q2.List()); n != 0 {
		t.Fatalf("%d messages with a damaged body still queued", n)
	}
	lines := testlog.Lines(logs.String(), "message without its body")
	if len(lines) != 2 || strings.Contains(logs.String(), "err=<nil>") ||
		!strings.Contains(logs.String(), "has 100 bytes") || !strings.Contains(logs.String(), "not a regular file") {
		t.Errorf("log does not say what is wrong with the bodies:\n%s", logs.String())
	}
}

// A segment that started as an empty file is only appended to, so zeros in
// it are damage: recovery says so, and keeps the bodies of the messages it
// lost in quarantine instead of deleting them as leftovers of a crash.
func TestZeroedSegmentReportedAndBodiesKept(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	q := openTest(t, dir)
	small, big := newEnv("a@x.test"), newEnv("b@x.test")
	if err := q.Enqueue(small, strings.NewReader("small\r\n")); err != nil {
		t.Fatal(err)
	}
	if err := q.Enqueue(big, bytes.NewReader(bigBody(2*InlineMax))); err != nil {
		t.Fatal(err)
	}
	q.Close()
	seg := segments(t, dir)[0]
	fi, err := os.Stat(seg)
	if err != nil || fi.Size() >= segmentMax {
		t.Fatalf("want a segment that started empty: %v %v", fi, err)
	}
	if err := os.WriteFile(seg, make([]byte, fi.Size()), 0o600); err != nil {
		t.Fatal(err)
	}

	var logs testlog.Buffer
	q2, err := Open(dir, Options{Logger: slog.New(slog.NewTextHandler(&logs, nil))})
	if err != nil {
		t.Fatal(err)
	}
	defer q2.Close()
	if n := len(q2.List()); n != 0 {
		t.Fatalf("%d messages recovered from zeros", n)
	}
	if !strings.Contains(logs.String(), "segment ends in zeros") {
		t.Fatalf("zeroed segment not reported; log:\n%s", logs.String())
	}
	kept, err := os.ReadFile(filepath.Join(dir, "quarantine", big.ID))
	if err != nil || !bytes.Equal(kept, bigBody(2*InlineMax)) {
		t.Fatalf("body of the lost message not kept in quarantine: %v", err)
	}
}

// A parked message is not handed out, even by a flush, until Unpark; a
// held one is not made due by Unpark, and Release ends its park too.
func TestPark_Unpark(t *testing.T) {
	q := openTest(t, t.TempDir())
	env := newEnv("a@example.com")
	if err := q.Enqueue(env, strings.NewReader("x\r\n")); err != nil {
		t.Fatal(err)
	}
	next := func() string {
		ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
		defer cancel()
		e, err := q.Next(ctx)
		if err != nil {
			return ""
		}
		return e.ID
	}
	if got := next(); got != env.ID {
		t.Fatalf("Next = %q", got)
	}
	if d, p := q.Activity(env.ID); !d || p {
		t.Errorf("Activity of a message handed out = %v, %v; want delivering", d, p)
	}
	if err := q.Park(env.ID, time.Time{}); err != nil {
		t.Fatal(err)
	}
	if d, p := q.Activity(env.ID); d || !p {
		t.Errorf("Activity of a parked message = %v, %v; want parked", d, p)
	}
	if err := q.Park(env.ID, time.Time{}); err != ErrNotFound {
		t.Errorf("Park of a message not handed out: %v", err)
	}
	q.Flush("")
	if got := next(); got != "" {
		t.Fatalf("parked message handed out: %s", got)
	}
	if !q.Unpark(env.ID) || q.Unpark(env.ID) {
		t.Fatal("Unpark: want true once")
	}
	if got := next(); got != env.ID {
		t.Fatalf("Next after Unpark = %q", got)
	}
	q.Park(env.ID, time.Time{})
	if err := q.Hold(env.ID); err != nil {
		t.Fatal(err)
	}
	if q.Unpark(env.ID) {
		t.Error("Unpark made a held message due")
	}
	if err := q.Release(env.ID); err != nil {
		t.Fatal(err)
	}
	if got := next(); got != env.ID {
		t.Fatalf("Next after Release = %q", got)
	}
}

// handedOut enqueues one message and takes it with Next, as the delivery
// agent does; ctx (10 s) is for the test's further calls of Next.
func handedOut(t *testing.T, q *Queue) (context.Context, *Envelope) {
	t.Helper()
	env := newEnv("a@example.com")
	if err := q.Enqueue(env, strings.NewReader("x\r\n")); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	t.Cleanup(cancel)
	if e, err := q.Next(ctx); err != nil || e.ID != env.ID {
		t.Fatalf("Next = %v, %v", e, err)
	}
	return ctx, env
}

// UnparkFor calls a parked message back only for a slot of a domain it
// still has pending recipients in: one parked for two domains' slots and
// delivered to one of them is not called back by that one.
func TestUnparkFor_OnlyItsDomains(t *testing.T) {
	q := openTest(t, t.TempDir())
	env := newEnv("a@x.example", "b@y.example")
	if err := q.Enqueue(env, strings.NewReader("x\r\n")); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if e, err := q.Next(ctx); err != nil || e.ID != env.ID {
		t.Fatalf("Next = %v, %v", e, err)
	}
	err := q.Done(env.ID, Result{Uncounted: true, Park: true, RetryAt: env.NextAttempt,
		Recipients: []RcptUpdate{{Index: 0, State: Pending, Reply: "4.4.5 no connection slot"}, {Index: 1, State: Delivered, Code: 250}}})
	if err != nil {
		t.Fatal(err)
	}
	if q.UnparkFor(env.ID, "y.example") {
		t.Fatal("UnparkFor the domain it was delivered to: want false")
	}
	if _, parked := q.Activity(env.ID); !parked {
		t.Fatal("no longer parked")
	}
	if !q.UnparkFor(env.ID, "X.example") {
		t.Fatal("UnparkFor the domain it waits for: want true")
	}
	if e, err := q.Next(ctx); err != nil || e.ID != env.ID {
		t.Fatalf("Next after UnparkFor = %v, %v", e, err)
	}
}

// A message parked with a time (its expiry or delay warning) is handed out
// at that time though still parked, and is then no longer parked: an
// Unpark for the slot it waited for finds nothing to do.
func TestPark_Until(t *testing.T) {
	q := openTest(t, t.TempDir())
	ctx, env := handedOut(t, q)
	if err := q.Park(env.ID, time.Now().Add(100*time.Millisecond)); err != nil {
		t.Fatal(err)
	}
	if _, p := q.Activity(env.ID); !p {
		t.Fatal("not parked")
	}
	e, err := q.Next(ctx)
	if err != nil || e.ID != env.ID {
		t.Fatalf("Next of a message parked until a time = %v, %v; want it at that time", e, err)
	}
	if d, p := q.Activity(env.ID); !d || p {
		t.Errorf("Activity = %v, %v; want delivering, not parked", d, p)
	}
	if q.Unpark(env.ID) {
		t.Error("Unpark of a message handed out at its time: want false")
	}
}

// A message held while it was handed out and then parked with a time is
// not handed out at that time: a hold stops delivery until Release (Park
// put it back in the schedule whatever its hold, and the agent delivered
// a held message at its delay warning or expiry).
func TestPark_Until_Held(t *testing.T) {
	q := openTest(t, t.TempDir())
	ctx, env := handedOut(t, q)
	if err := q.Hold(env.ID); err != nil {
		t.Fatal(err)
	}
	// Its time already reached: were it scheduled, Next would hand it out
	// at once, before looking at its (done) context.
	if err := q.Park(env.ID, time.Now().Add(-time.Second)); err != nil {
		t.Fatal(err)
	}
	done, stop := context.WithCancel(context.Background())
	stop()
	if e, err := q.Next(done); err == nil {
		t.Fatalf("Next handed out held message %s", e.ID)
	}
	if err := q.Release(env.ID); err != nil {
		t.Fatal(err)
	}
	if e, err := q.Next(ctx); err != nil || e.ID != env.ID {
		t.Fatalf("Next after Release = %v, %v", e, err)
	}
}

// Result.RetryBy brings the next attempt forward when it falls before the
// retry interval's end, and is ignored when it is not ahead of now (a
// message due at once after every attempt would be tried in a tight loop).
func TestDoneRetryBy(t *testing.T) {
	t.Parallel()
	now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	q, err := Open(t.TempDir(), Options{Now: func() time.Time { return now }, RetryIntervals: []time.Duration{time.Hour}})
	if err != nil {
		t.Fatal(err)
	}
	defer q.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	for _, tc := range []struct {
		name     string
		by       time.Time
		min, max time.Duration
	}{
		{"before the interval's end", now.Add(10 * time.Minute), 10 * time.Minute, 10 * time.Minute},
		{"after the interval's end", now.Add(3 * time.Hour), 54 * time.Minute, 66 * time.Minute},
		{"in the past", now.Add(-time.Minute), 54 * time.Minute, 66 * time.Minute},
	} {
		env := newEnv("a@x.test")
		if err := q.Enqueue(env, strings.NewReader("body\r\n")); err != nil {
			t.Fatal(err)
		}
		if _, err := q.Next(ctx); err != nil {
			t.Fatal(err)
		}
		if err := q.Done(env.ID, Result{RetryBy: tc.by, Recipients: []RcptUpdate{{Index: 0, State: Pending}}}); err != nil {
			t.Fatal(err)
		}
		e, _ := q.Get(env.ID)
		if d := e.NextAttempt.Sub(now); d < tc.min || d > tc.max {
			t.Errorf("%s: next attempt in %v, want %v to %v", tc.name, d, tc.min, tc.max)
		}
	}
}

// TestOpenWaitsForReader: a relay that starts while `mailhop queue list`
// reads the stopped queue (a shared lock) waits for the reader to finish
// instead of failing with "in use by another process"; a writer's lock
// still fails the open at once.
func TestOpenWaitsForReader(t *testing.T) {
	t.Parallel()
	dir := filepath.Join(t.TempDir(), "queue")
	q, err := Open(dir, Options{})
	if err != nil {
		t.Fatal(err)
	}
	q.Close()
	ro, err := Open(dir, Options{ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	opened := make(chan error, 1)
	var w *Queue
	go func() {
		var err error
		w, err = Open(dir, Options{})
		opened <- err
	}()
	select {
	case err := <-opened:
		t.Fatalf("the open returned while a reader holds the queue: %v", err)
	case <-time.After(100 * time.Millisecond): // a bounded wait for a negative check
	}
	ro.Close()
	if err := <-opened; err != nil {
		t.Fatalf("open after the reader finished: %v", err)
	}
	defer w.Close()
	start := time.Now()
	if _, err := Open(dir, Options{}); err == nil || !strings.Contains(err.Error(), "in use by another process") {
		t.Errorf("a second writer's open: %v", err)
	} else if d := time.Since(start); d > 2*time.Second {
		t.Errorf("a second writer's open failed after %s, not at once", d)
	}
}

// TestLostMessageNamedByID: when recovery drops a message's record (its
// segment cut short, or the record damaged) and a later record of it
// survives (here its hold record, in the next segment), the message is
// logged lost by its queue ID at error level, once: the cut was logged
// only as an incomplete record, the damage as a quarantined one, neither
// naming the message.
func TestLostMessageNamedByID(t *testing.T) {
	t.Parallel()
	for _, how := range []string{"cut", "damaged"} {
		q, st, dir := smallSegments(t, false)
		lost, other := newEnv("a@x.test"), newEnv("b@x.test")
		if err := q.Enqueue(lost, strings.NewReader("LOSTBODY "+strings.Repeat("x", 3000)+"\r\n")); err != nil {
			t.Fatal(err)
		}
		if err := q.Enqueue(other, bytes.NewReader(bigBody(6000))); err != nil {
			t.Fatal(err)
		}
		if err := q.Hold(lost.ID); err != nil {
			t.Fatal(err)
		}
		st.mu.Lock()
		nsegs := len(st.segs)
		st.mu.Unlock()
		q.Close()
		segs := segments(t, dir)
		if nsegs < 2 || len(segs) < 2 {
			t.Fatalf("%s: want the hold record in a later segment, have %d segments", how, len(segs))
		}
		data, err := os.ReadFile(segs[0])
		if err != nil {
			t.Fatal(err)
		}
		i := bytes.Index(data, []byte("LOSTBODY"))
		if i < 0 {
			t.Fatalf("%s: the message is not in the first segment", how)
		}
		if how == "cut" {
			data = data[:i+4] // a segment cut in the middle of the message's record
		} else {
			data[i] ^= 0xff
		}
		if err := os.WriteFile(segs[0], data, 0o600); err != nil {
			t.Fatal(err)
		}
		for start := range 2 {
			var logs testlog.Buffer
			q2, err := Open(dir, Options{Logger: slog.New(slog.NewTextHandler(&logs, nil))})
			if err != nil {
				t.Fatal(err)
			}
			if _, err := q2.Get(lost.ID); err == nil {
				t.Errorf("%s: the message came back from a dropped record", how)
			}
			q2.Close()
			n := countLines(logs.String(), "level=ERROR", `msg="queue: message lost`, "queue_id="+lost.ID)
			if want := 1 - start; n != want || strings.Contains(logs.String(), "queue_id="+other.ID) {
				t.Errorf("%s, start %d: %d error lines naming %s lost (want %d), none naming %s:\n%s",
					how, start+1, n, lost.ID, want, other.ID, logs.String())
			}
		}
	}
}

// countLines counts the lines of logs that contain every one of parts.
func countLines(logs string, parts ...string) int {
	n := 0
	for _, l := range strings.Split(logs, "\n") {
		all := true
		for _, p := range parts {
			all = all && strings.Contains(l, p)
		}
		if all {
			n++
		}
	}
	return n
}

// An outcome recorded with Uncounted and Park (the recipients left wait for
// a connection slot, no server tried) counts no attempt, keeps the schedule
// given, and leaves the message parked until Unpark (or its RetryBy).
func TestDone_UncountedPark(t *testing.T) {
	q := openTest(t, t.TempDir())
	ctx, env := handedOut(t, q)
	err := q.Done(env.ID, Result{Uncounted: true, Park: true, RetryAt: env.NextAttempt,
		Recipients: []RcptUpdate{{Index: 0, State: Pending, Reply: "4.4.5 no connection slot"}}})
	if err != nil {
		t.Fatal(err)
	}
	got, err := q.Get(env.ID)
	if err != nil {
		t.Fatal(err)
	}
	if got.Attempts != 0 || !got.NextAttempt.Equal(env.NextAttempt) {
		t.Errorf("after an uncounted outcome: %d attempts, next %v; want 0 and %v", got.Attempts, got.NextAttempt, env.NextAttempt)
	}
	if _, parked := q.Activity(env.ID); !parked {
		t.Fatal("not parked")
	}
	if !q.Unpark(env.ID) {
		t.Fatal("Unpark found nothing parked")
	}
	if e, err := q.Next(ctx); err != nil || e.ID != env.ID {
		t.Fatalf("Next after Unpark = %v, %v", e, err)
	}
}

// TestRetryIntervalOfCenturies: a retry interval so long that its jitter
// passes the largest time.Duration, or its time the largest the record
// holds (2262), still puts the next attempt in the future, also after a
// restart: it was converted to a negative wait (next attempt in 1734, the
// message tried again at once, in a loop), and stored wrapped into the past.
func TestRetryIntervalOfCenturies(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	opts := Options{RetryIntervals: []time.Duration{2_500_000 * time.Hour}} // 285 years
	q, err := Open(dir, opts)
	if err != nil {
		t.Fatal(err)
	}
	env := newEnv("a@x.test")
	if err := q.Enqueue(env, strings.NewReader("body\r\n")); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	for i := range 30 { // the jitter passes MaxInt64 in about 4 attempts in 10
		if i > 0 {
			q.Flush("")
		}
		if _, err := q.Next(ctx); err != nil {
			t.Fatal(err)
		}
		if err := q.Done(env.ID, Result{Recipients: []RcptUpdate{{Index: 0, State: Pending, Code: 451}}}); err != nil {
			t.Fatal(err)
		}
		if due, _ := q.Due(env.ID); !due.After(time.Now().AddDate(200, 0, 0)) {
			t.Fatalf("next attempt at %v, want centuries away", due)
		}
	}
	q.Close()
	q2, err := Open(dir, opts)
	if err != nil {
		t.Fatal(err)
	}
	defer q2.Close()
	e, err := q2.Get(env.ID)
	if err != nil {
		t.Fatal(err)
	}
	if !e.NextAttempt.After(time.Now().AddDate(200, 0, 0)) {
		t.Fatalf("after a restart the next attempt is %v, want centuries away", e.NextAttempt)
	}
}

// A script flushing one distinct domain after another (every domain of a
// queue list) must not grow the queue's memory without bound, and Flushes
// must still change for every domain flushed and never go back to a count
// taken before a flush (the agent compares them for equality).
func TestFlushDomains_Bounded(t *testing.T) {
	q := openTest(t, t.TempDir())
	const n = 3*maxDomainFlushes + 17
	before := make([]uint64, n)
	for i := range n {
		d := fmt.Sprintf("x%d.fail.test", i)
		before[i] = q.LastFlush(d)
		q.Flush(d)
		if got := q.LastFlush(d); got <= before[i] {
			t.Fatalf("LastFlush(%s) = %d after its flush, was %d", d, got, before[i])
		}
	}
	if len(q.domainFlushes) > maxDomainFlushes {
		t.Fatalf("%d domains' flushes kept after flushing %d distinct domains, want at most %d", len(q.domainFlushes), n, maxDomainFlushes)
	}
	for i := range n {
		d := fmt.Sprintf("x%d.fail.test", i)
		if got := q.LastFlush(d); got <= before[i] {
			t.Fatalf("LastFlush(%s) = %d, back to (or below) %d, its number before its flush", d, got, before[i])
		}
	}
}

// LastFlush(d) passes a number FlushSeq gave exactly when d, or every
// domain, was flushed since: the agent ends a dead mark taken at that
// number for a domain flushed since, also when the mark is one that many
// domains share (a [[route]]'s smarthosts), whose flushes differ.
func TestLastFlush_SinceFlushSeq(t *testing.T) {
	q := openTest(t, t.TempDir())
	if n := q.FlushSeq(); n != 0 || q.LastFlush("a.test") != 0 {
		t.Fatalf("before any flush: FlushSeq %d, LastFlush %d", n, q.LastFlush("a.test"))
	}
	q.Flush("a.test")
	mark := q.FlushSeq()
	if got := q.LastFlush("a.test"); got > mark {
		t.Errorf("a flush before the mark counts after it: LastFlush %d > %d", got, mark)
	}
	q.Flush("b.test")
	if got := q.LastFlush("a.test"); got > mark {
		t.Errorf("another domain's flush counts for a.test: LastFlush %d > %d", got, mark)
	}
	if got := q.LastFlush("b.test"); got <= mark {
		t.Errorf("b.test's flush after the mark: LastFlush %d, want > %d", got, mark)
	}
	if got := q.LastFlush("B.TEST"); got <= mark {
		t.Errorf("b.test's flush, in another case: LastFlush %d, want > %d", got, mark)
	}
	q.Flush("")
	for _, d := range []string{"a.test", "b.test", "never.test"} {
		if got := q.LastFlush(d); got <= mark {
			t.Errorf("after a flush of all, LastFlush(%s) = %d, want > %d", d, got, mark)
		}
	}
}
