package smtp_test

import (
	"bufio"
	"fmt"
	"net"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/emersion/go-smtp"
)

// writeCounter wraps the server side of each connection and records every
// Write call, so a test can see how replies were grouped into writes.
type writeCounter struct {
	net.Listener
	mu     sync.Mutex
	writes []string
}

func (l *writeCounter) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	return &countedConn{Conn: c, l: l}, nil
}

func (l *writeCounter) log() []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]string(nil), l.writes...)
}

type countedConn struct {
	net.Conn
	l *writeCounter
}

func (c *countedConn) Write(b []byte) (int, error) {
	c.l.mu.Lock()
	c.l.writes = append(c.l.writes, string(b))
	c.l.mu.Unlock()
	return c.Conn.Write(b)
}

func flushTestServer(t *testing.T) (*writeCounter, net.Conn, *bufio.Reader) {
	t.Helper()
	inner, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	l := &writeCounter{Listener: inner}
	s := smtp.NewServer(new(backend))
	s.Domain = "localhost"
	s.AllowInsecureAuth = true
	go s.Serve(l)
	t.Cleanup(func() { s.Close() })
	c, err := net.Dial("tcp", inner.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	c.SetDeadline(time.Now().Add(10 * time.Second))
	r := bufio.NewReader(c)
	if line, _ := r.ReadString('\n'); !strings.HasPrefix(line, "220 ") {
		t.Fatalf("greeting %q", line)
	}
	return l, c, r
}

// readReply reads one (possibly multiline) reply.
func readReply(t *testing.T, r *bufio.Reader) string {
	t.Helper()
	var all string
	for {
		line, err := r.ReadString('\n')
		if err != nil {
			t.Fatalf("reading reply: %v (so far %q)", err, all)
		}
		all += line
		if len(line) < 4 || line[3] != '-' {
			return all
		}
	}
}

// TestMultilineReplyOneWrite: the EHLO reply is one write, not one per line
// (mailhop patch).
func TestMultilineReplyOneWrite(t *testing.T) {
	l, c, r := flushTestServer(t)
	c.Write([]byte("EHLO client\r\n"))
	reply := readReply(t, r)
	if n := strings.Count(reply, "\r\n"); n < 3 {
		t.Fatalf("EHLO reply has %d lines: %q", n, reply)
	}
	w := l.log()
	if len(w) != 2 || w[1] != reply {
		t.Fatalf("writes %q, want the greeting and then the whole EHLO reply %q in one", w, reply)
	}
}

// TestPipelinedRepliesGrouped: replies to a pipelined group go out together
// when the last command of the group is answered, and a client that waits
// for each reply still gets each one at once (mailhop patch).
func TestPipelinedRepliesGrouped(t *testing.T) {
	l, c, r := flushTestServer(t)
	c.Write([]byte("EHLO client\r\n"))
	readReply(t, r)
	before := len(l.log())
	c.Write([]byte("MAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.org>\r\nRCPT TO:<c@example.org>\r\nDATA\r\n"))
	var got []string
	for i := 0; i < 4; i++ {
		got = append(got, readReply(t, r))
	}
	if !strings.HasPrefix(got[3], "354 ") {
		t.Fatalf("replies %q", got)
	}
	w := l.log()[before:]
	if len(w) != 1 || w[0] != strings.Join(got, "") {
		t.Fatalf("pipelined group answered in %d writes %q, want 1", len(w), w)
	}

	// One command at a time: every reply arrives without the next command.
	c.Write([]byte("hello\r\n.\r\n"))
	if rep := readReply(t, r); !strings.HasPrefix(rep, "250 ") {
		t.Fatalf("end of data: %q", rep)
	}
	c.Write([]byte("NOOP\r\n"))
	if rep := readReply(t, r); !strings.HasPrefix(rep, "250 ") {
		t.Fatalf("NOOP: %q", rep)
	}
	// A reply held for a pipelined command is sent before the server waits
	// for a line that has not fully arrived.
	c.Write([]byte("NOOP\r\nNO"))
	if rep := readReply(t, r); !strings.HasPrefix(rep, "250 ") {
		t.Fatalf("NOOP before a partial line: %q", rep)
	}
	c.Write([]byte("OP\r\nQUIT\r\n"))
	if rep := readReply(t, r); !strings.HasPrefix(rep, "250 ") {
		t.Fatalf("NOOP: %q", rep)
	}
	if rep := readReply(t, r); !strings.HasPrefix(rep, "221 ") {
		t.Fatalf("QUIT: %q", rep)
	}
}

// TestConnGoroutinesReused: connections one after another and at once are
// all served by reused goroutines, and Close lets every idle one go
// (mailhop patch).
func TestConnGoroutinesReused(t *testing.T) {
	before := runtime.NumGoroutine()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := smtp.NewServer(new(backend))
	s.Domain = "localhost"
	served := make(chan error, 1)
	go func() { served <- s.Serve(l) }()
	session := func() error {
		c, err := net.Dial("tcp", l.Addr().String())
		if err != nil {
			return err
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(10 * time.Second))
		r := bufio.NewReader(c)
		c.Write([]byte("HELO a\r\nNOOP\r\nQUIT\r\n"))
		for _, want := range []string{"220 ", "250 ", "250 ", "221 "} {
			line, err := r.ReadString('\n')
			if err != nil || !strings.HasPrefix(line, want) {
				return fmt.Errorf("got %q (%v), want %q", line, err, want)
			}
		}
		return nil
	}
	for i := 0; i < 3; i++ {
		if err := session(); err != nil {
			t.Fatal(err)
		}
	}
	errs := make(chan error, 5)
	for i := 0; i < 5; i++ {
		go func() { errs <- session() }()
	}
	for i := 0; i < 5; i++ {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
	s.Close()
	if err := <-served; err != nil {
		t.Fatalf("Serve: %v", err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for runtime.NumGoroutine() > before {
		if time.Now().After(deadline) {
			t.Fatalf("%d goroutines after Close, %d before", runtime.NumGoroutine(), before)
		}
		runtime.Gosched()
		time.Sleep(time.Millisecond)
	}
}
