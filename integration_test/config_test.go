package integration_test

import (
	"bytes"
	"context"
	"fmt"
	"net/textproto"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/mailhop/mailhop/internal/testlog"
	"golang.org/x/crypto/bcrypt"
)

// runMailhop runs the binary with args (and stdin) under a time limit and
// returns stdout, stderr and the exit code. A process still running at the
// limit is killed and reported as exit code -1.
func runMailhop(t testing.TB, limit time.Duration, stdin []byte, args ...string) (string, string, int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), limit)
	defer cancel()
	cmd := exec.CommandContext(ctx, mailhopBin, args...)
	if stdin != nil {
		cmd.Stdin = bytes.NewReader(stdin)
	}
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	if ctx.Err() != nil {
		return out.String(), errb.String(), -1
	}
	code := 0
	if err != nil {
		code = cmd.ProcessState.ExitCode()
	}
	return out.String(), errb.String(), code
}

// goodConfig is a valid configuration; each bad-config case changes one
// thing in it with a string replacement.
func goodConfig(t testing.TB, dir string) string {
	return fmt.Sprintf(`hostname = "mx.relay.test"
data_dir = %q

[tls]
cert_file = ""
key_file = ""

[[listener]]
address = %q
mode = "relay"

[[listener]]
address = %q
mode = "submission"

[policy]
trusted_networks = ["127.0.0.0/8", "::1/128"]
max_message_size = 1048576
max_recipients = 10

[[user]]
name = "app"
password_hash = %q
senders = ["@example.com"]

[delivery]
resolvers = [%q]
retry_intervals = ["1h"]
max_queue_age = "120h"
`, filepath.Join(dir, "data"), freePort(t, "127.0.0.1"), freePort(t, "127.0.0.1"), testHash(), freePort(t, "127.0.0.1"))
}

func TestConfigGoodConfigPasses(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	path := filepath.Join(dir, "config.toml")
	if err := os.WriteFile(path, []byte(goodConfig(t, dir)), 0o600); err != nil {
		t.Fatal(err)
	}
	out, errs, code := runMailhop(t, 30*time.Second, nil, "check-config", "--config", path)
	if code != 0 {
		t.Fatalf("check-config of the base config: exit %d\nstdout: %s\nstderr: %s", code, out, errs)
	}
}

// TestConfigBadFiles gives check-config and serve one file per kind of
// mistake: both must exit 1 and name the key at fault.
func TestConfigBadFiles(t *testing.T) {
	t.Parallel()
	// edit returns a function replacing the first match of the regular
	// expression re in the base config with repl.
	edit := func(re, repl string) func(testing.TB, string) string {
		rx := regexp.MustCompile(re)
		return func(t testing.TB, cfg string) string {
			loc := rx.FindStringIndex(cfg)
			if loc == nil {
				t.Fatalf("test bug: %q not in the base config", re)
			}
			return cfg[:loc[0]] + repl + cfg[loc[1]:]
		}
	}
	cases := []struct {
		name string
		edit func(testing.TB, string) string
		want []string // on stderr
	}{
		{"unknown key", edit(`max_recipients = 10\n`, "max_recipients = 10\nmax_recipient = 5\n"),
			[]string{"policy.max_recipient"}},
		{"unknown table", edit(`\[delivery\]\n`, "[delivry]\nfoo = 1\n[delivery]\n"),
			[]string{"delivry"}},
		// Line 2 holds data_dir: a string left open there.
		{"TOML syntax", edit(`data_dir = "`, "data_dir = \"unterminated\n#"),
			[]string{"config.toml:2:"}},
		{"bad duration", edit(`max_queue_age = "120h"`, `max_queue_age = "5 days"`),
			[]string{"delivery.max_queue_age"}},
		{"bad retry interval", edit(`retry_intervals = \["1h"\]`, `retry_intervals = ["1h", "soon"]`),
			[]string{"delivery.retry_intervals"}},
		{"negative size", edit(`max_message_size = 1048576`, "max_message_size = -5"),
			[]string{"policy.max_message_size"}},
		{"size as text", edit(`max_message_size = 1048576`, `max_message_size = "25MB"`),
			[]string{"policy.max_message_size"}},
		{"bad CIDR", edit(`"::1/128"\]`, `"10.0.0.0/33"]`),
			[]string{"policy.trusted_networks[1]"}},
		{"bad IP in CIDR", edit(`"127\.0\.0\.0/8"`, `"127.0.0.256/8"`),
			[]string{"policy.trusted_networks[0]"}},
		{"missing cert file", edit(`cert_file = ""\nkey_file = ""`,
			"cert_file = \"/nonexistent/mailhop/cert.pem\"\nkey_file = \"/nonexistent/mailhop/key.pem\""),
			[]string{"tls.cert_file"}},
		{"bad listener mode", edit(`mode = "submission"`, `mode = "smtps"`),
			[]string{"listener[1].mode"}},
		{"address without port", edit(`address = "127\.0\.0\.1:\d+"`, `address = "127.0.0.1"`),
			[]string{"listener[0].address"}},
		{"bad port", edit(`address = "127\.0\.0\.1:\d+"`, `address = "127.0.0.1:99999"`),
			[]string{"listener[0].address"}},
		{"bad bcrypt hash", edit(`password_hash = "`, "password_hash = \"not-a-hash\"\n#"),
			[]string{"user[0].password_hash"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			dir := t.TempDir()
			cfg := c.edit(t, goodConfig(t, dir))
			path := filepath.Join(dir, "config.toml")
			if err := os.WriteFile(path, []byte(cfg), 0o600); err != nil {
				t.Fatal(err)
			}
			check := func(what string, out, errs string, code int) {
				t.Helper()
				if code != 1 {
					t.Errorf("%s: exit %d, want 1\nstdout: %s\nstderr: %s", what, code, out, errs)
				}
				for _, w := range c.want {
					if !strings.Contains(errs, w) {
						t.Errorf("%s: stderr does not name %q:\n%s", what, w, errs)
					}
				}
			}
			out, errs, code := runMailhop(t, 30*time.Second, nil, "check-config", "--config", path)
			check("check-config", out, errs, code)
			out, errs, code = runMailhop(t, 30*time.Second, nil, "serve", "--config", path)
			check("serve", out, errs, code)
		})
	}
}

// TestConfigExampleLoadsAndServes runs config.example.toml as shipped, with
// only its listener ports, data_dir and DNS resolver changed (so the test
// uses free loopback ports and never the network), and sends it one message.
func TestConfigExampleLoadsAndServes(t *testing.T) {
	t.Parallel()
	orig, err := os.ReadFile("../config.example.toml")
	if err != nil {
		t.Fatal(err)
	}
	out, errs, code := runMailhop(t, 30*time.Second, nil, "check-config", "--config", "../config.example.toml")
	if code != 0 {
		t.Fatalf("check-config config.example.toml: exit %d\nstdout: %s\nstderr: %s", code, out, errs)
	}

	dir := t.TempDir()
	relayAddr := freePort(t, "127.0.0.1")
	cfg := string(orig)
	for old, repl := range map[string]string{
		`"127.0.0.1:2525"`:    fmt.Sprintf("%q", relayAddr),
		`"127.0.0.1:2587"`:    fmt.Sprintf("%q", freePort(t, "127.0.0.1")),
		`"127.0.0.1:2465"`:    fmt.Sprintf("%q", freePort(t, "127.0.0.1")),
		`data_dir = "./data"`: fmt.Sprintf("data_dir = %q", filepath.Join(dir, "data")),
		"\nresolvers = []":    fmt.Sprintf("\nresolvers = [%q]", freePort(t, "127.0.0.1")),
	} {
		if strings.Count(cfg, old) != 1 {
			t.Fatalf("config.example.toml: %q found %d times, want once", old, strings.Count(cfg, old))
		}
		cfg = strings.Replace(cfg, old, repl, 1)
	}
	path := filepath.Join(dir, "config.toml")
	if err := os.WriteFile(path, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	if out, errs, code := runMailhop(t, 30*time.Second, nil, "check-config", "--config", path); code != 0 {
		t.Fatalf("check-config of the rewritten example: exit %d\nstdout: %s\nstderr: %s", code, out, errs)
	}

	logs := &testlog.Buffer{}
	cmd := exec.Command(mailhopBin, "serve", "--config", path)
	cmd.Stdout, cmd.Stderr = logs, logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan struct{})
	go func() { cmd.Wait(); close(exited) }()
	defer func() {
		select {
		case <-exited:
		default:
			cmd.Process.Kill()
			<-exited
		}
	}()
	if err := waitListening(relayAddr, exited, 20*time.Second); err != nil {
		t.Fatalf("example config did not listen on %s: %v\n%s", relayAddr, err, logs.String())
	}

	msg := "From: <app@example.com>\r\nTo: <someone@example.net>\r\nSubject: example config\r\n" +
		"Message-ID: <example-config@example.com>\r\nDate: Mon, 1 Jan 2024 00:00:00 +0000\r\n\r\nhello\r\n"
	c, err := textproto.Dial("tcp", relayAddr)
	if err != nil {
		t.Fatal(err)
	}
	id := ""
	func() {
		defer c.Close()
		step := func(want int, format string, args ...any) string {
			t.Helper()
			if format != "" {
				if err := c.PrintfLine(format, args...); err != nil {
					t.Fatal(err)
				}
			}
			_, text, err := c.ReadResponse(want)
			if err != nil {
				t.Fatalf("%q: %v", fmt.Sprintf(format, args...), err)
			}
			return text
		}
		step(220, "")
		step(250, "EHLO client.test")
		step(250, "MAIL FROM:<app@example.com>")
		step(250, "RCPT TO:<someone@example.net>")
		step(354, "DATA")
		w := c.DotWriter()
		w.Write([]byte(msg))
		w.Close()
		text := step(250, "")
		id = queuedID(text)
		step(221, "QUIT")
	}()
	if id == "" {
		t.Fatalf("no queue ID in the reply")
	}

	cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-exited:
	case <-time.After(40 * time.Second):
		t.Fatalf("mailhop did not stop on SIGTERM\n%s", logs.String())
	}
	if code := cmd.ProcessState.ExitCode(); code != 0 {
		t.Fatalf("exit %d after SIGTERM\n%s", code, logs.String())
	}
	if !strings.Contains(logs.String(), "self-signed") {
		t.Errorf("no warning about the generated self-signed certificate in the log:\n%s", logs.String())
	}
	r := &relay{t: t, dir: dir}
	q := r.openQueue()
	env, err := q.Get(id)
	if err != nil {
		t.Fatalf("message %s not in the queue: %v", id, err)
	}
	if env.From != "app@example.com" || len(env.Recipients) != 1 || env.Recipients[0].Address != "someone@example.net" {
		t.Errorf("envelope: from %q rcpts %+v", env.From, env.Recipients)
	}
	if got := stripReceived(t, body(t, q, id)); string(got) != msg {
		t.Errorf("body:\n got %q\nwant %q", got, msg)
	}
}

var queuedRE = regexp.MustCompile(`queued as ([A-Za-z0-9._-]+)`)

// queuedID finds the queue ID in the reply to DATA ("2.0.0 OK: queued as ID").
func queuedID(reply string) string {
	m := queuedRE.FindStringSubmatch(reply)
	if m == nil {
		return ""
	}
	return m[1]
}

func TestPasswdMakesVerifiableHash(t *testing.T) {
	t.Parallel()
	out, errs, code := runMailhop(t, 30*time.Second, []byte("correct horse\n"), "passwd")
	if code != 0 {
		t.Fatalf("passwd: exit %d: %s", code, errs)
	}
	hash := strings.TrimSpace(out)
	if err := bcrypt.CompareHashAndPassword([]byte(hash), []byte("correct horse")); err != nil {
		t.Fatalf("hash %q does not verify: %v", hash, err)
	}
	if bcrypt.CompareHashAndPassword([]byte(hash), []byte("correct horse\n")) == nil {
		t.Errorf("the trailing newline became part of the password")
	}
	if _, _, code := runMailhop(t, 30*time.Second, []byte(""), "passwd"); code == 0 {
		t.Errorf("passwd with an empty password: exit 0")
	}
}

func TestVersionPrints(t *testing.T) {
	t.Parallel()
	out, errs, code := runMailhop(t, 30*time.Second, nil, "version")
	if code != 0 || !strings.Contains(out, "mailhop") || len(strings.TrimSpace(out)) < len("mailhop x") {
		t.Fatalf("version: exit %d, stdout %q, stderr %q", code, out, errs)
	}
}

// The queue commands read only data_dir and admin.socket: an operator's
// shell without the service's password_env variable can still use them.
func TestQueueCommandsWithoutServiceSecrets(t *testing.T) {
	t.Parallel()
	r := startRelay(t, relayOpts{
		NoRoute: true,
		Env:     []string{"MAILHOP_IT_ROUTE_PW=secret"},
		Extra: fmt.Sprintf("[[route]]\ndomains = [\"*\"]\nsmarthost = %q\ntls = \"starttls\"\nusername = \"u\"\npassword_env = \"MAILHOP_IT_ROUTE_PW\"\n",
			freePort(t, "127.0.0.1")),
	})
	cmd := exec.Command(mailhopBin, "queue", "list", "--json", "--config", r.cfgPath)
	cmd.Env = []string{"PATH=" + os.Getenv("PATH")} // not the service's environment
	out, err := cmd.CombinedOutput()
	if err != nil || !strings.HasPrefix(strings.TrimSpace(string(out)), "[") {
		t.Fatalf("queue list without the route's password variable: %v\n%s", err, out)
	}
}
