package integration_test

import (
	"bytes"
	"errors"
	"fmt"
	"net/textproto"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestDiskFull fills a real file system: data_dir is a 4 MiB tmpfs. Messages
// are accepted until the queue cannot store one more; that one gets 451
// 4.3.0 with no internal detail (no path, no errno text). Every message that
// got a 250 stays queued and intact through a SIGKILL and a start on the
// still-full disk, and once `queue delete` frees space, mail is accepted
// again, also when another program had filled the disk to the last byte
// (the queue keeps a reserve for the records that free space). Mounting needs root: the test is skipped without it.
func TestDiskFull(t *testing.T) {
	t.Parallel()
	if os.Geteuid() != 0 {
		t.Skip("mounting a tmpfs needs root")
	}
	r := startRelay(t, relayOpts{Setup: func(dir string) {
		data := filepath.Join(dir, "data")
		if err := os.MkdirAll(data, 0o700); err != nil {
			t.Fatal(err)
		}
		if out, err := exec.Command("mount", "-t", "tmpfs", "-o", "size=4m,mode=0700", "tmpfs", data).CombinedOutput(); err != nil {
			t.Skipf("cannot mount a tmpfs: %v: %s", err, out)
		}
		t.Cleanup(func() {
			if out, err := exec.Command("umount", data).CombinedOutput(); err != nil {
				t.Errorf("umount %s: %v: %s", data, err, out)
			}
		})
	}})

	sent := map[string][]byte{} // queue ID → message as submitted
	cc := &crashClient{addr: r.Relay}
	defer cc.close()
	var refusal *textproto.Error
	for i := 0; i < 60 && refusal == nil; i++ {
		msg := crashMessage(fmt.Sprintf("full%02d", i), 200<<10)
		id, err := cc.send("x@example.net", msg)
		switch {
		case err == nil:
			sent[id] = msg
		case errors.As(err, &refusal):
		default:
			t.Fatalf("message %d: %v", i, err)
		}
	}
	if refusal == nil {
		t.Fatalf("60 messages of 200 KiB fit on a 4 MiB file system")
	}
	if len(sent) < 5 {
		t.Fatalf("only %d messages accepted before the disk was full", len(sent))
	}
	if refusal.Code != 451 || !strings.HasPrefix(refusal.Msg, "4.3.0 ") {
		t.Errorf("refusal %d %q, want 451 4.3.0", refusal.Code, refusal.Msg)
	}
	if !r.waitLine("message refused", "code=451", "reason=queue_error") {
		t.Errorf("the refusal is not logged as reason=queue_error")
	}
	for _, leak := range []string{"/", "space", "ENOSPC", "write", "queue:"} {
		if strings.Contains(refusal.Msg, leak) {
			t.Errorf("refusal %q shows internal detail (%q)", refusal.Msg, leak)
		}
	}

	// Another program takes what room is left, to the last byte.
	filler, err := os.Create(filepath.Join(r.dir, "data", "filler"))
	if err != nil {
		t.Fatal(err)
	}
	chunk := make([]byte, 4096)
	for {
		if _, err := filler.Write(chunk); err != nil {
			break
		}
	}
	for len(chunk) > 1 {
		chunk = chunk[:len(chunk)/2]
		for {
			if _, err := filler.Write(chunk); err != nil {
				break
			}
		}
	}
	filler.Close()

	// A crash on a full disk, and a start on it.
	r.kill()
	r.start()
	checkQueued := func(want map[string][]byte) {
		t.Helper()
		msgs := r.list()
		if len(msgs) != len(want) {
			t.Errorf("queue holds %d messages, want %d", len(msgs), len(want))
		}
		for _, m := range msgs {
			if _, ok := want[m.ID]; !ok {
				t.Errorf("queue holds %s, which was not acknowledged", m.ID)
			}
		}
	}
	checkQueued(sent)

	// Freeing space lets mail in again.
	var del []string
	for id := range sent {
		if len(del) < 10 {
			del = append(del, id)
		}
	}
	if _, errs, code := r.mailhop(append([]string{"queue", "delete"}, del...)...); code != 0 {
		t.Fatalf("queue delete: exit %d: %s", code, errs)
	}
	for _, id := range del {
		delete(sent, id)
	}
	cc.close()
	// The room the deletions freed is kept for the reserve first; once that
	// is back (within a second), mail comes in again.
	var after string
	waitFor(t, "a message accepted after space was freed", 10*time.Second, func() bool {
		msg := crashMessage("after", 200<<10)
		id, err := cc.send("x@example.net", msg)
		if err == nil {
			sent[id], after = msg, id
		}
		return err == nil
	})
	r.stop()
	q := r.openQueue()
	for id, msg := range sent {
		if got := body(t, q, id); !bytes.Equal(stripReceived(t, got), msg) {
			t.Errorf("%s: the queued body differs from what was sent", id)
		}
	}
	if n := len(q.List()); n != len(sent) {
		t.Errorf("queue holds %d messages after the restart, want %d (with %s)", n, len(sent), after)
	}
}
