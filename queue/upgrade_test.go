package queue

import (
	"bytes"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/mailhop/mailhop/internal/testlog"
)

// TestOpenReadOnlyKeepsDeadSegments: `mailhop queue list` with the relay
// stopped opens the queue read-only and must leave every file as it is. A
// segment whose messages have all left the queue (the stopped relay's last
// one, or one whose records this queue cannot read) was deleted by the
// read-only open's recovery, under a shared lock, behind the relay's back.
func TestOpenReadOnlyKeepsDeadSegments(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	q := openTest(t, dir)
	env := &Envelope{ID: q.NewID(), From: "a@example.com", Recipients: []Recipient{{Address: "b@example.net"}}}
	if err := q.Enqueue(env, strings.NewReader("Subject: x\r\n\r\nbody\r\n")); err != nil {
		t.Fatal(err)
	}
	if err := q.Delete(env.ID); err != nil {
		t.Fatal(err)
	}
	q.Close()

	if before := treeOf(t, dir); !slices.ContainsFunc(before, func(s string) bool { return strings.Contains(s, "seg-") }) {
		t.Fatalf("no segment left to test with: %v", before)
	}
	readOnlyListChangesNothing(t, dir)
}

// readOnlyListChangesNothing opens dir read-only, as `mailhop queue list`
// with the relay stopped does, checks it lists no message, and that the
// directory is as it was before, file for file.
func readOnlyListChangesNothing(t *testing.T, dir string) {
	t.Helper()
	before := treeOf(t, dir)
	ro, err := Open(dir, Options{ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	if got := ro.List(); len(got) != 0 {
		t.Errorf("read-only list = %+v", got)
	}
	ro.Close()
	if after := treeOf(t, dir); !slices.Equal(before, after) {
		t.Errorf("the read-only open changed the directory:\nbefore %v\nafter  %v", before, after)
	}
}

// TestForeignSegmentQuarantined: a segment of another queue (another key)
// copied into this one is whole records this queue did not write. They
// were taken for "an incomplete record at the end of a segment ... never
// acknowledged" and dropped with a warning, the file then deleted as dead:
// another relay's acknowledged mail gone without an error. Now it is an
// error that names the segment, and its bytes are kept in quarantine.
func TestForeignSegmentQuarantined(t *testing.T) {
	t.Parallel()
	dirA, dirB := t.TempDir(), t.TempDir()
	qa := openTest(t, dirA)
	mine := newEnv("a@x.test")
	if err := qa.Enqueue(mine, strings.NewReader("Subject: mine\r\n\r\nbody\r\n")); err != nil {
		t.Fatal(err)
	}
	qa.Close()
	qb := openTest(t, dirB)
	for i := range 3 {
		env := newEnv(fmt.Sprintf("b%d@x.test", i))
		if err := qb.Enqueue(env, strings.NewReader("Subject: theirs\r\n\r\nFOREIGNBODY\r\n")); err != nil {
			t.Fatal(err)
		}
	}
	qb.Close()
	foreign, err := os.ReadFile(segments(t, dirB)[0])
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dirA, "seg-0000000000000002.log"), foreign, 0o600); err != nil {
		t.Fatal(err)
	}

	var logs testlog.Buffer
	q, err := Open(dirA, Options{Logger: slog.New(slog.NewTextHandler(&logs, nil))})
	if err != nil {
		t.Fatal(err)
	}
	if got := q.List(); len(got) != 1 || got[0].ID != mine.ID {
		t.Errorf("queue after the copy = %d messages, want only its own %s", len(got), mine.ID)
	}
	q.Close()
	out := logs.String()
	if strings.Contains(out, "incomplete record") || countLines(out, "level=ERROR", "seg-0000000000000002.log") != 1 {
		t.Errorf("want one error naming the foreign segment, not an incomplete record:\n%s", out)
	}
	kept := false
	entries, _ := os.ReadDir(filepath.Join(dirA, "quarantine"))
	for _, e := range entries {
		if data, err := os.ReadFile(filepath.Join(dirA, "quarantine", e.Name())); err == nil && bytes.Contains(data, []byte("FOREIGNBODY")) {
			kept = true
		}
	}
	if !kept {
		t.Errorf("the foreign segment's records are not in quarantine (%d files there)", len(entries))
	}
}

// TestCutAtRecordEndNamesLostMessage: a segment that is not the newest cut
// short exactly at the end of a record (a copy of data_dir that stopped
// early, a file truncated by hand) reads as a clean segment: nothing was
// logged, and a message whose record was in the cut part was gone without
// a word although a later record names it, its large body deleted as the
// trace of a crash before its record. A later record that names a message
// whose body file is still there, with neither its message nor its done
// record left, proves records are missing: the message is logged lost by
// its queue ID and its body kept in quarantine.
func TestCutAtRecordEndNamesLostMessage(t *testing.T) {
	t.Parallel()
	q, st, dir := smallSegments(t, false)
	other, lost := newEnv("a@x.test"), newEnv("b@x.test")
	if err := q.Enqueue(other, strings.NewReader("Subject: other\r\n\r\nbody\r\n")); err != nil {
		t.Fatal(err)
	}
	if err := q.Enqueue(lost, bytes.NewReader(bigBody(InlineMax+1000))); err != nil {
		t.Fatal(err)
	}
	for i := 0; ; i++ {
		st.mu.Lock()
		n := len(st.segs)
		st.mu.Unlock()
		if n >= 2 {
			break
		}
		if i == 50 {
			t.Fatal("no second segment")
		}
		if err := q.Enqueue(newEnv("c@x.test"), bytes.NewReader(bigBody(3000))); err != nil {
			t.Fatal(err)
		}
	}
	if err := q.Hold(lost.ID); err != nil { // a record of it in a later segment
		t.Fatal(err)
	}
	key := st.key
	q.Close()

	first := segments(t, dir)[0]
	data, err := os.ReadFile(first)
	if err != nil {
		t.Fatal(err)
	}
	cut := -1
	for off := 0; off < len(data); {
		n, kind := recordAt(data, off, 1, key)
		if kind != frameOK {
			break
		}
		if r, err := parsePayload(data[off+headerSize], data[off+headerSize+1:off+headerSize+n]); err == nil &&
			r.typ == recMessage && r.env.ID == lost.ID {
			cut = off
			break
		}
		off += headerSize + n
	}
	if cut < 0 {
		t.Fatal("the message's record is not in the first segment")
	}
	if err := os.Truncate(first, int64(cut)); err != nil {
		t.Fatal(err)
	}

	var logs testlog.Buffer
	q2, err := Open(dir, Options{Logger: slog.New(slog.NewTextHandler(&logs, nil))})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := q2.Get(other.ID); err != nil {
		t.Errorf("the message before the cut: %v", err)
	}
	q2.Close()
	out := logs.String()
	if countLines(out, "level=ERROR", `msg="queue: message lost`, "queue_id="+lost.ID) != 1 {
		t.Errorf("want one error naming %s lost:\n%s", lost.ID, out)
	}
	if _, err := os.Stat(filepath.Join(dir, "quarantine", lost.ID)); err != nil {
		t.Errorf("its body is not in quarantine: %v\n%s", err, out)
	}
}

// TestPreKeyQueueGetsAKeyOnceEmpty: a queue written by a mailhop older than
// the queue key (records salted with key 0, no key file) is read after an
// upgrade, its mail kept; it went on with key 0 for good, without the
// protection against frames planted in bodies, since a busy queue is never
// made again. A start that finds no live segment left gives it a key.
func TestPreKeyQueueGetsAKeyOnceEmpty(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	q := openTest(t, dir)
	st := q.store.(*LogStore)
	st.key = 0 // as an old build wrote its records
	live, gone := newEnv("a@x.test"), newEnv("b@x.test")
	for _, env := range []*Envelope{live, gone} {
		if err := q.Enqueue(env, strings.NewReader("Subject: old\r\n\r\nbody\r\n")); err != nil {
			t.Fatal(err)
		}
	}
	if err := q.Delete(gone.ID); err != nil {
		t.Fatal(err)
	}
	q.Close()
	if err := os.Remove(filepath.Join(dir, keyName)); err != nil {
		t.Fatal(err)
	}

	q = openTest(t, dir)
	if _, err := q.Get(live.ID); err != nil {
		t.Fatalf("the old build's message after the upgrade: %v", err)
	}
	if k := q.store.(*LogStore).key; k != 0 {
		t.Fatalf("key %08x while records salted with key 0 are live", k)
	}
	if err := q.Delete(live.ID); err != nil {
		t.Fatal(err)
	}
	q.Close()

	q = openTest(t, dir)
	k := q.store.(*LogStore).key
	if k == 0 {
		t.Error("an emptied pre-key queue still has key 0")
	}
	q = queuedAcrossRestart(t, q, dir)
	if got := q.store.(*LogStore).key; got != k {
		t.Errorf("key %08x after a restart, was %08x", got, k)
	}
}

// queuedAcrossRestart queues a new message in q, closes it, opens dir again
// and checks the message is there; it returns the queue opened again.
func queuedAcrossRestart(t *testing.T, q *Queue, dir string) *Queue {
	t.Helper()
	env := newEnv("new@x.test")
	if err := q.Enqueue(env, strings.NewReader("Subject: new\r\n\r\nbody\r\n")); err != nil {
		t.Fatal(err)
	}
	q.Close()
	q = openTest(t, dir)
	if _, err := q.Get(env.ID); err != nil {
		t.Errorf("a message queued before the restart: %v", err)
	}
	return q
}

// TestOpenReadOnlyKeepsBodyOfDoneMessage: a relay killed between a large
// message's done record and the removal of its body file leaves the file
// behind, for the next start to remove. `mailhop queue list` with the relay
// stopped replayed the done record and removed the file itself (drop),
// under its shared lock: the read-only open changes nothing.
func TestOpenReadOnlyKeepsBodyOfDoneMessage(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	q := openTest(t, dir)
	env := newEnv("a@x.test")
	if err := q.Enqueue(env, bytes.NewReader(bigBody(InlineMax+1000))); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, "bodies", env.ID)
	body, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if err := q.Delete(env.ID); err != nil {
		t.Fatal(err)
	}
	q.Close()
	// The crash came before the unlink.
	if err := os.WriteFile(path, body, 0o600); err != nil {
		t.Fatal(err)
	}

	readOnlyListChangesNothing(t, dir)

	q = openTest(t, dir) // the relay's start removes it
	q.Close()
	if _, err := os.Stat(path); !os.IsNotExist(err) {
		t.Errorf("the body of a message that left the queue survived the start: %v", err)
	}
}

// TestPreKeyQueueStartsWhenItsKeyCannotBeWritten: giving an emptied
// pre-key queue a key is a protection, not a condition of the start: on a
// disk where the key file cannot be written (full), the start failed, and
// the relay with it. It starts with key 0 and a warning, and its mail
// survives the next start.
func TestPreKeyQueueStartsWhenItsKeyCannotBeWritten(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	q := openTest(t, dir)
	st := q.store.(*LogStore)
	st.key = 0 // as an old build wrote its records
	gone := newEnv("a@x.test")
	if err := q.Enqueue(gone, strings.NewReader("Subject: old\r\n\r\nbody\r\n")); err != nil {
		t.Fatal(err)
	}
	if err := q.Delete(gone.ID); err != nil {
		t.Fatal(err)
	}
	q.Close()
	// The key file as the first start after the upgrade wrote it.
	if err := writeKey(dir, 0); err != nil {
		t.Fatal(err)
	}
	// The key file cannot be written (its temporary file cannot be made).
	if err := os.MkdirAll(filepath.Join(dir, keyName+".tmp", "x"), 0o700); err != nil {
		t.Fatal(err)
	}

	var logs testlog.Buffer
	q, err := Open(dir, Options{Logger: slog.New(slog.NewTextHandler(&logs, nil))})
	if err != nil {
		t.Fatalf("the start failed: %v", err)
	}
	if k := q.store.(*LogStore).key; k != 0 {
		t.Errorf("key %08x in use, the key file says 0", k)
	}
	if countLines(logs.String(), "level=WARN", "key") != 1 {
		t.Errorf("want one warning:\n%s", logs.String())
	}
	queuedAcrossRestart(t, q, dir)
}

// TestUpgradeStartsWhenTheKeyFileCannotBeWritten: the first start after an
// upgrade from a build before queue keys finds the key (0) in the segments
// and keeps it in a key file; where that file cannot be written (a full
// disk) the start failed, and with it the relay, its queued mail stuck.
// The segments give the key again at every start: a warning, and the start
// goes on.
func TestUpgradeStartsWhenTheKeyFileCannotBeWritten(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	q := openTest(t, dir)
	q.store.(*LogStore).key = 0 // as an old build wrote its records
	live := newEnv("a@x.test")
	if err := q.Enqueue(live, strings.NewReader("Subject: old\r\n\r\nbody\r\n")); err != nil {
		t.Fatal(err)
	}
	q.Close()
	if err := os.Remove(filepath.Join(dir, keyName)); err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(filepath.Join(dir, keyName+".tmp", "x"), 0o700); err != nil {
		t.Fatal(err)
	}

	for range 2 {
		var logs testlog.Buffer
		q, err := Open(dir, Options{Logger: slog.New(slog.NewTextHandler(&logs, nil))})
		if err != nil {
			t.Fatalf("the start failed: %v", err)
		}
		if _, err := q.Get(live.ID); err != nil {
			t.Errorf("the old build's message: %v", err)
		}
		if countLines(logs.String(), "level=WARN", "key") != 1 {
			t.Errorf("want one warning:\n%s", logs.String())
		}
		q.Close()
	}
}
