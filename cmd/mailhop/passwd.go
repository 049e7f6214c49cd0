package main

import (
	"bufio"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"

	"golang.org/x/crypto/bcrypt"
	"golang.org/x/sys/unix"
)

// cmdPasswd reads one password and prints its bcrypt hash for a [[user]]
// password_hash. From a terminal it asks twice, without echo; from a pipe
// or file it reads the first line, with no prompt.
func cmdPasswd(args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("passwd", flag.ContinueOnError)
	fs.SetOutput(stderr)
	cost := fs.Int("cost", bcrypt.DefaultCost, "bcrypt cost")
	pos, err := parseInterspersed(fs, args)
	if err != nil {
		return flagsFailed(err)
	}
	if len(pos) > 0 {
		fmt.Fprintf(stderr, "mailhop passwd: unexpected argument %q: the password is read from stdin\n", pos[0])
		return exitUsage
	}
	var pw string
	if f, ok := stdin.(*os.File); ok && isTerminal(f) {
		pw, err = askPassword(f, stderr)
	} else {
		pw, err = readLine(bufio.NewReader(stdin))
	}
	if err != nil {
		fmt.Fprintf(stderr, "mailhop passwd: %v\n", err)
		return exitFail
	}
	if pw == "" {
		fmt.Fprintln(stderr, "mailhop passwd: empty password on stdin")
		return exitFail
	}
	hash, err := bcrypt.GenerateFromPassword([]byte(pw), *cost)
	if err != nil {
		fmt.Fprintf(stderr, "mailhop passwd: %v\n", err)
		return exitFail
	}
	fmt.Fprintln(stdout, string(hash))
	return exitOK
}

// readLine returns the first line of r without its line end.
func readLine(r *bufio.Reader) (string, error) {
	line, err := r.ReadString('\n')
	if err != nil && err != io.EOF {
		return "", fmt.Errorf("reading stdin: %v", err)
	}
	return strings.TrimRight(line, "\r\n"), nil
}

func isTerminal(f *os.File) bool {
	_, err := unix.IoctlGetTermios(int(f.Fd()), unix.TCGETS)
	return err == nil
}

// askPassword prompts on w and reads the password twice from the terminal
// tty with its echo off, restoring the terminal after.
func askPassword(tty *os.File, w io.Writer) (string, error) {
	fd := int(tty.Fd())
	old, err := unix.IoctlGetTermios(fd, unix.TCGETS)
	if err != nil {
		return "", fmt.Errorf("terminal: %v", err)
	}
	quiet := *old
	quiet.Lflag &^= unix.ECHO
	quiet.Lflag |= unix.ICANON | unix.ECHONL
	if err := unix.IoctlSetTermios(fd, unix.TCSETS, &quiet); err != nil {
		return "", fmt.Errorf("terminal: turning echo off: %v", err)
	}
	defer unix.IoctlSetTermios(fd, unix.TCSETS, old)
	r := bufio.NewReader(tty)
	fmt.Fprint(w, "Password: ")
	pw, err := readLine(r)
	if err != nil || pw == "" {
		return pw, err
	}
	fmt.Fprint(w, "Again: ")
	again, err := readLine(r)
	if err != nil {
		return "", err
	}
	if again != pw {
		return "", errors.New("the two passwords differ")
	}
	return pw, nil
}
