package admin

import (
	"bufio"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"os"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"testing/iotest"

	"github.com/mailhop/mailhop/queue"
	"github.com/mailhop/mailhop/relay/config"
)

func TestCRLFReader(t *testing.T) {
	t.Parallel()
	cases := []struct{ in, want string }{
		{"", ""},
		{"a", "a\r\n"},
		{"a\n", "a\r\n"},
		{"a\r\n", "a\r\n"},
		{"a\nb", "a\r\nb\r\n"},
		{"a\rb\r\n\n", "a\r\nb\r\n\r\n"},
		{"Subject: x\n\nbody\n.\n", "Subject: x\r\n\r\nbody\r\n.\r\n"},
	}
	for _, c := range cases {
		got, err := io.ReadAll(iotest.OneByteReader(&crlfReader{r: bufioReader(c.in)}))
		if err != nil || string(got) != c.want {
			t.Errorf("crlf(%q) = %q, %v; want %q", c.in, got, err, c.want)
		}
	}
}

func TestParsePeerAddr_RejectsLookalikes(t *testing.T) {
	t.Parallel()
	good := peerAddr{pid: 12, uid: 1000, gid: 100}.String()
	if uid, ok := parsePeerAddr(good); !ok || uid != 1000 {
		t.Fatalf("parsePeerAddr(%q) = %d, %v", good, uid, ok)
	}
	for _, s := range []string{"", "@", "127.0.0.1:5", good + "x", "peercred:pid=1,uid=0", " " + good} {
		if _, ok := parsePeerAddr(s); ok {
			t.Errorf("parsePeerAddr(%q) accepted", s)
		}
	}
}

// injectEnv is a queue and an injector behind a real admin socket.
type injectEnv struct {
	q      *queue.Queue
	in     *Injector
	client *Client
	cfg    *config.Config
}

func startInject(t *testing.T, withCred bool) *injectEnv {
	t.Helper()
	dir := t.TempDir()
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	q, err := queue.Open(filepath.Join(dir, "queue"), queue.Options{Logger: log})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { q.Close() })
	cfg := &config.Config{Hostname: "relay.test", Policy: config.Policy{MaxMessageSize: 4096}}
	in := &Injector{Queue: q, Config: func() *config.Config { return cfg }, Log: log}
	sock := filepath.Join(dir, "admin.sock")
	ln, err := Listen(sock)
	if err != nil {
		t.Fatal(err)
	}
	if withCred {
		ln = PeerCredListener(ln)
	}
	srv := &Server{Queue: q, Log: log, Extra: map[string]http.Handler{InjectPath: in}}
	done := make(chan struct{})
	go func() { srv.Serve(ln); close(done) }()
	// Closing the listener stops Serve. (Server.Shutdown would race with a
	// Serve that has not yet stored its http.Server.)
	t.Cleanup(func() { ln.Close(); <-done })
	return &injectEnv{q: q, in: in, client: NewClient(sock), cfg: cfg}
}

func queuedBody(t *testing.T, q *queue.Queue, id string) string {
	t.Helper()
	b, err := q.Body(id)
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	data, err := io.ReadAll(b)
	if err != nil {
		t.Fatal(err)
	}
	return string(data)
}

func TestInject_QueuesWithPeerUserAndReceived(t *testing.T) {
	t.Parallel()
	e := startInject(t, true)
	me, err := user.Current()
	if err != nil {
		t.Fatal(err)
	}
	// The client claims to be someone else; the kernel's word wins.
	env := &InjectEnvelope{From: "cron@relay.test", Recipients: []string{"ops@example.com"}, User: "mallory", UID: 4242}
	id, err := e.client.Inject(env, strings.NewReader("Subject: hi\n\nline\n"))
	if err != nil {
		t.Fatal(err)
	}
	qe, err := e.q.Get(id)
	if err != nil {
		t.Fatal(err)
	}
	if qe.From != "cron@relay.test" || len(qe.Recipients) != 1 || qe.Recipients[0].Address != "ops@example.com" {
		t.Errorf("envelope = %+v", qe)
	}
	if qe.User != me.Username {
		t.Errorf("user = %q, want %q", qe.User, me.Username)
	}
	body := queuedBody(t, e.q, id)
	wantRcv := "Received: from local user " + me.Username + " (uid " + me.Uid + ")\r\n\tby relay.test (mailhop) with local id " + id + ";\r\n\t"
	if !strings.HasPrefix(body, wantRcv) {
		t.Errorf("body starts %q, want %q", body[:min(len(body), 120)], wantRcv)
	}
	if !strings.HasSuffix(body, "\r\nSubject: hi\r\n\r\nline\r\n") {
		t.Errorf("body = %q", body)
	}
	if e.in.Injected() != 1 {
		t.Errorf("Injected() = %d", e.in.Injected())
	}
}

func TestInject_Refusals(t *testing.T) {
	t.Parallel()
	e := startInject(t, true)
	cases := []struct {
		name   string
		env    *InjectEnvelope
		msg    string
		status int
	}{
		{"no recipients", &InjectEnvelope{From: "a@b.test"}, "x\n", http.StatusBadRequest},
		{"bad recipient", &InjectEnvelope{Recipients: []string{"a b@c.test"}}, "x\n", http.StatusBadRequest},
		{"unqualified recipient", &InjectEnvelope{Recipients: []string{"root"}}, "x\n", http.StatusBadRequest},
		{"too large", &InjectEnvelope{Recipients: []string{"a@b.test"}}, strings.Repeat("x\n", 4000), http.StatusRequestEntityTooLarge},
	}
	for _, c := range cases {
		_, err := e.client.Inject(c.env, strings.NewReader(c.msg))
		var se *StatusError
		if !errors.As(err, &se) || se.Code != c.status {
			t.Errorf("%s: err = %v, want status %d", c.name, err, c.status)
		}
	}
	if n := len(e.q.List()); n != 0 {
		t.Errorf("%d messages queued after refusals", n)
	}
}

func TestInject_WithoutPeerCredentialsIsForbidden(t *testing.T) {
	t.Parallel()
	e := startInject(t, false)
	_, err := e.client.Inject(&InjectEnvelope{Recipients: []string{"a@b.test"}}, strings.NewReader("x\n"))
	var se *StatusError
	if !errors.As(err, &se) || se.Code != http.StatusForbidden {
		t.Fatalf("err = %v, want 403", err)
	}
}

func TestPickup_WriteThenDrain(t *testing.T) {
	t.Parallel()
	e := startInject(t, true)
	dir, err := PreparePickup(t.TempDir(), "")
	if err != nil {
		t.Fatal(err)
	}
	env := &InjectEnvelope{From: "app@relay.test", Recipients: []string{"x@example.com", "y@example.net"}, UID: os.Getuid()}
	path, err := WritePickup(dir, env, strings.NewReader("Subject: later\n\nbody\n"))
	if err != nil {
		t.Fatal(err)
	}
	// A damaged file is moved aside, never deleted.
	if err := os.WriteFile(filepath.Join(dir, "broken"), []byte("not json\nSubject: x\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	// A temporary file being written is left alone.
	if err := os.WriteFile(filepath.Join(dir, ".partial.tmp"), []byte("{"), 0o600); err != nil {
		t.Fatal(err)
	}
	n, err := e.in.DrainPickup(dir)
	if err != nil || n != 1 {
		t.Fatalf("DrainPickup = %d, %v", n, err)
	}
	if _, err := os.Stat(path); !os.IsNotExist(err) {
		t.Errorf("pickup file still there: %v", err)
	}
	if _, err := os.Stat(filepath.Join(dir, "bad", "broken")); err != nil {
		t.Errorf("broken file not in bad/: %v", err)
	}
	if _, err := os.Stat(filepath.Join(dir, ".partial.tmp")); err != nil {
		t.Errorf("temporary file touched: %v", err)
	}
	msgs := e.q.List()
	if len(msgs) != 1 || msgs[0].From != "app@relay.test" || len(msgs[0].Recipients) != 2 {
		t.Fatalf("queued = %+v", msgs)
	}
	body := queuedBody(t, e.q, msgs[0].ID)
	if !strings.Contains(body, "(uid "+strconv.Itoa(os.Getuid())+")") || !strings.HasSuffix(body, "Subject: later\r\n\r\nbody\r\n") {
		t.Errorf("body = %q", body)
	}
	// Draining again finds nothing.
	if n, err := e.in.DrainPickup(dir); err != nil || n != 0 {
		t.Errorf("second drain = %d, %v", n, err)
	}
}

func TestSetSocketGroup(t *testing.T) {
	t.Parallel()
	g, err := user.LookupGroupId(strconv.Itoa(os.Getgid()))
	if err != nil {
		t.Skip("own group has no name:", err)
	}
	sock := filepath.Join(t.TempDir(), "s.sock")
	ln, err := Listen(sock)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	if err := SetSocketGroup(sock, g.Name); err != nil {
		t.Fatal(err)
	}
	st, err := os.Stat(sock)
	if err != nil {
		t.Fatal(err)
	}
	if st.Mode().Perm() != 0o660 {
		t.Errorf("mode = %v, want 0660", st.Mode().Perm())
	}
	if err := SetSocketGroup(sock, "no-such-group-mailhop-test"); err == nil {
		t.Error("a missing group was accepted")
	}
}

func bufioReader(s string) *bufio.Reader { return bufio.NewReader(strings.NewReader(s)) }
