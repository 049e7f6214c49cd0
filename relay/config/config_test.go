package config

import (
	"crypto/ed25519"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"io/fs"
	"net/netip"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"
)

const testHash = "$2a$10$ztPAUp3f7JGTN.bLAAKzEumSXR.CLs0LFSVyqEeFt8571pCmrhScq" // "change-me"

// minimal is the smallest valid file.
const minimal = `
hostname = "mx.example.com"
[[listener]]
address = "127.0.0.1:2525"
mode = "relay"
`

func mustParse(t *testing.T, text string) *Config {
	t.Helper()
	cfg, err := Parse([]byte(text), filepath.Join(t.TempDir(), "config.toml"))
	if err != nil {
		t.Fatalf("Parse: %v", err)
	}
	return cfg
}

func TestExampleConfig(t *testing.T) {
	t.Parallel()
	const path = "../../config.example.toml"
	cfg, err := Load(path)
	if err != nil {
		t.Fatalf("the example configuration has problems:\n%v", err)
	}
	if cfg.Hostname != "localhost" {
		t.Errorf("hostname = %q", cfg.Hostname)
	}
	if len(cfg.Listener) != 3 || len(cfg.Route) != 0 || len(cfg.DKIM) != 0 {
		t.Errorf("listeners, routes, dkim = %d, %d, %d; want 3, 0, 0", len(cfg.Listener), len(cfg.Route), len(cfg.DKIM))
	}
	if want := filepath.Join("..", "..", "data"); cfg.DataDir != want {
		t.Errorf("data_dir = %q, want %q (relative to the file)", cfg.DataDir, want)
	}
	u := cfg.FindUser("app")
	if u == nil {
		t.Fatal("no user app")
	}
	if !u.MaySend("someone@example.com") {
		t.Error("app may not send as someone@example.com")
	}
	// The example states that its hash is of "change-me".
	if u.PasswordHash != testHash {
		t.Errorf("password_hash changed; update testHash if it is still the hash of \"change-me\"")
	}
	// Every key the example sets equals the default: the comments say so.
	def := mustParse(t, minimal)
	def.Delivery.Resolvers = []string{}
	if !reflect.DeepEqual(cfg.Policy.Trusted, def.Policy.Trusted) ||
		!reflect.DeepEqual(cfg.Delivery, def.Delivery) ||
		cfg.Limits != def.Limits || cfg.Log != def.Log {
		t.Error("a value in config.example.toml differs from the default its comment states")
	}
}

// TestBadConfigs loads each testdata/bad/NAME/config.toml and wants an *Error
// whose text contains every line of want.txt.
func TestBadConfigs(t *testing.T) {
	t.Parallel()
	dirs, err := filepath.Glob("testdata/bad/*")
	if err != nil || len(dirs) == 0 {
		t.Fatalf("no bad configs: %v", err)
	}
	for _, dir := range dirs {
		t.Run(filepath.Base(dir), func(t *testing.T) {
			t.Parallel()
			want, err := os.ReadFile(filepath.Join(dir, "want.txt"))
			if err != nil {
				t.Fatal(err)
			}
			cfg, err := Load(filepath.Join(dir, "config.toml"))
			if err == nil {
				t.Fatalf("loaded without error: %+v", cfg)
			}
			var ce *Error
			if !errors.As(err, &ce) || len(ce.Problems) == 0 {
				t.Fatalf("error is %T, want *Error with problems: %v", err, err)
			}
			if cfg != nil {
				t.Error("Config not nil on error")
			}
			t.Logf("\n%v", err)
			for _, w := range strings.Split(strings.TrimSpace(string(want)), "\n") {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error does not contain %q:\n%v", w, err)
				}
			}
			for _, p := range ce.Problems {
				if p.Msg == "" {
					t.Errorf("problem without message: %+v", p)
				}
			}
		})
	}
}

func TestLoadMissingFile(t *testing.T) {
	t.Parallel()
	_, err := Load(filepath.Join(t.TempDir(), "nope.toml"))
	if !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("err = %v, want fs.ErrNotExist", err)
	}
}

func TestDefaults(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	cfg, err := Parse([]byte(`
[[listener]]
address = "127.0.0.1:2525"
mode = "relay"
`), filepath.Join(dir, "config.toml"))
	if host, _ := os.Hostname(); !validDomain(host) {
		t.Skipf("this machine's host name %q is not a domain name", host)
	}
	if err != nil {
		t.Fatal(err)
	}
	host, _ := os.Hostname()
	checks := []struct {
		name      string
		got, want any
	}{
		{"hostname", cfg.Hostname, strings.TrimSuffix(host, ".")},
		{"data_dir", cfg.DataDir, filepath.Join(dir, "data")},
		{"admin.socket", cfg.Admin.Socket, filepath.Join(dir, "data", "admin.sock")},
		{"trusted", cfg.Policy.Trusted, []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8"), netip.MustParsePrefix("::1/128")}},
		{"max_message_size", cfg.Policy.MaxMessageSize, int64(26214400)},
		{"max_recipients", cfg.Policy.MaxRecipients, 100},
		{"mx_port", cfg.Delivery.MXPort, 25},
		{"retry", cfg.RetryDurations(), []time.Duration{time.Minute, 5 * time.Minute, 15 * time.Minute, 30 * time.Minute, time.Hour, 2 * time.Hour, 4 * time.Hour}},
		{"max_queue_age", cfg.Delivery.MaxQueueAge.Duration, 120 * time.Hour},
		{"delay_warning", cfg.Delivery.DelayWarning.Duration, 4 * time.Hour},
		{"concurrency", cfg.Delivery.Concurrency, 100},
		{"per_domain_concurrency", cfg.Delivery.PerDomainConcurrency, 10},
		{"max_recipients_per_transaction", cfg.Delivery.MaxRecipientsPerTransaction, 50},
		{"connect_timeout", cfg.Delivery.ConnectTimeout.Duration, 30 * time.Second},
		{"greeting_timeout", cfg.Delivery.GreetingTimeout.Duration, 5 * time.Minute},
		{"command_timeout", cfg.Delivery.CommandTimeout.Duration, 5 * time.Minute},
		{"data_init_timeout", cfg.Delivery.DataInitTimeout.Duration, 2 * time.Minute},
		{"data_timeout", cfg.Delivery.DataTimeout.Duration, 3 * time.Minute},
		{"data_end_timeout", cfg.Delivery.DataEndTimeout.Duration, 10 * time.Minute},
		{"idle_conn_timeout", cfg.Delivery.IdleConnTimeout.Duration, 30 * time.Second},
		{"log", cfg.Log, Log{Format: "text", Level: "info"}},
		{"limits", cfg.Limits, Limits{
			MaxConnections: 2000, MaxConnectionsPerIP: 50,
			IdleTimeout: Duration{5 * time.Minute}, SessionTimeout: Duration{30 * time.Minute},
			MaxLineLength: 998, MaxErrors: 10, MaxHeaderSize: 102400, ShutdownTimeout: Duration{30 * time.Second},
			MaxAuthFailures: 10, AuthBlockTime: Duration{10 * time.Minute},
		}},
	}
	for _, c := range checks {
		if !reflect.DeepEqual(c.got, c.want) {
			t.Errorf("%s = %v, want %v", c.name, c.got, c.want)
		}
	}
}

func TestValuesOverrideDefaults(t *testing.T) {
	t.Parallel()
	cfg := mustParse(t, `data_dir = "/var/spool/mailhop"`+minimal+`
[policy]
trusted_networks = []
[delivery]
retry_intervals = ["30s"]
resolvers = ["9.9.9.9", "2620:fe::fe", "[::1]:5353", "192.0.2.53:5300"]
[admin]
socket = "ctl.sock"
`)
	if len(cfg.Policy.Trusted) != 0 || cfg.IsTrusted(netip.MustParseAddr("127.0.0.1")) {
		t.Errorf("trusted_networks = [] still trusts %v", cfg.Policy.Trusted)
	}
	if got := cfg.RetryDurations(); !slices.Equal(got, []time.Duration{30 * time.Second}) {
		t.Errorf("retry = %v", got)
	}
	if want := []string{"9.9.9.9:53", "[2620:fe::fe]:53", "[::1]:5353", "192.0.2.53:5300"}; !slices.Equal(cfg.Delivery.Resolvers, want) {
		t.Errorf("resolvers = %q, want %q", cfg.Delivery.Resolvers, want)
	}
	if cfg.DataDir != "/var/spool/mailhop" {
		t.Errorf("data_dir = %q", cfg.DataDir)
	}
	if want := filepath.Join(filepath.Dir(cfg.Path), "ctl.sock"); cfg.Admin.Socket != want {
		t.Errorf("socket = %q, want %q", cfg.Admin.Socket, want)
	}
}

func TestIsTrusted(t *testing.T) {
	t.Parallel()
	cfg := mustParse(t, minimal+`
[policy]
trusted_networks = ["10.1.0.0/16", "192.0.2.7", "2001:db8::/32", "::ffff:198.51.100.0/120"]
`)
	for ip, want := range map[string]bool{
		"10.1.2.3":             true,
		"10.2.0.1":             false,
		"192.0.2.7":            true,
		"192.0.2.8":            false,
		"::ffff:10.1.2.3":      true, // 4in6, as a dual-stack listener reports it
		"::ffff:10.2.0.1":      false,
		"2001:db8::1":          true,
		"2001:db9::1":          false,
		"198.51.100.9":         true, // trusted as a mapped prefix
		"127.0.0.1":            false,
		"fe80::1%eth0":         false,
		"2001:db8::1%eth0":     true,
		"::ffff:192.0.2.7":     true,
		"::1":                  false,
		"::ffff:198.51.100.10": true,
	} {
		if got := cfg.IsTrusted(netip.MustParseAddr(ip)); got != want {
			t.Errorf("IsTrusted(%s) = %v, want %v", ip, got, want)
		}
	}
}

func TestMaySend(t *testing.T) {
	t.Parallel()
	u := &User{Name: "app", Senders: []string{"app@example.com", "@Example.ORG", "@xn--mller-kva.example", "ü@bücher.example"}}
	for addr, want := range map[string]bool{
		"app@example.com":        true,
		"app@EXAMPLE.com":        true,
		"App@EXAMPLE.com":        true, // local parts without case too, as Postfix looks them up
		"other@example.com":      false,
		"anyone@example.org":     true,
		"anyone@sub.example.org": false,
		"x@example.org.":         true,
		"":                       false,
		"example.org":            false,
		"@example.org":           false,
		"app@example.com.evil":   false,
		// An SMTPUTF8 sender's domain in Unicode is its A-label.
		"jörg@müller.example":     true,
		"x@MÜLLER.example":        true,
		"x@xn--mller-kva.example": true,
		"ü@xn--bcher-kva.example": true,
		"ü@bücher.example":        true,
		"u@bücher.example":        false,
		"x@mueller.example":       false,
	} {
		if got := u.MaySend(addr); got != want {
			t.Errorf("MaySend(%q) = %v, want %v", addr, got, want)
		}
	}
	for domain, want := range map[string]bool{
		"example.com": true, "EXAMPLE.COM.": true, "example.org": true,
		"sub.example.org": false, "example.net": false, "": false,
	} {
		if got := u.SendsFrom(domain); got != want {
			t.Errorf("SendsFrom(%q) = %v, want %v", domain, got, want)
		}
	}
}

func TestFindUser(t *testing.T) {
	t.Parallel()
	cfg := mustParse(t, minimal+`
[[user]]
name = "app"
password_hash = "`+testHash+`"
[[user]]
name = "cron"
password_hash = "`+testHash+`"
`)
	if u := cfg.FindUser("cron"); u == nil || u.Name != "cron" {
		t.Errorf("FindUser(cron) = %+v", u)
	}
	if u := cfg.FindUser("nobody"); u != nil {
		t.Errorf("FindUser(nobody) = %+v", u)
	}
}

func TestRouteFor(t *testing.T) {
	t.Parallel()
	cfg := mustParse(t, minimal+`
[[route]]
domains = ["*"]
smarthost = "all.example.net:587"
[[route]]
domains = ["Example.COM", "example.org"]
smarthost = "special.example.net:465"
tls = "tls"
`)
	for domain, want := range map[string]string{
		"example.com":  "special.example.net:465",
		"EXAMPLE.com.": "special.example.net:465",
		"example.org":  "special.example.net:465",
		"example.net":  "all.example.net:587",
	} {
		r := cfg.RouteFor(domain)
		if r == nil || r.Smarthosts[0] != want {
			t.Errorf("RouteFor(%q) = %+v, want smarthost %s", domain, r, want)
		}
	}
	if cfg.Route[0].TLS != RouteTLSStartTLS {
		t.Errorf("default route tls = %q", cfg.Route[0].TLS)
	}

	noStar := mustParse(t, minimal+`
[[route]]
domains = ["example.com"]
smarthost = "a.example.net:587"
`)
	if r := noStar.RouteFor("example.net"); r != nil {
		t.Errorf("RouteFor without * = %+v, want nil (MX)", r)
	}
}

func TestSmarthostStringOrList(t *testing.T) {
	t.Parallel()
	cfg := mustParse(t, minimal+`
[[route]]
domains = ["a.example"]
smarthost = "one.example.net:587"
[[route]]
domains = ["b.example"]
smarthost = ["two.example.net:587", "[2001:db8::25]:25", "192.0.2.1:2525"]
`)
	if got := cfg.Route[0].Smarthosts; !slices.Equal(got, []string{"one.example.net:587"}) {
		t.Errorf("string smarthost = %q", got)
	}
	if got, want := cfg.Route[1].Smarthosts, []string{"two.example.net:587", "[2001:db8::25]:25", "192.0.2.1:2525"}; !slices.Equal(got, want) {
		t.Errorf("list smarthost = %q, want %q", got, want)
	}
}

func TestRoutePasswordSources(t *testing.T) {
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "pw"), []byte("from-file\r\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	t.Setenv("MAILHOP_TEST_PASSWORD", "from-env")
	text := minimal + `
[[route]]
domains = ["a.example"]
smarthost = "a.example.net:587"
username = "u"
password_file = "pw"
[[route]]
domains = ["b.example"]
smarthost = "b.example.net:587"
username = "u"
password_env = "MAILHOP_TEST_PASSWORD"
[[route]]
domains = ["c.example"]
smarthost = "c.example.net:587"
username = "u"
password = "inline"
`
	cfg, err := Parse([]byte(text), filepath.Join(dir, "config.toml"))
	if err != nil {
		t.Fatal(err)
	}
	for i, want := range []string{"from-file", "from-env", "inline"} {
		if got := cfg.Route[i].Password; got != want {
			t.Errorf("route[%d].Password = %q, want %q", i, got, want)
		}
	}
}

func TestProblemsAreAllReported(t *testing.T) {
	t.Parallel()
	_, err := Parse([]byte(`hostname = "mx.example.com"
[[listener]]
address = "127.0.0.1:2525"
mode = "bad"
[[listener]]
address = "nope"
mode = "relay"
[policy]
max_recipients = 0
`), "c.toml")
	var ce *Error
	if !errors.As(err, &ce) {
		t.Fatalf("err = %v", err)
	}
	want := []Problem{
		{Key: "listener[0].mode", Line: 4},
		{Key: "listener[1].address", Line: 6},
		{Key: "policy.max_recipients", Line: 9},
	}
	if len(ce.Problems) != len(want) {
		t.Fatalf("got %d problems, want %d:\n%v", len(ce.Problems), len(want), err)
	}
	for i, w := range want {
		if p := ce.Problems[i]; p.Key != w.Key || p.Line != w.Line {
			t.Errorf("problem %d = %s:%d, want %s:%d", i, p.Key, p.Line, w.Key, w.Line)
		}
	}
	if !strings.HasPrefix(err.Error(), `c.toml:4: listener[0].mode: "bad" is not one of submission, submissions, relay`) {
		t.Errorf("Error() = %q", err.Error())
	}
}

// TestDKIMKeysAreChecked: a DKIM key file that holds no usable key (not
// PEM, an RSA key under 2048 bits) is a problem of its key_file, with its
// line and reported with every other problem, not found only by the signer
// after the others are fixed.
func TestDKIMKeysAreChecked(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	small, err := rsa.GenerateKey(rand.Reader, 1024)
	if err != nil {
		t.Fatal(err)
	}
	files := map[string][]byte{
		"garbage.key": []byte("not a key\n"),
		"small.key":   pem.EncodeToMemory(&pem.Block{Type: "RSA PRIVATE KEY", Bytes: x509.MarshalPKCS1PrivateKey(small)}),
	}
	for name, b := range files {
		if err := os.WriteFile(filepath.Join(dir, name), b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	_, err = Parse([]byte(minimal+`[policy]
max_recipients = 0
[[dkim]]
domain = "example.com"
selector = "s1"
key_file = "garbage.key"
[[dkim]]
domain = "example.com"
selector = "s2"
key_file = "small.key"
`), filepath.Join(dir, "c.toml"))
	var ce *Error
	if !errors.As(err, &ce) {
		t.Fatalf("err = %v", err)
	}
	want := []Problem{
		{Key: "policy.max_recipients", Line: 7},
		{Key: "dkim[0].key_file", Line: 11},
		{Key: "dkim[1].key_file", Line: 15},
	}
	if len(ce.Problems) != len(want) {
		t.Fatalf("got %d problems, want %d:\n%v", len(ce.Problems), len(want), err)
	}
	for i, w := range want {
		if p := ce.Problems[i]; p.Key != w.Key || p.Line != w.Line {
			t.Errorf("problem %d = %s:%d, want %s:%d", i, p.Key, p.Line, w.Key, w.Line)
		}
	}
	if msg := ce.Problems[2].Msg; !strings.Contains(msg, "1024 bits") {
		t.Errorf("small key: %q", msg)
	}
}

func TestCertificateFiles(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "cert.pem"), []byte("not a cert"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "key.pem"), []byte("not a key"), 0o600); err != nil {
		t.Fatal(err)
	}
	_, err := Parse([]byte(minimal+`
[tls]
cert_file = "cert.pem"
key_file = "key.pem"
`), filepath.Join(dir, "config.toml"))
	if err == nil || !strings.Contains(err.Error(), "tls.cert_file: cannot use the certificate") {
		t.Errorf("err = %v", err)
	}
}

func TestLineIndex(t *testing.T) {
	t.Parallel()
	li := newLineIndex([]byte(`a = 1
list = [
  "x = y",
  "z",
]
s = """
[[fake]]
b = 2
"""
[t]
k = 1 # comment
"quoted".key = 2
[[arr]]
x = 1
[[arr]]
x = 2
`))
	for key, want := range map[string]int{
		"a": 1, "list[1]": 2, "s": 6, "b": 0, "fake": 0, "t.k": 11, "t.quoted.key": 12,
		"arr[0].x": 14, "arr[1].x": 16, "arr[1].y": 15, "arr[2]": 0, "t.missing": 10,
	} {
		if got := li.lineOf(key); got != want {
			t.Errorf("lineOf(%q) = %d, want %d", key, got, want)
		}
	}
}

func TestUnknownKeysEachReported(t *testing.T) {
	t.Parallel()
	_, err := Parse([]byte(`hostname = "mx.example.com"
[[listener]]
address = "127.0.0.1:2525"
mode = "relay"
bogus = 1
[[listener]]
address = "127.0.0.1:2526"
mode = "relay"
bogus = 2
[extra]
a = 1
b = 2
`), "c.toml")
	want := "c.toml:5: listener[0].bogus: unknown key\nc.toml:9: listener[1].bogus: unknown key\nc.toml:10: extra: unknown key"
	if err == nil || err.Error() != want {
		t.Errorf("got:\n%v\nwant:\n%s", err, want)
	}
}

func TestWarnings_ExamplePasswords(t *testing.T) {
	t.Parallel()
	cfg, err := Load("../../config.example.toml")
	if err != nil {
		t.Fatal(err)
	}
	ws := cfg.Warnings()
	if len(ws) == 0 || !strings.Contains(ws[0], "user[0]") || !strings.Contains(ws[0], "mailhop passwd") {
		t.Errorf("config.example.toml's user with the published password: warnings %q", ws)
	}
	cfg.User[0].PasswordHash = "$2a$10$abcdefghijklmnopqrstuu5Z9N2H2r1yqYb8m1kz8i3rOQWc6x6hW"
	if ws := cfg.Warnings(); len(ws) != 0 {
		t.Errorf("warnings for a hash of its own: %q", ws)
	}
	cfg.Policy.TrustedNetworks = []string{"10.0.0.1/8", "192.0.2.0/24", "2001:db8::1/64"}
	ws = cfg.Warnings()
	if len(ws) != 2 || !strings.Contains(ws[0], "10.0.0.0/8") || !strings.Contains(ws[1], "2001:db8::/64") {
		t.Errorf("trusted_networks with host bits: warnings %q", ws)
	}
	// A trusted network that takes in much of the Internet is an open relay.
	cfg.Policy.TrustedNetworks = []string{"0.0.0.0/0", "10.0.0.0/8", "::/0", "2000::/3", "::ffff:0:0/96", "2001:db8::/32", "::ffff:10.0.0.0/104"}
	ws = cfg.Warnings()
	var wide []string
	for _, w := range ws {
		if strings.Contains(w, "open relay") {
			wide = append(wide, w[:strings.Index(w, ":")])
		}
	}
	if want := "policy.trusted_networks[0] policy.trusted_networks[2] policy.trusted_networks[3] policy.trusted_networks[4]"; strings.Join(wide, " ") != want {
		t.Errorf("wide trusted_networks: warnings %q, want open-relay warnings for %s", ws, want)
	}
	cfg.Policy.TrustedNetworks = nil
	cfg.Delivery.DelayWarning, cfg.Delivery.MaxQueueAge = Duration{Duration: 6 * time.Hour}, Duration{Duration: 6 * time.Hour}
	if ws := cfg.Warnings(); len(ws) != 1 || !strings.Contains(ws[0], "delivery.delay_warning (6h0m0s) is not shorter than delivery.max_queue_age") {
		t.Errorf("delay_warning = max_queue_age: warnings %q", ws)
	}
	cfg.Delivery.DelayWarning = Duration{Duration: 4 * time.Hour}
	cfg.Limits.MaxLineLength, cfg.Limits.MaxHeaderSize = 80, 500
	ws = cfg.Warnings()
	if len(ws) != 2 || !strings.Contains(ws[0], "limits.max_line_length = 80") || !strings.Contains(ws[1], "limits.max_header_size = 500") {
		t.Errorf("limits below what RFC 5321 needs: warnings %q", ws)
	}
	// A domain may take every delivery slot: a stalled one holds up all
	// mail (concurrency 3 beside the default per_domain_concurrency 10:
	// mail to a healthy domain waited out the greeting timeout of three
	// sessions to a server that never greeted).
	cfg.Limits.MaxLineLength, cfg.Limits.MaxHeaderSize = 0, 0
	cfg.Delivery.Concurrency, cfg.Delivery.PerDomainConcurrency = 3, 10
	if ws := cfg.Warnings(); len(ws) != 1 || !strings.Contains(ws[0], "delivery.per_domain_concurrency (10) is not below delivery.concurrency (3)") {
		t.Errorf("per_domain_concurrency over concurrency: warnings %q", ws)
	}
	cfg.Delivery.PerDomainConcurrency = 2
	if ws := cfg.Warnings(); len(ws) != 0 {
		t.Errorf("per_domain_concurrency below concurrency: warnings %q", ws)
	}
	cfg.Delivery.Concurrency, cfg.Delivery.PerDomainConcurrency = 1, 1
	if ws := cfg.Warnings(); len(ws) != 0 {
		t.Errorf("concurrency 1 (nothing lower to set): warnings %q", ws)
	}
}

// TestUnicodeSenders: a senders domain may be written in Unicode (for
// SMTPUTF8 senders); one that is no valid IDN is refused with its key.
func TestUnicodeSenders(t *testing.T) {
	t.Parallel()
	user := "\n[[user]]\nname = \"app\"\npassword_hash = \"" + testHash + "\"\n"
	cfg := mustParse(t, minimal+user+`senders = ["jörg@müller.example", "@bücher.example"]`)
	if u := cfg.FindUser("app"); !u.MaySend("jörg@xn--mller-kva.example") || !u.MaySend("x@bücher.example") {
		t.Error("Unicode senders not matched")
	}
	_, err := Parse([]byte(minimal+user+`senders = ["@bad_ü.example"]`), filepath.Join(t.TempDir(), "config.toml"))
	if err == nil || !strings.Contains(err.Error(), "user[0].senders[0]") {
		t.Errorf("invalid IDN: %v, want an error naming user[0].senders[0]", err)
	}
}

// TestSendersLocalPart: a senders entry whose local part is no RFC 5321
// dot-string (a doubled "@", an empty atom, a special character), or that is
// longer than a path, could never match a MAIL FROM the relay accepts: it is
// refused with its key, not kept as a silent 553 for that user. A local part
// over 64 octets (SRS, VERP), which the relay takes, is taken.
func TestSendersLocalPart(t *testing.T) {
	t.Parallel()
	user := "\n[[user]]\nname = \"app\"\npassword_hash = \"" + testHash + "\"\n"
	mustParse(t, minimal+user+`senders = ["first.last+tag@example.com", "o'brien@example.com", "*@example.com", "jörg@example.com", "`+
		strings.Repeat("x", 65)+`@example.com"]`)
	for _, s := range []string{"app@@example.com", "@@example.com", "a..b@example.com", ".a@example.com", "a.@example.com",
		"a(b)@example.com", "a,b@example.com", `a\\b@example.com`, strings.Repeat("x", 243) + "@example.com"} {
		_, err := Parse([]byte(minimal+user+`senders = ["`+s+`"]`), filepath.Join(t.TempDir(), "config.toml"))
		if err == nil || !strings.Contains(err.Error(), "user[0].senders[0]") {
			t.Errorf("senders = [%q]: %v, want an error naming user[0].senders[0]", s, err)
		}
	}
}

// TestAdminSocketPath: an admin.socket serve could not bind is refused with
// its key: in a directory that does not exist (serve creates data_dir
// only), longer than a unix socket path may be, or a file that is no
// socket (which serve would not replace).
func TestAdminSocketPath(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	if err := os.Mkdir(filepath.Join(dir, "run"), 0o700); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, "config.toml")
	if err := os.WriteFile(path, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct{ admin, want string }{
		{``, ""}, // data_dir/admin.sock: data_dir is created at start
		{`socket = "data/admin.sock"`, ""},
		{`socket = "run/admin.sock"`, ""},
		{`socket = "missing/admin.sock"`, "admin.socket: the directory " + filepath.Join(dir, "missing") + " does not exist"},
		{`socket = "data/sub/admin.sock"`, "admin.socket: the directory " + filepath.Join(dir, "data", "sub") + " does not exist"},
		{`socket = "/run/` + strings.Repeat("x", 110) + `.sock"`, "a unix socket path may have at most 107"},
		{`socket = "config.toml"`, "admin.socket: " + path + " exists and is not a socket"},
	} {
		_, err := Parse([]byte(minimal+"[admin]\n"+tc.admin+"\n"), path)
		switch {
		case tc.want == "" && err != nil:
			t.Errorf("%s: %v", tc.admin, err)
		case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)):
			t.Errorf("%s: err = %v, want %q", tc.admin, err, tc.want)
		}
	}
}

// TestEnumValuesIgnoreCase: every enumerated value is taken in any case and
// stored in the case the code compares with; an unknown one is still refused
// as written, naming its key and the values allowed; other strings (a
// route's username and password) keep their case.
func TestEnumValuesIgnoreCase(t *testing.T) {
	t.Parallel()
	cfg := mustParse(t, `hostname = "mx.example.com"
[[listener]]
address = "127.0.0.1:2525"
mode = "Submission"
[[listener]]
address = "127.0.0.1:2465"
mode = "SUBMISSIONS"
[[listener]]
address = "127.0.0.1:2526"
mode = "Relay"
[delivery]
tls_policy = "Verify"
dnssec_trusted_resolver = true
[[tls_policy]]
domains = ["bank.example"]
level = "DANE"
[[route]]
domains = ["a.example"]
smarthost = "smtp.example.net:465"
tls = "TLS"
username = "Relay@Example.NET"
password = "SeCret"
[[route]]
domains = ["b.example"]
smarthost = "smtp.example.net:587"
tls = "StartTLS"
[[route]]
domains = ["c.example"]
smarthost = "smtp.example.net:25"
tls = "None"
[log]
format = "JSON"
level = "Warn"
`)
	got := []string{cfg.Listener[0].Mode, cfg.Listener[1].Mode, cfg.Listener[2].Mode,
		cfg.Delivery.TLSPolicy, cfg.TLSPolicies[0].Level,
		cfg.Route[0].TLS, cfg.Route[1].TLS, cfg.Route[2].TLS, cfg.Log.Format, cfg.Log.Level}
	want := []string{ModeSubmission, ModeSubmissions, ModeRelay, TLSVerify, TLSDANE,
		RouteTLSImplicit, RouteTLSStartTLS, RouteTLSNone, "json", "warn"}
	if !slices.Equal(got, want) {
		t.Errorf("values = %q, want %q", got, want)
	}
	if r := cfg.Route[0]; r.Username != "Relay@Example.NET" || r.Password != "SeCret" {
		t.Errorf("username, password = %q, %q: changed", r.Username, r.Password)
	}

	_, err := Parse([]byte(minimal+"[log]\nlevel = \"Verbose\"\n"), filepath.Join(t.TempDir(), "config.toml"))
	if err == nil || !strings.Contains(err.Error(), `log.level: "Verbose" is not one of debug, info, warn, error`) {
		t.Errorf("unknown level: %v", err)
	}
}

// TestUnicodeDomains: a domain of a route, a tls_policy or a DKIM key may be
// written in Unicode; it is kept as its A-label, the form delivery looks a
// recipient domain up by and DKIM's d= takes, so mail to either spelling of
// the domain gets the same route and level. One that is no valid IDN is
// refused with its key.
func TestUnicodeDomains(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	_, k, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	der, err := x509.MarshalPKCS8PrivateKey(k)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "ed.key"), pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg, err := Parse([]byte(minimal+`[[route]]
domains = ["Bücher.example."]
smarthost = "smtp.example.net:587"
[[tls_policy]]
domains = ["münchen.example"]
level = "verify"
[[dkim]]
domain = "exämple.com"
selector = "s1"
key_file = "ed.key"
`), filepath.Join(dir, "config.toml"))
	if err != nil {
		t.Fatal(err)
	}
	if got := []string{cfg.Route[0].Domains[0], cfg.TLSPolicies[0].Domains[0], cfg.DKIM[0].Domain}; !slices.Equal(got,
		[]string{"xn--bcher-kva.example", "xn--mnchen-3ya.example", "xn--exmple-cua.com"}) {
		t.Errorf("domains = %q, want A-labels", got)
	}
	for _, d := range []string{"xn--bcher-kva.example", "bücher.example", "BÜCHER.example"} {
		if cfg.RouteFor(d) != &cfg.Route[0] {
			t.Errorf("RouteFor(%q) = nil, want the route", d)
		}
	}
	for _, d := range []string{"xn--mnchen-3ya.example", "münchen.example"} {
		if got := cfg.TLSLevelFor(d); got != TLSVerify {
			t.Errorf("TLSLevelFor(%q) = %q, want verify", d, got)
		}
	}

	_, err = Parse([]byte(minimal+`[[route]]
domains = ["bücher.example", "xn--bcher-kva.example", "bad_ü.example"]
smarthost = "smtp.example.net:587"
[[tls_policy]]
domains = ["bad_ü.example"]
level = "verify"
[[dkim]]
domain = "bad_ü.example"
selector = "s1"
key_file = "ed.key"
`), filepath.Join(dir, "config.toml"))
	for _, w := range []string{
		`route[0].domains[1]: "xn--bcher-kva.example" is already in route[0]`,
		`route[0].domains[2]: "bad_ü.example" is not a domain name`,
		`tls_policy[0].domains[0]: "bad_ü.example" is not a domain name`,
		`dkim[0].domain: "bad_ü.example" is not a valid domain name`,
	} {
		if err == nil || !strings.Contains(err.Error(), w) {
			t.Errorf("error does not contain %q: %v", w, err)
		}
	}
}

// hostname = "" is an error; it names the way to the default, not a system
// without a host name.
func TestEmptyHostnameNamesTheDefault(t *testing.T) {
	t.Parallel()
	host, _ := os.Hostname()
	if host == "" {
		t.Skip("this system has no host name")
	}
	_, err := Parse([]byte(`hostname = ""
[[listener]]
address = "127.0.0.1:2525"
mode = "relay"
`), "c.toml")
	if err == nil || !strings.Contains(err.Error(), "leave the key out") || strings.Contains(err.Error(), "could not be found") {
		t.Errorf("err = %v, want one that says to leave the key out", err)
	}
}
