package main

import (
	"bufio"
	"flag"
	"fmt"
	"io"
	"strings"

	"golang.org/x/crypto/bcrypt"
)

// cmdPasswd reads one password (the first line of stdin) and prints its
// bcrypt hash for a [[user]] password_hash.
func cmdPasswd(args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("passwd", flag.ContinueOnError)
	fs.SetOutput(stderr)
	cost := fs.Int("cost", bcrypt.DefaultCost, "bcrypt cost")
	pos, err := parseInterspersed(fs, args)
	if err != nil {
		return exitUsage
	}
	if len(pos) > 0 {
		fmt.Fprintf(stderr, "mailhop passwd: unexpected argument %q: the password is read from stdin\n", pos[0])
		return exitUsage
	}
	line, err := bufio.NewReader(stdin).ReadString('\n')
	if err != nil && err != io.EOF {
		fmt.Fprintf(stderr, "mailhop passwd: reading stdin: %v\n", err)
		return exitFail
	}
	pw := strings.TrimRight(line, "\r\n")
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
