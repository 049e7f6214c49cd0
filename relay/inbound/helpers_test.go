package inbound

import (
	"bufio"
	"context"
	"crypto/tls"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/crypto/bcrypt"

	"github.com/mailhop/mailhop/internal/testlog"
	"github.com/mailhop/mailhop/queue"
	"github.com/mailhop/mailhop/relay/config"
)

const testPassword = "correct horse"

// testServer is a running Server with one listener per mode on loopback
// and a real queue in a temporary directory.
type testServer struct {
	t    *testing.T
	s    *Server
	q    *queue.Queue
	cfg  *config.Config
	addr map[string]string // mode -> host:port
	logs *testlog.Buffer
}

// testConfig is a configuration where loopback is NOT trusted (so relay
// denial can be tested); trustLoopback changes that.
func testConfig(t *testing.T) *config.Config {
	hash, err := bcrypt.GenerateFromPassword([]byte(testPassword), bcrypt.MinCost)
	if err != nil {
		t.Fatal(err)
	}
	return &config.Config{
		Hostname: "mx.test",
		DataDir:  t.TempDir(),
		Listener: []config.Listener{
			{Address: "127.0.0.1:0", Mode: config.ModeSubmission},
			{Address: "127.0.0.1:0", Mode: config.ModeSubmissions},
			{Address: "127.0.0.1:0", Mode: config.ModeRelay},
		},
		Policy: config.Policy{
			MaxMessageSize: 1 << 20,
			MaxRecipients:  5,
			Trusted:        []netip.Prefix{netip.MustParsePrefix("192.0.2.0/24")},
		},
		User: []config.User{
			{Name: "alice", PasswordHash: string(hash), Senders: []string{"alice@example.com", "@example.org"}},
		},
		Limits: config.Limits{
			MaxConnections:      100,
			MaxConnectionsPerIP: 50,
			IdleTimeout:         config.Duration{Duration: 30 * time.Second},
			SessionTimeout:      config.Duration{Duration: 2 * time.Minute},
			MaxLineLength:       998,
			MaxErrors:           10,
			MaxAuthFailures:     10,
			AuthBlockTime:       config.Duration{Duration: 10 * time.Minute},
		},
	}
}

func trustLoopback(cfg *config.Config) {
	cfg.Policy.Trusted = append(cfg.Policy.Trusted, netip.MustParsePrefix("127.0.0.0/8"), netip.MustParsePrefix("::1/128"))
}

func startServer(t *testing.T, edit ...func(*config.Config)) *testServer {
	t.Helper()
	cfg := testConfig(t)
	for _, e := range edit {
		e(cfg)
	}
	logs := &testlog.Buffer{}
	log := slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	q, err := queue.Open(t.TempDir(), queue.Options{Logger: log})
	if err != nil {
		t.Fatal(err)
	}
	s, err := New(cfg, q, log)
	if err != nil {
		t.Fatal(err)
	}
	s.AuthDelayStep = time.Millisecond
	ts := &testServer{t: t, s: s, q: q, cfg: cfg, addr: map[string]string{}, logs: logs}
	done := make(chan struct{})
	var wg sync.WaitGroup
	for _, l := range cfg.Listener {
		ln, err := net.Listen("tcp", l.Address)
		if err != nil {
			t.Fatal(err)
		}
		ts.addr[l.Mode] = ln.Addr().String()
		wg.Add(1)
		go func() {
			defer wg.Done()
			s.Serve(ln, l)
		}()
	}
	go func() { wg.Wait(); close(done) }()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		s.Shutdown(ctx)
		<-done
		q.Close()
		if t.Failed() {
			t.Logf("server log:\n%s", logs.String())
		}
	})
	return ts
}

// queued returns the queued messages with their bodies.
func (ts *testServer) queued() map[*queue.Envelope]string {
	ts.t.Helper()
	m := map[*queue.Envelope]string{}
	for _, env := range ts.q.List() {
		b, err := ts.q.Body(env.ID)
		if err != nil {
			ts.t.Fatal(err)
		}
		data, err := io.ReadAll(b)
		b.Close()
		if err != nil {
			ts.t.Fatal(err)
		}
		m[env] = string(data)
	}
	return m
}

// dialog is a raw SMTP conversation for golden send/expect scripts.
type dialog struct {
	t *testing.T
	c net.Conn
	r *bufio.Reader
}

// inData opens a session at addr that is in the middle of a message from
// a@example.com to b@example.net: DATA answered 354.
func inData(t *testing.T, addr string) *dialog {
	t.Helper()
	d := dial(t, addr)
	d.script("S: 220 ", "C: EHLO client.test", "S: 250 ",
		"C: MAIL FROM:<a@example.com>", "S: 250 ",
		"C: RCPT TO:<b@example.net>", "S: 250 ", "C: DATA", "S: 354 ")
	return d
}

func dial(t *testing.T, addr string) *dialog {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	c.SetDeadline(time.Now().Add(30 * time.Second))
	return &dialog{t: t, c: c, r: bufio.NewReader(c)}
}

func dialTLS(t *testing.T, addr string) *dialog {
	t.Helper()
	d := dial(t, addr)
	tc := tls.Client(d.c, &tls.Config{InsecureSkipVerify: true})
	d.c, d.r = tc, bufio.NewReader(tc)
	return d
}

// reply reads one (possibly multi-line) reply and returns its last line.
func (d *dialog) reply() string {
	d.t.Helper()
	for {
		line, err := d.r.ReadString('\n')
		if err != nil {
			d.t.Fatalf("reading reply: %v (got %q)", err, line)
		}
		line = strings.TrimRight(line, "\r\n")
		if len(line) < 4 || line[3] != '-' {
			return line
		}
	}
}

// replyLines reads one reply and returns all its lines.
func (d *dialog) replyLines() []string {
	d.t.Helper()
	var lines []string
	for {
		line, err := d.r.ReadString('\n')
		if err != nil {
			d.t.Fatalf("reading reply: %v", err)
		}
		line = strings.TrimRight(line, "\r\n")
		lines = append(lines, line)
		if len(line) < 4 || line[3] != '-' {
			return lines
		}
	}
}

func (d *dialog) write(raw string) {
	d.t.Helper()
	if _, err := io.WriteString(d.c, raw); err != nil {
		d.t.Fatal(err)
	}
}

// expect reads a reply and fails unless it starts with want.
func (d *dialog) expect(want string) string {
	d.t.Helper()
	got := d.reply()
	if !strings.HasPrefix(got, want) {
		d.t.Fatalf("got reply %q, want %q", got, want)
	}
	return got
}

// script runs a golden dialog: "C: " lines are sent (CRLF added), "S: "
// lines are replies the server must give (prefix match).
func (d *dialog) script(lines ...string) {
	d.t.Helper()
	for _, l := range lines {
		switch {
		case strings.HasPrefix(l, "C: "):
			d.write(l[3:] + "\r\n")
		case strings.HasPrefix(l, "S: "):
			d.expect(l[3:])
		default:
			d.t.Fatalf("bad script line %q", l)
		}
	}
}

// starttls upgrades the dialog (after EHLO) and greets again.
func (d *dialog) starttls() {
	d.t.Helper()
	d.script("C: STARTTLS", "S: 220 ")
	tc := tls.Client(d.c, &tls.Config{InsecureSkipVerify: true})
	if err := tc.Handshake(); err != nil {
		d.t.Fatal(err)
	}
	d.c, d.r = tc, bufio.NewReader(tc)
	d.script("C: EHLO client.test", "S: 250 ")
}

// closed reports whether the server closed the connection.
func (d *dialog) closed() bool {
	_, err := d.r.ReadByte()
	return err != nil
}
