// Package integration_test runs the real mailhop binary against real
// clients (swaks, curl, Python's smtplib, go-smtp), a real DNS server on
// loopback and real SMTP servers on 127.0.0.x.
//
//	client ──SMTP──▶ mailhop (built by TestMain) ──SMTP──▶ test MX / smarthost
//	                    │  ▲                               (127.0.0.x:mx_port)
//	                 queue dir   DNS: dnstest on 127.0.0.1
//
// Each test starts its own relay on kernel-chosen ports with its own data
// directory, so tests run in parallel.
package integration_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/crypto/bcrypt"

	"github.com/mailhop/mailhop/internal/testlog"
	"github.com/mailhop/mailhop/queue"
	"github.com/mailhop/mailhop/relay/admin"
)

// mailhopBin is the binary under test, built once by TestMain.
var mailhopBin string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "mailhop-it-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	mailhopBin = filepath.Join(dir, "mailhop")
	build := exec.Command("go", "build", "-race", "-o", mailhopBin, "../cmd/mailhop")
	if os.Getenv("MAILHOP_IT_NORACE") != "" {
		build = exec.Command("go", "build", "-o", mailhopBin, "../cmd/mailhop")
	}
	build.Stdout, build.Stderr = os.Stderr, os.Stderr
	if err := build.Run(); err != nil {
		fmt.Fprintln(os.Stderr, "building mailhop:", err)
		os.Exit(1)
	}
	// A -race binary sleeps a second at exit (the race runtime's
	// atexit_sleep_ms), which makes every `mailhop queue ...` call in a
	// polling loop take a second. Races are still reported and still
	// change the exit code.
	if os.Getenv("GORACE") == "" {
		os.Setenv("GORACE", "atexit_sleep_ms=0")
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// Test users. The hash is made once at a low cost to keep tests fast.
const (
	testUser     = "app"
	testPassword = "s3cret-pass"
)

var testHash = sync.OnceValue(func() string {
	h, err := bcrypt.GenerateFromPassword([]byte(testPassword), 4)
	if err != nil {
		panic(err)
	}
	return string(h)
})

// freePort returns a TCP port on host that no other call in this test
// process has returned, reserved until the test ends: a socket stays bound
// to it, not listening, with SO_REUSEADDR. A server's bind with
// SO_REUSEADDR (mailhop's, Go's, Postfix's listeners) still gets it, as it
// does again after a restart; no other socket does: closed, the port went
// to the next socket of any process bound to port 0, or to an outgoing
// connection, in the moment before mailhop bound it ("address already in
// use", 1 run in 15 with several test processes at once). A port for
// nothing to listen on (a dead resolver, a parking route) refuses
// connections for the whole test.
func freePort(t testing.TB, host string) string {
	t.Helper()
	ip := net.ParseIP(host).To4()
	if ip == nil {
		t.Fatalf("free port: not an IPv4 address: %q", host)
	}
	for {
		fd, err := syscall.Socket(syscall.AF_INET, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC, 0)
		if err != nil {
			t.Fatalf("free port: %v", err)
		}
		sa := &syscall.SockaddrInet4{}
		copy(sa.Addr[:], ip)
		err = syscall.SetsockoptInt(fd, syscall.SOL_SOCKET, syscall.SO_REUSEADDR, 1)
		if err == nil {
			err = syscall.Bind(fd, sa)
		}
		var got syscall.Sockaddr
		if err == nil {
			got, err = syscall.Getsockname(fd)
		}
		if err != nil {
			syscall.Close(fd)
			t.Fatalf("free port on %s: %v", host, err)
		}
		port := got.(*syscall.SockaddrInet4).Port
		portsMu.Lock()
		seen := portsGiven[port]
		portsGiven[port] = true
		portsMu.Unlock()
		if seen {
			syscall.Close(fd)
			continue
		}
		t.Cleanup(func() { syscall.Close(fd) })
		return net.JoinHostPort(host, strconv.Itoa(port))
	}
}

var (
	portsMu    sync.Mutex
	portsGiven = map[int]bool{}
)

// dialFrom connects to addr from the local address ip (another 127.0.0.x
// than 127.0.0.1 makes a client from an untrusted or different address).
func dialFrom(ip, addr string, timeout time.Duration) (net.Conn, error) {
	d := net.Dialer{Timeout: timeout, LocalAddr: &net.TCPAddr{IP: net.ParseIP(ip)}}
	return d.Dial("tcp", addr)
}

// relayOpts shapes the configuration of a test relay.
type relayOpts struct {
	Extra string // TOML appended at the end (routes, [delivery] keys, users...)
	// Delivery is the body of the [delivery] table; default: a dead resolver
	// and retry intervals of an hour, so mail stays queued.
	Delivery string
	// Policy is the body of the [policy] table; default: trusted 127.0.0.0/8.
	Policy string
	// NoRoute leaves out the default route that parks mail on a closed port.
	NoRoute bool
	// ConfigMode is the configuration file's mode (default 0600).
	ConfigMode os.FileMode
	// Env is added to the relay process's environment ("KEY=value").
	Env []string
	// Setup runs with the relay's directory before the first start (data_dir
	// is its "data"), e.g. to mount a small file system there.
	Setup func(dir string)
}

// relay is one running mailhop process.
type relay struct {
	t       testing.TB
	dir     string
	cfgPath string
	Relay   string // listener addresses by mode
	Sub     string
	Subs    string

	mu     sync.Mutex
	env    []string
	cmd    *exec.Cmd
	logs   *testlog.Buffer
	exited chan struct{}
}

// startRelay writes a configuration and starts mailhop with it.
func startRelay(t testing.TB, o relayOpts) *relay {
	t.Helper()
	dir := t.TempDir()
	r := &relay{t: t, dir: dir, cfgPath: filepath.Join(dir, "config.toml"), env: o.Env,
		Relay: freePort(t, "127.0.0.1"), Sub: freePort(t, "127.0.0.1"), Subs: freePort(t, "127.0.0.1")}
	if o.Setup != nil {
		o.Setup(dir)
	}
	if o.Delivery == "" {
		// A resolver that answers nothing (a closed port) and long retries.
		o.Delivery = fmt.Sprintf("resolvers = [%q]\nretry_intervals = [\"1h\"]\n", freePort(t, "127.0.0.1"))
	}
	if o.Policy == "" {
		o.Policy = "trusted_networks = [\"127.0.0.0/8\", \"::1/128\"]\n"
	}
	route := ""
	if !o.NoRoute {
		// Park everything on a closed port: mail stays queued, deferred.
		route = fmt.Sprintf("[[route]]\ndomains = [\"*\"]\nsmarthost = %q\ntls = \"none\"\n", freePort(t, "127.0.0.1"))
	}
	cfg := fmt.Sprintf(`hostname = "mx.relay.test"
data_dir = %q

[[listener]]
address = %q
mode = "relay"

[[listener]]
address = %q
mode = "submission"

[[listener]]
address = %q
mode = "submissions"

[policy]
%s
[[user]]
name = %q
password_hash = %q
senders = ["@example.com", "boss@example.org"]

[delivery]
%s
[log]
level = "debug"

%s
%s
`, filepath.Join(dir, "data"), r.Relay, r.Sub, r.Subs, o.Policy, testUser, testHash(), o.Delivery, route, o.Extra)
	mode := o.ConfigMode
	if mode == 0 {
		mode = 0o600
	}
	if err := os.WriteFile(r.cfgPath, []byte(cfg), mode); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(r.cfgPath, mode); err != nil { // not masked by the umask
		t.Fatal(err)
	}
	r.start()
	t.Cleanup(r.stop)
	return r
}

// start runs the binary and waits until every listener accepts.
func (r *relay) start() {
	r.t.Helper()
	r.mu.Lock()
	if r.logs == nil {
		r.logs = &testlog.Buffer{}
	}
	cmd := exec.Command(mailhopBin, "serve", "--config", r.cfgPath)
	cmd.Stdout, cmd.Stderr = r.logs, r.logs
	if len(r.env) > 0 {
		cmd.Env = append(os.Environ(), r.env...)
	}
	if err := cmd.Start(); err != nil {
		r.mu.Unlock()
		r.t.Fatalf("starting mailhop: %v", err)
	}
	r.cmd = cmd
	exited := make(chan struct{})
	r.exited = exited
	r.mu.Unlock()
	go func() { cmd.Wait(); close(exited) }()
	for _, a := range []string{r.Relay, r.Sub, r.Subs} {
		if err := waitListening(a, exited, 20*time.Second); err != nil {
			r.t.Fatalf("mailhop did not listen on %s: %v\n--- log ---\n%s", a, err, r.logs.String())
		}
	}
	// The listeners are bound (and take connections into their backlog)
	// before the pickup directory is drained and the admin socket made;
	// the relay has started, as it tells systemd, once the socket is up.
	// Until then a queue command finds no socket and a locked queue.
	sock := filepath.Join(r.dir, "data", "admin.sock")
	if err := waitDial("unix", sock, exited, 20*time.Second); err != nil {
		r.t.Fatalf("mailhop did not open its admin socket %s: %v\n--- log ---\n%s", sock, err, r.logs.String())
	}
}

// waitListening dials addr until it accepts, the process exits, or time runs out.
func waitListening(addr string, exited <-chan struct{}, limit time.Duration) error {
	return waitDial("tcp", addr, exited, limit)
}

// waitDial dials addr on network until it accepts, the process exits, or
// time runs out.
func waitDial(network, addr string, exited <-chan struct{}, limit time.Duration) error {
	deadline := time.Now().Add(limit)
	for {
		c, err := net.DialTimeout(network, addr, time.Second)
		if err == nil {
			c.Close()
			return nil
		}
		select {
		case <-exited:
			return fmt.Errorf("process exited")
		default:
		}
		if time.Now().After(deadline) {
			return err
		}
		time.Sleep(20 * time.Millisecond) // polling a port, not synchronising on time
	}
}

// stop sends SIGTERM and waits for a clean exit.
func (r *relay) stop() {
	r.mu.Lock()
	cmd, exited := r.cmd, r.exited
	r.cmd = nil
	r.mu.Unlock()
	if cmd == nil {
		return
	}
	cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-exited:
	case <-time.After(40 * time.Second):
		cmd.Process.Kill()
		<-exited
		r.t.Errorf("mailhop did not stop on SIGTERM\n%s", r.logs.String())
	}
	if code := cmd.ProcessState.ExitCode(); code != 0 {
		r.t.Errorf("mailhop exited with %d after SIGTERM\n%s", code, r.logs.String())
	}
}

// kill sends SIGKILL and waits for the process to be gone.
func (r *relay) kill() {
	r.mu.Lock()
	cmd, exited := r.cmd, r.exited
	r.cmd = nil
	r.mu.Unlock()
	if cmd == nil {
		return
	}
	cmd.Process.Kill()
	<-exited
}

// pid returns the running process's ID.
func (r *relay) pid() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.cmd == nil {
		r.t.Fatal("relay not running")
	}
	return r.cmd.Process.Pid
}

// signal sends sig to the running process.
func (r *relay) signal(sig os.Signal) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.cmd != nil {
		r.cmd.Process.Signal(sig)
	}
}

// mailhop runs a mailhop subcommand with this relay's configuration.
func (r *relay) mailhop(args ...string) (string, string, int) {
	r.t.Helper()
	args = append(args, "--config", r.cfgPath)
	cmd := exec.Command(mailhopBin, args...)
	if len(r.env) > 0 {
		cmd.Env = append(os.Environ(), r.env...)
	}
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	code := 0
	if err != nil {
		code = cmd.ProcessState.ExitCode()
	}
	return out.String(), errb.String(), code
}

// list returns `mailhop queue list --json`.
func (r *relay) list() []admin.Message {
	r.t.Helper()
	out, errs, code := r.mailhop("queue", "list", "--json")
	if code != 0 {
		r.t.Fatalf("queue list: exit %d: %s", code, errs)
	}
	var msgs []admin.Message
	if err := json.Unmarshal([]byte(out), &msgs); err != nil {
		r.t.Fatalf("queue list --json: %v\n%s", err, out)
	}
	return msgs
}

// waitFor polls cond (bounded) until it holds.
func waitFor(t testing.TB, what string, limit time.Duration, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(limit)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(25 * time.Millisecond)
	}
}

// openQueue opens the stopped relay's queue directory directly.
func (r *relay) openQueue() *queue.Queue {
	r.t.Helper()
	q, err := queue.Open(filepath.Join(r.dir, "data", "queue"), queue.Options{})
	if err != nil {
		r.t.Fatalf("opening queue: %v", err)
	}
	r.t.Cleanup(func() { q.Close() })
	return q
}

// body reads one queued body.
func body(t testing.TB, q *queue.Queue, id string) []byte {
	t.Helper()
	b, err := q.Body(id)
	if err != nil {
		t.Fatalf("body %s: %v", id, err)
	}
	defer b.Close()
	var buf bytes.Buffer
	if _, err := buf.ReadFrom(b); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// stripReceived removes the first header line (mailhop's Received, folded
// over several lines) and returns the rest.
func stripReceived(t testing.TB, b []byte) []byte {
	t.Helper()
	if !bytes.HasPrefix(b, []byte("Received: ")) {
		t.Fatalf("message does not start with a Received header: %q", b[:min(len(b), 80)])
	}
	i := 0
	for {
		j := bytes.Index(b[i:], []byte("\r\n"))
		if j < 0 {
			t.Fatalf("unterminated header")
		}
		i += j + 2
		if i >= len(b) || (b[i] != ' ' && b[i] != '\t') {
			return b[i:]
		}
	}
}

// tool skips the test when an external client is missing (the test command
// in the README installs them all; CI has them).
func tool(t testing.TB, name string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	if err != nil {
		if os.Getenv("CI") != "" {
			t.Fatalf("%s is not installed (the README's test command installs it)", name)
		}
		t.Skipf("%s not installed", name)
	}
	return p
}

// runTool runs an external client with a time limit.
func runTool(t testing.TB, stdin []byte, name string, args ...string) (string, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, tool(t, name), args...)
	if stdin != nil {
		cmd.Stdin = bytes.NewReader(stdin)
	}
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// waitLine reports whether a log line containing every part appears within
// 10 seconds: the log reaches the test through a pipe, a little after the
// relay wrote it.
func (r *relay) waitLine(parts ...string) bool {
	return r.logs.WaitLine(10*time.Second, parts...) != ""
}

// hasLine reports whether the relay's log has a line containing every part.
func (r *relay) hasLine(parts ...string) bool {
	return len(testlog.Lines(r.logs.String(), parts...)) > 0
}
