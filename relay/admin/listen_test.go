package admin

import (
	"bytes"
	"net"
	"os"
	"path/filepath"
	"sync/atomic"
	"testing"
)

// TestListen_ProcessUmaskUntouched: Listen makes its socket 0600 without
// changing the process's umask, which every thread shares: it set 0177 for
// the bind, and a program started meanwhile by another goroutine (a test's
// `go build`) inherited it and wrote a binary without execute permission
// (fork/exec: permission denied), a directory made meanwhile had no search
// permission. The umask is read from /proc while Listen runs, again and
// again.
func TestListen_ProcessUmaskUntouched(t *testing.T) {
	old := umaskOf(t)
	var done atomic.Bool
	seen := make(chan []byte, 1)
	go func() {
		defer close(seen)
		for !done.Load() {
			b, err := os.ReadFile("/proc/self/status")
			if err != nil {
				return
			}
			if i := bytes.Index(b, []byte("Umask:\t")); i >= 0 && !bytes.HasPrefix(b[i+7:], old) {
				seen <- b[i : i+11]
				return
			}
		}
	}()
	dir := t.TempDir()
	for i := 0; i < 200 && len(seen) == 0; i++ {
		ln, err := Listen(filepath.Join(dir, "admin.sock"))
		if err != nil {
			t.Fatal(err)
		}
		fi, err := os.Stat(filepath.Join(dir, "admin.sock"))
		if err != nil {
			t.Fatal(err)
		}
		if m := fi.Mode().Perm(); m != 0o600 {
			t.Fatalf("socket mode %v, want 0600", m)
		}
		ln.Close()
	}
	done.Store(true)
	if b, ok := <-seen; ok {
		t.Errorf("the process umask changed while Listen ran: %q, was %s", b, old)
	}
	if _, err := os.Stat(filepath.Join(dir, "admin.sock")); !os.IsNotExist(err) {
		t.Errorf("the socket is left after Close: %v", err)
	}
}

// umaskOf returns the process's umask as /proc/self/status writes it.
func umaskOf(t *testing.T) []byte {
	t.Helper()
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		t.Skip("no /proc/self/status:", err)
	}
	i := bytes.Index(b, []byte("Umask:\t"))
	if i < 0 {
		t.Skip("no Umask in /proc/self/status")
	}
	return bytes.Clone(b[i+7 : i+11])
}

// TestListen_StaleSocketOnly: a socket left by a relay killed with kill -9
// is replaced, but a file at admin.socket that is no socket (a path mistyped
// in the configuration) is kept and refused: it was removed, silently.
func TestListen_StaleSocketOnly(t *testing.T) {
	dir := t.TempDir()
	stale := filepath.Join(dir, "stale.sock")
	old, err := net.Listen("unix", stale)
	if err != nil {
		t.Fatal(err)
	}
	old.(*net.UnixListener).SetUnlinkOnClose(false)
	old.Close()
	ln, err := Listen(stale)
	if err != nil {
		t.Fatalf("stale socket: %v", err)
	}
	ln.Close()

	file := filepath.Join(dir, "mailhop.toml")
	if err := os.WriteFile(file, []byte("hostname = \"mx.example\"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if ln, err := Listen(file); err == nil {
		ln.Close()
		t.Error("Listen took the path of a regular file")
	}
	if b, err := os.ReadFile(file); err != nil || string(b) != "hostname = \"mx.example\"\n" {
		t.Errorf("the regular file at the socket path: %q, %v; want it kept", b, err)
	}
}
