package queue

import (
	"slices"
	"strings"
	"testing"
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

	before := treeOf(t, dir)
	if !slices.ContainsFunc(before, func(s string) bool { return strings.Contains(s, "seg-") }) {
		t.Fatalf("no segment left to test with: %v", before)
	}
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
