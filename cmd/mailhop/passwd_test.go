package main

import (
	"bytes"
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	"golang.org/x/crypto/bcrypt"
	"golang.org/x/sys/unix"
)

// openPTY returns a new pseudo-terminal: the master side, and the
// terminal a program reads and writes.
func openPTY(t *testing.T) (master, tty *os.File) {
	t.Helper()
	master, err := os.OpenFile("/dev/ptmx", os.O_RDWR|unix.O_NOCTTY|unix.O_NONBLOCK, 0)
	if err != nil {
		t.Skipf("no pseudo-terminals: %v", err)
	}
	t.Cleanup(func() { master.Close() })
	// A guard, not a wait: a passwd that never prompts fails the test.
	if err := master.SetReadDeadline(time.Now().Add(10 * time.Second)); err != nil {
		t.Skipf("pseudo-terminal without deadlines: %v", err)
	}
	if err := unix.IoctlSetPointerInt(int(master.Fd()), unix.TIOCSPTLCK, 0); err != nil {
		t.Fatal(err)
	}
	n, err := unix.IoctlGetInt(int(master.Fd()), unix.TIOCGPTN)
	if err != nil {
		t.Fatal(err)
	}
	tty, err = os.OpenFile(fmt.Sprintf("/dev/pts/%d", n), os.O_RDWR|unix.O_NOCTTY, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { tty.Close() })
	return master, tty
}

// readUntil reads the terminal's output from master until it holds want.
func readUntil(t *testing.T, master *os.File, seen *bytes.Buffer, want string) {
	t.Helper()
	buf := make([]byte, 256)
	for !strings.Contains(seen.String(), want) {
		n, err := master.Read(buf)
		if err != nil {
			t.Fatalf("terminal output %q, waiting for %q: %v", seen.String(), want, err)
		}
		seen.Write(buf[:n])
	}
}

// TestPasswd_Terminal: on a terminal, passwd asks for the password twice
// with a prompt and without echoing it (it echoed and said nothing); two
// that differ are refused.
func TestPasswd_Terminal(t *testing.T) {
	t.Parallel()
	for _, again := range []string{"s3cret-pw", "other-pw"} {
		master, tty := openPTY(t)
		var out bytes.Buffer
		done := make(chan int, 1)
		go func() { done <- cmdPasswd(nil, tty, &out, tty) }()
		var seen bytes.Buffer
		readUntil(t, master, &seen, "Password: ")
		master.WriteString("s3cret-pw\n")
		readUntil(t, master, &seen, "Again: ")
		master.WriteString(again + "\n")
		code := <-done
		if strings.Contains(seen.String(), "pw") {
			t.Errorf("the password was echoed: %q", seen.String())
		}
		if again != "s3cret-pw" {
			if code != exitFail || out.Len() != 0 {
				t.Errorf("passwords that differ: exit %d, %q", code, out.String())
			}
			continue
		}
		hash := strings.TrimSpace(out.String())
		if code != exitOK || bcrypt.CompareHashAndPassword([]byte(hash), []byte("s3cret-pw")) != nil {
			t.Errorf("exit %d, hash %q does not match the password", code, hash)
		}
	}
}

// TestPasswd_Pipe: from a pipe or file, the first line is the password, with
// no prompt (scripts: echo 'pw' | mailhop passwd).
func TestPasswd_Pipe(t *testing.T) {
	t.Parallel()
	var out, errs bytes.Buffer
	code := cmdPasswd(nil, strings.NewReader("pw one\nsecond line\n"), &out, &errs)
	hash := strings.TrimSpace(out.String())
	if code != exitOK || errs.Len() != 0 || bcrypt.CompareHashAndPassword([]byte(hash), []byte("pw one")) != nil {
		t.Errorf("exit %d, stderr %q, hash %q", code, errs.String(), hash)
	}
}
