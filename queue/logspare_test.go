package queue

import (
	"bytes"
	"context"
	"fmt"
	"github.com/mailhop/mailhop/internal/testlog"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"
)

// copyDir copies the files of a live store's directory (not bodies/ or
// quarantine/): what a kill -9 would leave, since every acknowledged
// record has been written.
func copyDir(t *testing.T, from, to string) {
	t.Helper()
	for _, d := range []string{"bodies", "quarantine"} {
		os.MkdirAll(filepath.Join(to, d), 0o700)
	}
	entries, err := os.ReadDir(from)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		if e.IsDir() || e.Name() == "LOCK" {
			continue
		}
		data, err := os.ReadFile(filepath.Join(from, e.Name()))
		if os.IsNotExist(err) {
			// Removed (compacted, recycled) since the listing, by a
			// store still running: as if before the crash.
			continue
		}
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(to, e.Name()), data, 0o600); err != nil {
			t.Fatal(err)
		}
	}
}

func deliverAll(t *testing.T, q *Queue, id string) {
	t.Helper()
	ctx := context.Background()
	for {
		got, err := q.Next(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if got.ID == id {
			break
		}
		q.Requeue(got.ID)
	}
	if err := q.Done(id, Result{Recipients: []RcptUpdate{{Index: 0, State: Delivered}}}); err != nil {
		t.Fatal(err)
	}
}

// TestRecycledSegmentRecovery: segments no one needs become the spare and
// are written again; after a crash the old records in such a file bring
// back no delivered message, and every live one is recovered intact.
func TestRecycledSegmentRecovery(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	var logs testlog.Buffer
	q, err := Open(dir, Options{Logger: slog.New(slog.NewTextHandler(&logs, nil))})
	if err != nil {
		t.Fatal(err)
	}
	defer q.Close()
	q.store.(*LogStore).segMax = 8192

	body := bigBody(1500)
	delivered := map[string]bool{}
	// Traffic until a dead segment has become the spare (a spare with
	// records in it, not a prepared one of zeros) and a new segment has
	// started from it.
	var recycledSpare os.FileInfo // a spare holding records: a recycled segment
	taken := false
	for i := 0; i < 400 && !taken; i++ {
		env := newEnv("x@y.test")
		if err := q.Enqueue(env, bytes.NewReader(body)); err != nil {
			t.Fatal(err)
		}
		deliverAll(t, q, env.ID)
		delivered[env.ID] = true
		for _, p := range segments(t, dir) {
			if fi, err := os.Stat(p); err == nil && recycledSpare != nil && os.SameFile(fi, recycledSpare) {
				taken = true
			}
		}
		if recycledSpare == nil {
			sp := filepath.Join(dir, spareName)
			if data, err := os.ReadFile(sp); err == nil && !allZero(data) {
				recycledSpare, _ = os.Stat(sp)
			}
		}
	}
	if !taken {
		t.Fatalf("no segment was recycled and reused; files: %v", listDir(t, dir))
	}
	// Live messages now, written over old records.
	var live []string
	for i := 0; i < 3; i++ {
		env := newEnv("live@y.test")
		if err := q.Enqueue(env, strings.NewReader("live body\r\n")); err != nil {
			t.Fatal(err)
		}
		live = append(live, env.ID)
	}

	crash := t.TempDir()
	copyDir(t, dir, crash)
	var logs2 testlog.Buffer
	q2, err := Open(crash, Options{Logger: slog.New(slog.NewTextHandler(&logs2, nil))})
	if err != nil {
		t.Fatal(err)
	}
	defer q2.Close()
	got := map[string]bool{}
	for _, env := range q2.List() {
		got[env.ID] = true
		if delivered[env.ID] {
			t.Errorf("delivered message %s came back from an old record", env.ID)
		}
	}
	for _, id := range live {
		if !got[id] {
			t.Errorf("live message %s lost", id)
		} else if b := bodyOf(t, q2, id); string(b) != "live body\r\n" {
			t.Errorf("body of %s: %q", id, b)
		}
	}
	if len(got) != len(live) {
		t.Errorf("%d messages recovered, want %d", len(got), len(live))
	}
	if l := logs2.String(); strings.Contains(l, "level=WARN") || strings.Contains(l, "level=ERROR") {
		t.Errorf("recovery complained about a recycled segment:\n%s", l)
	}
	if _, err := os.Stat(filepath.Join(crash, spareName)); !os.IsNotExist(err) {
		t.Errorf("a spare left by the earlier process survived the start: %v", err)
	}
}

// queueKey reads the key of the queue in dir (logkey.go).
func queueKey(t *testing.T, dir string) uint32 {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(dir, keyName))
	if err != nil {
		t.Fatal(err)
	}
	k, err := strconv.ParseUint(strings.TrimSpace(string(b)), 16, 32)
	if err != nil {
		t.Fatal(err)
	}
	return uint32(k)
}

func seqOf(t *testing.T, path string) uint64 {
	t.Helper()
	var seq uint64
	name := filepath.Base(path)
	for _, c := range strings.TrimSuffix(strings.TrimPrefix(name, "seg-"), ".log") {
		seq = seq*16 + uint64(strings.IndexRune("0123456789abcdef", c))
	}
	return seq
}

func listDir(t *testing.T, dir string) []string {
	t.Helper()
	entries, _ := os.ReadDir(dir)
	var out []string
	for _, e := range entries {
		if fi, err := e.Info(); err == nil {
			out = append(out, fmt.Sprintf("%s:%d", e.Name(), fi.Size()))
		}
	}
	return out
}

// TestSpareSegmentPrepared: after a segment had to start as an empty file,
// a zero-filled spare is prepared, and the next segment starts from it.
func TestSpareSegmentPrepared(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	q := openTest(t, dir)
	store := q.store.(*LogStore)
	store.segMax = 64 << 10
	if err := q.Enqueue(newEnv("a@x.test"), strings.NewReader("first\r\n")); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		fi, err := os.Stat(filepath.Join(dir, spareName))
		if err == nil {
			if fi.Size() != 64<<10 {
				t.Fatalf("spare is %d bytes, want %d", fi.Size(), 64<<10)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no spare prepared: %v", listDir(t, dir))
		}
		time.Sleep(5 * time.Millisecond)
	}
	// Fill the first segment: the second one is the spare, renamed.
	queued := 1
	for len(segments(t, dir)) < 2 {
		queued++
		if err := q.Enqueue(newEnv("a@x.test"), bytes.NewReader(bigBody(8000))); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := os.Stat(filepath.Join(dir, spareName)); !os.IsNotExist(err) {
		t.Fatalf("the spare is still there after a new segment started: %v", err)
	}
	segs := segments(t, dir)
	data, err := os.ReadFile(segs[len(segs)-1])
	if err != nil {
		t.Fatal(err)
	}
	if len(data) != 64<<10 {
		t.Fatalf("new segment is %d bytes, want the spare's %d", len(data), 64<<10)
	}
	if _, st := recordAt(data, 0, seqOf(t, segs[len(segs)-1]), queueKey(t, dir)); st != frameOK {
		t.Fatal("the new segment does not start with a record of its own")
	}
	q.Close()
	if _, err := os.Stat(filepath.Join(dir, spareName)); !os.IsNotExist(err) {
		t.Fatalf("Close left the spare: %v", err)
	}
	q2 := openTest(t, dir)
	if n := len(q2.List()); n != queued {
		t.Fatalf("%d messages after a restart, want %d", n, queued)
	}
}

// deliverReading delivers id as the delivery agent does: its body is open
// while the outcome is recorded, and closed after.
func deliverReading(t *testing.T, q *Queue, id string) {
	t.Helper()
	for {
		got, err := q.Next(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		if got.ID == id {
			break
		}
		q.Requeue(got.ID)
	}
	b, err := q.Body(id)
	if err != nil {
		t.Fatal(err)
	}
	if err := q.Done(id, Result{Recipients: []RcptUpdate{{Index: 0, State: Delivered}}}); err != nil {
		t.Fatal(err)
	}
	b.Close()
}

// smallSegments opens a queue whose segments hold 8 KiB, so a few messages
// fill one; without zeros no spare of zeros is prepared (recycled ones only).
func smallSegments(t *testing.T, zeros bool) (*Queue, *LogStore, string) {
	t.Helper()
	dir := t.TempDir()
	q := openTest(t, dir)
	st := q.store.(*LogStore)
	st.segMax = 8192
	if !zeros {
		st.freeSpace = func() int64 { return 0 }
	}
	return q, st, dir
}

// A segment whose last message is recorded delivered while its body is
// still open (as every delivery does it) is recycled all the same, once
// the reading is done: it was deleted instead, and every other segment
// started as an empty file while a spare was written full of zeros (32 MiB
// of zeros for every 32 MiB of mail).
func TestSegmentRecycledAfterItsReadersAreDone(t *testing.T) {
	t.Parallel()
	q, _, dir := smallSegments(t, false)
	body := bigBody(1500)
	recycled := false
	for i := 0; i < 200 && !recycled; i++ {
		env := newEnv("x@y.test")
		if err := q.Enqueue(env, bytes.NewReader(body)); err != nil {
			t.Fatal(err)
		}
		deliverReading(t, q, env.ID)
		if data, err := os.ReadFile(filepath.Join(dir, spareName)); err == nil && !allZero(data) {
			recycled = true
		}
	}
	if !recycled {
		t.Fatalf("no segment was recycled; files: %v", listDir(t, dir))
	}

	// A body still being read keeps its recycled file from being written
	// over: the reader gets the message's bytes to the end.
	env := newEnv("x@y.test")
	mine := bytes.ReplaceAll(body, []byte("x"), []byte("z")) // unlike the others' bytes at the same offsets
	if err := q.Enqueue(env, bytes.NewReader(mine)); err != nil {
		t.Fatal(err)
	}
	got, err := q.Next(context.Background())
	if err != nil || got.ID != env.ID {
		t.Fatalf("Next = %v, %v", got, err)
	}
	b, err := q.Body(env.ID)
	if err != nil {
		t.Fatal(err)
	}
	if err := q.Done(env.ID, Result{Recipients: []RcptUpdate{{Index: 0, State: Delivered}}}); err != nil {
		t.Fatal(err)
	}
	for range 20 { // many segments' worth of other mail meanwhile
		other := newEnv("x@y.test")
		if err := q.Enqueue(other, bytes.NewReader(body)); err != nil {
			t.Fatal(err)
		}
		deliverReading(t, q, other.ID)
	}
	data, err := io.ReadAll(b)
	b.Close()
	if err != nil || !bytes.Equal(data, mine) {
		t.Errorf("the body read while its segment went: %d bytes, err %v; changed: %v", len(data), err, !bytes.Equal(data, mine))
	}
}

// Under steady traffic, past the first segments, every segment starts
// from a spare: a recycled one, or one of zeros prepared half way through
// the segment before. Every other segment started as an empty file, and
// a spare of zeros was written for each.
func TestSteadyTrafficStartsEverySegmentFromASpare(t *testing.T) {
	t.Parallel()
	q, st, dir := smallSegments(t, true)
	body := bigBody(1500)
	var grown []uint64
	for range 300 {
		env := newEnv("x@y.test")
		if err := q.Enqueue(env, bytes.NewReader(body)); err != nil {
			t.Fatal(err)
		}
		st.mu.Lock()
		last := uint64(0)
		if a := st.active; a != nil {
			last = a.seq
			if a.grown && !slices.Contains(grown, a.seq) {
				grown = append(grown, a.seq)
			}
		}
		st.mu.Unlock()
		deliverReading(t, q, env.ID)
		if last > 60 {
			break
		}
		// Half way through a segment a spare is on its way: the test
		// waits for it, as half a segment's traffic would.
		st.mu.Lock()
		half := st.active != nil && !st.active.grown && st.active.size >= st.segMax/2
		st.mu.Unlock()
		for deadline := time.Now().Add(10 * time.Second); half && !st.spareIsReady(); time.Sleep(time.Millisecond) {
			if time.Now().After(deadline) {
				t.Fatalf("no spare half way through segment %d: %v", last, listDir(t, dir))
			}
		}
	}
	if len(grown) > 2 || slices.ContainsFunc(grown, func(seq uint64) bool { return seq > 3 }) {
		t.Errorf("segments that started as empty files: %v; want only the first ones", grown)
	}
}

// While the recycled spare waits for a reader of its earlier life, a
// segment that started as an empty file is not left for it: the spare
// cannot be taken yet, so every switch started another empty file, one
// for each segMax/earlySwitch written (a segment per MiB while a slow
// delivery read a body).
func TestNoEarlySwitchToASpareStillRead(t *testing.T) {
	t.Parallel()
	q, st, dir := smallSegments(t, false)
	body := bigBody(1500)
	held := func() bool {
		st.mu.Lock()
		defer st.mu.Unlock()
		st.spareMu.Lock()
		defer st.spareMu.Unlock()
		return st.spareReady && st.spareFrom != nil && st.spareFrom.readers > 0
	}
	var open []io.Closer
	defer func() {
		for _, b := range open {
			b.Close()
		}
	}()
	for i := 0; i < 200 && !held(); i++ {
		env := newEnv("x@y.test")
		if err := q.Enqueue(env, bytes.NewReader(body)); err != nil {
			t.Fatal(err)
		}
		got, err := q.Next(context.Background())
		if err != nil || got.ID != env.ID {
			t.Fatalf("Next = %v, %v", got, err)
		}
		b, err := q.Body(env.ID) // a slow delivery: read till the end of the test
		if err != nil {
			t.Fatal(err)
		}
		open = append(open, b)
		if err := q.Done(env.ID, Result{Recipients: []RcptUpdate{{Index: 0, State: Delivered}}}); err != nil {
			t.Fatal(err)
		}
	}
	if !held() {
		t.Fatalf("no recycled spare waiting for its readers; files: %v", listDir(t, dir))
	}
	st.mu.Lock()
	first := st.active.seq
	st.mu.Unlock()
	for range 10 { // about two segments' worth
		env := newEnv("x@y.test")
		if err := q.Enqueue(env, bytes.NewReader(body)); err != nil {
			t.Fatal(err)
		}
		deliverReading(t, q, env.ID)
	}
	st.mu.Lock()
	last := st.active.seq
	st.mu.Unlock()
	if last-first > 3 {
		t.Errorf("%d segments started for 10 messages of %d bytes (segMax %d); want at most 3", last-first, len(body), st.segMax)
	}
}
