package queue

import (
	"bytes"
	"encoding/binary"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/mailhop/mailhop/internal/testlog"
)

// A client can put bytes framed like a record into a message body. When
// recovery searches past a damaged record it passes over that body, and a
// frame salted as a queue without a key would salt it (the segment number
// alone, or the legacy 0) must not be taken for a record: it would queue a
// message with the client's envelope. The real record after it is found.
func TestPlantedRecordInBodyNotReplayed(t *testing.T) {
	t.Parallel()
	// The frame to plant: a real message record of segment 1 of a queue
	// whose key is 0.
	keyless := t.TempDir()
	if err := writeKey(keyless, 0); err != nil {
		t.Fatal(err)
	}
	qa := openTest(t, keyless)
	planted := &Envelope{From: "attacker@evil.test", Recipients: []Recipient{{Address: "victim@anywhere.test"}}}
	if err := qa.Enqueue(planted, strings.NewReader("spam\r\n")); err != nil {
		t.Fatal(err)
	}
	qa.Close()
	seg, err := os.ReadFile(segments(t, keyless)[0])
	if err != nil {
		t.Fatal(err)
	}
	frame := seg[:headerSize+int(binary.LittleEndian.Uint32(seg[4:]))]
	// The same frame salted 0 (written before salting) too.
	legacy := bytes.Clone(frame)
	saltRecord(legacy, segSalt(1, 0))

	dir := t.TempDir()
	q := openTest(t, dir)
	carrier, after := newEnv("a@x.test"), newEnv("b@x.test")
	if err := q.Enqueue(carrier, bytes.NewReader(append(append([]byte("x\r\n"), frame...), legacy...))); err != nil {
		t.Fatal(err)
	}
	if err := q.Enqueue(after, strings.NewReader("after\r\n")); err != nil {
		t.Fatal(err)
	}
	q.Close()
	// Damage the carrier's record (it is the segment's first): recovery
	// must search for the next record across the carrier's body.
	path := segments(t, dir)[0]
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	data[headerSize+20] ^= 0xff
	if err := os.WriteFile(path, data, 0o600); err != nil {
		t.Fatal(err)
	}

	var logs testlog.Buffer
	q2, err := Open(dir, Options{Logger: slog.New(slog.NewTextHandler(&logs, nil))})
	if err != nil {
		t.Fatal(err)
	}
	defer q2.Close()
	var ids []string
	for _, env := range q2.List() {
		ids = append(ids, env.ID)
		if env.From == planted.From {
			t.Errorf("a record planted in a message body was replayed: %+v", env)
		}
	}
	if len(ids) != 1 || ids[0] != after.ID {
		t.Errorf("recovered %q, want only %s (the record after the damaged one)\n%s", ids, after.ID, logs.String())
	}
}

// The key is kept in the queue directory, and found again from the
// segments when its file is lost, or when it holds a key of the right form
// that no segment was written with (damaged, or copied from another queue:
// with it, every record looked damaged and the messages and their bodies
// were lost), so a queue stays readable.
func TestKeyFoundAgain(t *testing.T) {
	t.Parallel()
	for name, damage := range map[string]func(dir string, key uint32) error{
		"file lost":            func(dir string, _ uint32) error { return os.Remove(filepath.Join(dir, keyName)) },
		"file fits no segment": func(dir string, key uint32) error { return writeKey(dir, key^0xdeadbeef) },
	} {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			dir := t.TempDir()
			q := openTest(t, dir)
			for _, rcpt := range []string{"a@x.test", "b@x.test"} {
				if err := q.Enqueue(newEnv(rcpt), strings.NewReader("body\r\n")); err != nil {
					t.Fatal(err)
				}
			}
			q.Close()
			key := queueKey(t, dir)
			if err := damage(dir, key); err != nil {
				t.Fatal(err)
			}
			q2 := openTest(t, dir)
			if n := len(q2.List()); n != 2 {
				t.Fatalf("%d messages after that, want 2", n)
			}
			q2.Close()
			if got := queueKey(t, dir); got != key {
				t.Errorf("key %08x written back, want %08x", got, key)
			}
		})
	}
}

// A crash between taking a recycled spare as the new segment and the first
// write to it leaves a segment whose first records are from the file's
// earlier life. With the key file lost, that record's key must not win
// over the key the other segments agree with: with it, the earlier life
// was replayed as current (delivered messages came back) and the live
// messages of the other segments were lost.
func TestKeyFoundAgainBesideRecycledStart(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	// The largest key: the old record's key is smaller, and a tie between
	// them went to the smaller.
	if err := writeKey(dir, 0xffffffff); err != nil {
		t.Fatal(err)
	}
	q := openTest(t, dir)
	defer q.Close()
	q.store.(*LogStore).segMax = 8192
	live := newEnv("live@y.test")
	if err := q.Enqueue(live, strings.NewReader("live body\r\n")); err != nil {
		t.Fatal(err)
	}
	body := bigBody(1500)
	delivered := map[string]bool{}
	var spare []byte
	for i := 0; i < 400 && spare == nil; i++ {
		env := newEnv("x@y.test")
		if err := q.Enqueue(env, bytes.NewReader(body)); err != nil {
			t.Fatal(err)
		}
		deliverAll(t, q, env.ID)
		delivered[env.ID] = true
		if data, err := os.ReadFile(filepath.Join(dir, spareName)); err == nil && !allZero(data) {
			spare = data
		}
	}
	if spare == nil {
		t.Fatalf("no segment was recycled; files: %v", listDir(t, dir))
	}
	crash := t.TempDir()
	copyDir(t, dir, crash)
	segs := segments(t, crash)
	// The spare taken as the next segment, nothing written to it yet.
	next := (&LogStore{dir: crash}).segPath(seqOf(t, segs[len(segs)-1]) + 1)
	if err := os.WriteFile(next, spare, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Remove(filepath.Join(crash, keyName)); err != nil {
		t.Fatal(err)
	}
	var logs testlog.Buffer
	q2, err := Open(crash, Options{Logger: slog.New(slog.NewTextHandler(&logs, nil))})
	if err != nil {
		t.Fatal(err)
	}
	defer q2.Close()
	found := false
	for _, env := range q2.List() {
		if delivered[env.ID] {
			t.Errorf("delivered message %s came back from the recycled file's earlier life", env.ID)
		}
		found = found || env.ID == live.ID
	}
	if !found {
		t.Errorf("live message %s lost\n%s", live.ID, logs.String())
	}
	if got := queueKey(t, crash); got != 0xffffffff {
		t.Errorf("key %08x written back, want ffffffff", got)
	}
}
