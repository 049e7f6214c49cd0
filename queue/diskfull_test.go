package queue

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// queueOnSmallDisk opens a queue in a 4 MiB tmpfs of its own (mnt),
// unmounted at the end. Mounting needs root: skipped without it.
func queueOnSmallDisk(t *testing.T) (*Queue, string) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("mounting a tmpfs needs root")
	}
	mnt := t.TempDir()
	if out, err := exec.Command("mount", "-t", "tmpfs", "-o", "size=4m,mode=0700", "tmpfs", mnt).CombinedOutput(); err != nil {
		t.Skipf("cannot mount a tmpfs: %v: %s", err, out)
	}
	q, err := Open(filepath.Join(mnt, "q"), Options{})
	if err != nil {
		exec.Command("umount", mnt).Run()
		t.Fatal(err)
	}
	t.Cleanup(func() {
		q.Close()
		if out, err := exec.Command("umount", mnt).CombinedOutput(); err != nil {
			t.Errorf("umount: %v: %s", err, out)
		}
	})
	return q, mnt
}

// fillDisk writes mnt/filler until the file system has not a byte free.
func fillDisk(t *testing.T, mnt string) {
	t.Helper()
	filler, err := os.Create(filepath.Join(mnt, "filler"))
	if err != nil {
		t.Fatal(err)
	}
	defer filler.Close()
	chunk := make([]byte, 4096)
	for {
		if _, err := filler.Write(chunk); err != nil {
			return
		}
	}
}

// TestFullDiskFailedWritesLeaveNoSegments: on a full disk (a real tmpfs,
// the reserve gone) every failed write abandoned its segment and the next
// one started another: thousands of files, whose number set off the
// compaction of the oldest segment, which took the space back as soon as
// there was some. A segment nothing was ever written to is deleted.
// Mounting needs root: skipped without it.
func TestFullDiskFailedWritesLeaveNoSegments(t *testing.T) {
	q, mnt := queueOnSmallDisk(t)
	dir := filepath.Join(mnt, "q")
	env := newEnv("a@example.test")
	if err := q.Enqueue(env, strings.NewReader("body\r\n")); err != nil {
		t.Fatal(err)
	}
	// No reserve to fall back on, and not a byte free.
	if err := os.Remove(filepath.Join(dir, reserveName)); err != nil {
		t.Fatal(err)
	}
	fillDisk(t, mnt)
	res := Result{Recipients: []RcptUpdate{{Index: 0, State: Pending, Code: 451, Reply: "4.3.0 later"}}}
	// The segment's last page may still take a few records; then 20
	// writes fail.
	failed := 0
	for i := 0; failed < 20; i++ {
		if i == 1000 {
			t.Fatal("no write failed on a full disk")
		}
		if _, err := q.Claim(env.ID); err != nil {
			t.Fatalf("Claim %d: %v", i, err)
		}
		if err := q.Done(env.ID, res); err != nil {
			failed++
		}
	}
	segs, _ := filepath.Glob(filepath.Join(dir, "seg-*.log"))
	if len(segs) > 2 {
		t.Fatalf("%d segment files after 20 failed writes, want at most 2", len(segs))
	}
	if err := os.Remove(filepath.Join(mnt, "filler")); err != nil {
		t.Fatal(err)
	}
	if _, err := q.Claim(env.ID); err != nil {
		t.Fatal(err)
	}
	if err := q.Done(env.ID, res); err != nil {
		t.Fatalf("Done once space is back: %v", err)
	}
}

// TestFullDiskRetriesLeaveTheReserve: on a full disk the outcomes of
// attempts that left their recipients pending (deferred mail retried, an
// expired message whose bounce cannot be queued) took the reserve and
// then filled the room it made, until the disk was full to the last byte
// and `queue delete` failed with ENOSPC: a full disk could not be cleared
// from mailhop (a 64 MiB tmpfs under load: 593 messages wedged). Such an
// outcome is not written without the reserve; a delete still is.
func TestFullDiskRetriesLeaveTheReserve(t *testing.T) {
	q, mnt := queueOnSmallDisk(t)
	deferred, other := newEnv("a@example.test"), newEnv("b@example.test")
	for _, env := range []*Envelope{deferred, other} {
		if err := q.Enqueue(env, strings.NewReader("body\r\n")); err != nil {
			t.Fatal(err)
		}
	}
	fillDisk(t, mnt)
	// 4 KiB of last reply a retry: 256 of them would fill the reserve.
	res := Result{LastError: strings.Repeat("x", 4096),
		Recipients: []RcptUpdate{{Index: 0, State: Pending, Code: 451, Reply: "4.3.0 later"}}}
	for i := 0; i < 400; i++ {
		if _, err := q.Claim(deferred.ID); err != nil {
			t.Fatalf("Claim %d: %v", i, err)
		}
		q.Done(deferred.ID, res)
	}
	if err := q.Delete(other.ID); err != nil {
		t.Fatalf("delete on a full disk after retries: %v", err)
	}
	if _, err := q.Get(other.ID); err == nil {
		t.Fatal("deleted message still queued")
	}
}
