package inbound

import (
	"bytes"
	"io"
	"log/slog"
	"net"
	"strings"
	"sync"
	"testing"

	"github.com/emersion/go-smtp"

	"github.com/mailhop/mailhop/internal/testlog"
	"github.com/mailhop/mailhop/internal/testpipe"
	"github.com/mailhop/mailhop/queue"
	"github.com/mailhop/mailhop/relay/config"
)

// pipeListener hands out one end of a net.Pipe per Accept.
type pipeListener struct {
	conns chan net.Conn
	once  sync.Once
	done  chan struct{}
}

func (l *pipeListener) Accept() (net.Conn, error) {
	select {
	case c := <-l.conns:
		return c, nil
	case <-l.done:
		return nil, net.ErrClosed
	}
}

func (l *pipeListener) Close() error { l.once.Do(func() { close(l.done) }); return nil }

func (l *pipeListener) Addr() net.Addr {
	return &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 25}
}

// FuzzSession feeds random dialogs to a relay-mode session (loopback
// trusted, so transactions reach the queue) over net.Pipe. The session must
// never panic (go-smtp recovers panics and logs them, so a logged "panic"
// fails the run), must end, every reply line must be well formed, and
// every message acknowledged with 250 (and no other) must be in the queue,
// without a bare CR or LF.
func FuzzSession(f *testing.F) {
	seeds := []string{
		"EHLO x\r\nMAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.net>\r\nDATA\r\nSubject: s\r\n\r\nhi\r\n.\r\nQUIT\r\n",
		"EHLO x\r\nMAIL FROM:<a@example.com> BODY=8BITMIME SMTPUTF8 RET=HDRS ENVID=x\r\nRCPT TO:<b@example.net> NOTIFY=NEVER ORCPT=rfc822;b@example.net\r\nBDAT 5 LAST\r\nhi\r\n\r\n",
		"EHLO x\r\nMAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.net>\r\nDATA\r\nx\n.\r\nMAIL FROM:<e@example.com>\r\n.\r\n",
		"HELO x\r\nAUTH PLAIN AGFsaWNlAHg=\r\nAUTH LOGIN\r\n*\r\nSTARTTLS\r\n",
		"EHLO x\r\nMAIL FROM:<@a,@b:c@d>\r\nRCPT TO:<\"a b\"@[IPv6:::1]>\r\nRSET\r\nVRFY x\r\nNOOP\r\n",
		"EHLO x\r\nMAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.net>\r\nBDAT 3\r\nabcBDAT 2 LAST\r\n\r\n",
		strings.Repeat("X", 3000) + "\r\nEHLO x\r\n",
		"EHLO x\r\nAB\rC\r\nMAIL FROM:<a@b\rc>\r\n", // a bare CR echoed in a reply
	}
	for _, s := range seeds {
		f.Add([]byte(s))
	}
	logs := &testlog.Buffer{}
	log := slog.New(slog.NewTextHandler(logs, nil))
	cfg := testConfig(&testing.T{})
	cfg.DataDir = f.TempDir()
	trustLoopback(cfg)
	q, err := queue.Open(f.TempDir(), queue.Options{Logger: log})
	if err != nil {
		f.Fatal(err)
	}
	defer q.Close()
	s, err := New(cfg, q, log)
	if err != nil {
		f.Fatal(err)
	}
	s.AuthDelayStep = 0
	ln := &pipeListener{conns: make(chan net.Conn), done: make(chan struct{})}
	served := make(chan struct{})
	go func() {
		s.Serve(ln, config.Listener{Mode: config.ModeRelay})
		close(served)
	}()
	defer func() { ln.Close(); <-served }()

	f.Fuzz(func(t *testing.T, dialog []byte) {
		// The client ends its input with a half-close: it still reads
		// every reply (closing a net.Pipe lost those not read yet).
		client, server := testpipe.Pipe()
		ln.conns <- server
		var replies bytes.Buffer
		copied := make(chan struct{})
		go func() { io.Copy(&replies, client); close(copied) }()
		client.Write(dialog)
		client.Write([]byte("\r\n.\r\nQUIT\r\n"))
		// The server may still wait for data (a BDAT chunk): end of
		// input. The session must then end: the server closes.
		client.CloseWrite()
		<-server.Closed()
		<-copied
		client.Close()
		if out := logs.String(); strings.Contains(out, "panic serving") {
			t.Fatalf("panic in session:\n%s", out)
		}
		// Every reply line is well formed (RFC 5321 §4.2), whatever of
		// the client's input it echoes; the last may be cut by the close.
		lines := bytes.Split(replies.Bytes(), []byte("\r\n"))
		var ids []string
		for _, l := range lines[:len(lines)-1] {
			if len(l) < 4 || l[0] < '2' || l[0] > '5' || l[1] < '0' || l[1] > '9' || l[2] < '0' || l[2] > '9' ||
				l[3] != ' ' && l[3] != '-' || bytes.ContainsAny(l, "\r\n") || len(l) > 510 {
				t.Fatalf("bad reply line %q to %q", l, dialog)
			}
			if _, id, ok := bytes.Cut(l, []byte(" OK: queued as ")); ok && bytes.HasPrefix(l, []byte("250 ")) {
				ids = append(ids, string(id))
			}
		}
		// 250 means queued: each "queued as" names a message in the
		// queue, and nothing else of this dialog is there. What is queued
		// holds no bare CR or LF (SMTP smuggling) and ends with CRLF.
		// (The messages are then deleted, so the queue does not grow with
		// the run.)
		if n := len(q.List()); n != len(ids) {
			t.Fatalf("%d messages queued, %d acknowledged (%q) for %q", n, len(ids), ids, dialog)
		}
		for _, id := range ids {
			b, err := q.Body(id)
			if err != nil {
				t.Fatalf("acknowledged %s: %v", id, err)
			}
			data, err := io.ReadAll(io.NewSectionReader(b, 0, b.Size()))
			b.Close()
			if err != nil {
				t.Fatal(err)
			}
			for i, c := range data {
				if c == '\n' && (i == 0 || data[i-1] != '\r') || c == '\r' && (i+1 == len(data) || data[i+1] != '\n') {
					t.Fatalf("queued %s with a bare CR or LF at %d: %q\nfrom %q", id, i, data, dialog)
				}
			}
			if !bytes.HasSuffix(data, []byte("\r\n")) {
				t.Fatalf("queued %s does not end with CRLF: %q", id, data)
			}
			if err := q.Delete(id); err != nil {
				t.Fatal(err)
			}
		}
	})
}

// TestFuzzSessionHarnessSeesPanics makes sure the fuzz harness can fail: a session
// that panics must be seen.
func TestFuzzSessionHarnessSeesPanics(t *testing.T) {
	logs := &testlog.Buffer{}
	srv := smtp.NewServer(smtp.BackendFunc(func(*smtp.Conn) (smtp.Session, error) { panic("boom") }))
	srv.ErrorLog = errorLog{slog.New(slog.NewTextHandler(logs, nil))}
	ln := &pipeListener{conns: make(chan net.Conn), done: make(chan struct{})}
	go srv.Serve(ln)
	defer srv.Close()
	client, server := net.Pipe()
	ln.conns <- server
	go client.Write([]byte("EHLO x\r\nQUIT\r\n"))
	var out bytes.Buffer
	io.Copy(&out, client)
	if !strings.Contains(logs.String(), "panic serving") {
		t.Fatalf("panic not logged; client saw %q", out.String())
	}
}
