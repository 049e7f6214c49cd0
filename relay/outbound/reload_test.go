package outbound

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/emersion/go-smtp"

	"github.com/mailhop/mailhop/dnsmx"
	"github.com/mailhop/mailhop/dnsmx/dnstest"
	"github.com/mailhop/mailhop/relay/config"
	"github.com/mailhop/mailhop/relay/outbound/smtptest"
)

// reloaded returns a copy of h's configuration changed by edit, as a
// SIGHUP would load it.
func (h *harness) reloaded(edit func(*config.Config)) *config.Config {
	c := *h.cfg
	c.Delivery.RetryIntervals = append([]config.Duration(nil), h.cfg.Delivery.RetryIntervals...)
	edit(&c)
	return &c
}

func TestReload_RetryIntervals_ApplyToTheNextAttempt(t *testing.T) {
	t.Parallel()
	h := newHarness(t, smtptest.Behaviour{Rcpt: func(string, *smtp.RcptOptions) error {
		return smtptest.Reply(451, "4.2.0", "try later")
	}}, zone("example.test", "127.0.0.2"))
	h.cfg.Delivery.RetryIntervals = []config.Duration{{Duration: 3 * time.Hour}}
	h.start()
	id := h.submit(testBody, []string{"a@example.test"})
	h.waitRecords(id, 1)
	if next := time.Until(h.envelope(id).NextAttempt); next < 2*time.Hour {
		t.Fatalf("next attempt in %v, want about 3h", next)
	}
	h.agent.SetConfig(h.reloaded(func(c *config.Config) {
		c.Delivery.RetryIntervals = []config.Duration{{Duration: time.Minute}, {Duration: 2 * time.Minute}}
	}))
	h.q.Flush("")
	h.waitRecords(id, 2)
	// The second attempt is followed by the second interval.
	if next := time.Until(h.envelope(id).NextAttempt); next < 100*time.Second || next > 140*time.Second {
		t.Errorf("next attempt in %v after the reload, want about 2m", next)
	}
}

// gate holds messages in the server's DATA until n are inside at once.
type gate struct {
	mu      sync.Mutex
	inside  int
	n       int
	all     chan struct{}
	release chan struct{}
}

func newGate(n int) *gate {
	return &gate{n: n, all: make(chan struct{}), release: make(chan struct{})}
}

func (g *gate) data(*smtptest.Message) error {
	g.mu.Lock()
	g.inside++
	if g.inside == g.n {
		close(g.all)
	}
	g.mu.Unlock()
	<-g.release
	return nil
}

// wait fails unless n messages are inside at once within 10 s, then lets
// them all go.
func (g *gate) wait(t *testing.T) {
	t.Helper()
	defer close(g.release)
	select {
	case <-g.all:
	case <-time.After(10 * time.Second):
		g.mu.Lock()
		defer g.mu.Unlock()
		t.Fatalf("%d deliveries at once, want %d", g.inside, g.n)
	}
}

func TestReload_Concurrency_Raised(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name    string
		domains []string
		set     func(c *config.Config, n int)
	}{
		{"per_domain_concurrency", []string{"example.test", "example.test", "example.test"},
			func(c *config.Config, n int) { c.Delivery.PerDomainConcurrency = n }},
		{"concurrency", []string{"example.test", "other.test", "third.test"},
			func(c *config.Config, n int) { c.Delivery.Concurrency = n }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			g := newGate(3)
			h := newHarness(t, smtptest.Behaviour{Data: g.data}, zone("example.test", "127.0.0.2", "other.test", "127.0.0.2", "third.test", "127.0.0.2"))
			tc.set(h.cfg, 1)
			h.cfg.Delivery.DataEndTimeout.Duration = time.Minute // no delivery gives up while held
			h.start()
			for i, d := range tc.domains {
				h.submit(testBody, []string{fmt.Sprintf("r%d@%s", i, d)})
			}
			h.agent.SetConfig(h.reloaded(func(c *config.Config) { tc.set(c, 3) }))
			g.wait(t)
			h.first.Wait(t, 3)
		})
	}
}

func TestSem_Lowered(t *testing.T) {
	s := newSem(2)
	ctx := context.Background()
	s.acquire(ctx)
	s.acquire(ctx)
	s.setMax(1)
	s.release()
	done, cancel := context.WithCancel(ctx)
	cancel()
	if s.acquire(done) == nil {
		t.Fatal("a slot was granted with one held and a limit of 1")
	}
	waiting := make(chan error)
	go func() { waiting <- s.acquire(ctx) }()
	s.release()
	if err := <-waiting; err != nil {
		t.Fatal(err)
	}
	s.setMax(2)
	if err := s.acquire(ctx); err != nil {
		t.Fatal(err)
	}
}

func TestReload_RestartOnlySettingsWarned(t *testing.T) {
	t.Parallel()
	h := newHarness(t, smtptest.Behaviour{}, nil)
	h.start()
	h.agent.SetConfig(h.reloaded(func(c *config.Config) { c.Delivery.PerDomainConcurrency = 2 }))
	if strings.Contains(h.logs.String(), "take effect only after a restart") {
		t.Error("warned about a reload that needs no restart")
	}
	h.agent.SetConfig(h.reloaded(func(c *config.Config) { c.Delivery.Resolvers = []string{"192.0.2.53:53"} }))
	if strings.Contains(h.logs.String(), "take effect only after a restart") {
		t.Error("warned about delivery.resolvers, which the reload applies (dnsmx.Resolver.SetServers)")
	}
	h.agent.SetConfig(h.reloaded(func(c *config.Config) { c.Delivery.ExtraRootsFile = "/nonexistent/roots.pem" }))
	if !strings.Contains(h.logs.String(), "extra_roots_file") {
		t.Errorf("no warning naming delivery.extra_roots_file:\n%s", h.logs.String())
	}
}

// A reload that shortens delivery.tls_report_interval takes effect at once:
// the report loop waiting for the end of the old period (a day) starts
// waiting for the new one instead.
func TestReload_TLSReportInterval_Reschedules(t *testing.T) {
	t.Parallel()
	h := newHarness(t, smtptest.Behaviour{}, zone("example.test", "127.0.0.2"))
	h.cfg.DataDir = t.TempDir()
	h.cfg.Delivery.TLSReports = true
	h.cfg.Delivery.TLSReportInterval.Duration = 24 * time.Hour
	r, err := dnsmx.NewResolver([]string{h.dns.Addr}, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	a, err := New(Options{Config: h.cfg, Queue: h.q, Resolver: r, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	armed := make(chan time.Duration, 4)
	a.tlsrpt.armed = func(iv time.Duration) { armed <- iv }
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		a.tlsReportLoop(ctx)
	}()
	t.Cleanup(func() { cancel(); <-done })
	wait := func(want time.Duration) {
		t.Helper()
		select {
		case iv := <-armed:
			if iv != want {
				t.Fatalf("report loop waits for a period of %v, want %v", iv, want)
			}
		case <-time.After(5 * time.Second):
			t.Fatalf("report loop not waiting for a period of %v (the old timer kept running)", want)
		}
	}
	wait(24 * time.Hour)
	a.SetConfig(h.reloaded(func(c *config.Config) { c.Delivery.TLSReportInterval.Duration = time.Second }))
	wait(time.Second)
}

// TestReload_RouteCAFileReread: a reload reads a route's ca_file again,
// so a private CA replaced in the same file (its certificate renewed)
// verifies the smarthost from then on; the pool read before stayed in use
// until a restart, and the route's mail was deferred "certificate signed
// by unknown authority".
func TestReload_RouteCAFileReread(t *testing.T) {
	t.Parallel()
	pki := newPKI(t, "smart.test")
	old := newPKI(t, "smart.test")
	z := dnstest.Zone{"smart.test.": {dnstest.A("smart.test", "127.0.0.2")}}
	h := newHarness(t, smtptest.Behaviour{TLS: pki.serverConfig(), Users: map[string]string{"app": "s3cret"}}, z)
	caFile := filepath.Join(t.TempDir(), "route-ca.pem")
	copyFile(t, old.caFile, caFile)
	h.cfg.Route = append(h.cfg.Route, routeTo(h, []string{"smart.test"}, "starttls", caFile))
	h.start()
	id := h.submit(testBody, []string{"a@routed.test"})
	h.waitRecords(id, 1)
	if n := len(h.first.Messages()); n != 0 {
		t.Fatalf("%d delivered to a smarthost whose CA is not in ca_file", n)
	}

	copyFile(t, pki.caFile, caFile)
	h.agent.SetConfig(h.reloaded(func(*config.Config) {}))
	id = h.submit(testBody, []string{"b@routed.test"})
	h.waitRecords(id, 1)
	if m := h.first.Messages(); len(m) != 1 || !m[0].TLS {
		t.Fatalf("after the CA in ca_file was replaced and reloaded: %+v\n%s", m, h.logs.String())
	}
}

func copyFile(t *testing.T, from, to string) {
	t.Helper()
	b, err := os.ReadFile(from)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(to, b, 0o644); err != nil {
		t.Fatal(err)
	}
}

// TestReload_NewSessionsAfterReload: mail after a reload goes over a new
// session, not one set up under the configuration before (pooled for
// reuse): a busy connection stays in the pool indefinitely, and kept the
// old hostname in its EHLO, a route's old roots and credentials. The idle
// ones of before are closed, not left to their idle timeout.
func TestReload_NewSessionsAfterReload(t *testing.T) {
	t.Parallel()
	h := newHarness(t, smtptest.Behaviour{}, zone("example.test", "127.0.0.2"))
	h.cfg.Delivery.IdleConnTimeout = config.Duration{Duration: time.Hour}
	h.start()
	id := h.submit(testBody, []string{"a@example.test"})
	h.waitRecords(id, 1)
	h.agent.SetConfig(h.reloaded(func(c *config.Config) { c.Hostname = "renamed.test" }))
	h.agent.pool.mu.Lock()
	idle := h.agent.pool.n
	h.agent.pool.mu.Unlock()
	if idle != 0 {
		t.Errorf("%d connections of the configuration before the reload still idle in the pool, want them closed", idle)
	}
	id = h.submit(testBody, []string{"b@example.test"})
	h.waitRecords(id, 1)
	m := h.first.Messages()
	if len(m) != 2 {
		t.Fatalf("%d messages delivered, want 2\n%s", len(m), h.logs.String())
	}
	if m[1].Helo != "renamed.test" || m[1].Conn == m[0].Conn {
		t.Errorf("after the reload: EHLO %q on connection %d (the first: %d), want renamed.test on a new one", m[1].Helo, m[1].Conn, m[0].Conn)
	}
}
