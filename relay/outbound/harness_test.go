package outbound

import (
	"context"
	"crypto/tls"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/mailhop/mailhop/dnsmx"
	"github.com/mailhop/mailhop/dnsmx/dnstest"
	"github.com/mailhop/mailhop/internal/testlog"
	"github.com/mailhop/mailhop/internal/testpki"
	"github.com/mailhop/mailhop/internal/testport"
	"github.com/mailhop/mailhop/queue"
	"github.com/mailhop/mailhop/relay/config"
	"github.com/mailhop/mailhop/relay/outbound/smtptest"
)

// harness is a queue, a DNS server, a config and an agent, all real, on
// loopback. Every SMTP server of a test listens on the same port (port) on
// different 127.0.0.x addresses, and the agent's mx_port is that port.
type harness struct {
	t     *testing.T
	q     *queue.Queue
	dns   *dnstest.Server
	cfg   *config.Config
	agent *Agent
	port  int
	ports *testport.Ports  // port on every address the tests use
	first *smtptest.Server // the MX on 127.0.0.2
	logs  *testlog.Buffer
	// editOpts, when set, changes the Options before each start.
	editOpts func(*Options)

	mu      sync.Mutex
	records map[string]int // queue ID → attempts recorded or requeued
	changed chan struct{}
	cancel  context.CancelFunc
	stopped chan struct{}
}

// harnessIPs are the addresses the tests' servers listen on, all at one
// port, reserved on each from the start (see testport).
var harnessIPs = []string{"127.0.0.2", "127.0.0.3", "127.0.0.4", "127.0.0.5", "127.0.0.6", "127.0.0.7",
	"127.0.0.8", "127.0.0.9", "127.0.0.250"}

// newHarness starts a server on 127.0.0.2 with b and a DNS server with
// zone. sender.test's MX is 127.0.0.250.
func newHarness(t *testing.T, b smtptest.Behaviour, zone dnstest.Zone) *harness {
	t.Helper()
	ports := testport.Reserve(t, harnessIPs...)
	first := smtptest.NewListener(t, ports.Listen("127.0.0.2"), b)
	h := &harness{t: t, first: first, port: ports.Port(), ports: ports, records: map[string]int{}, changed: make(chan struct{}), logs: &testlog.Buffer{}}
	if zone == nil {
		zone = dnstest.Zone{}
	}
	addMX(zone, "sender.test", 10, "mx.sender.test", "127.0.0.250")
	h.dns = dnstest.New(t, zone)
	q, err := queue.Open(t.TempDir(), queue.Options{RetryIntervals: []time.Duration{time.Hour}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { q.Close() })
	h.q = q
	h.cfg = &config.Config{Hostname: "relay.test"}
	h.cfg.Delivery.MXPort = h.port
	h.cfg.Delivery.Concurrency = 10
	h.cfg.Delivery.PerDomainConcurrency = 5
	h.cfg.Delivery.ConnectTimeout.Duration = 2 * time.Second
	h.cfg.Delivery.GreetingTimeout.Duration = 2 * time.Second
	h.cfg.Delivery.CommandTimeout.Duration = 2 * time.Second
	h.cfg.Delivery.DataEndTimeout.Duration = 2 * time.Second
	h.cfg.Delivery.IdleConnTimeout.Duration = time.Minute
	return h
}

// addMX adds "domain MX pref host" and host's A record.
func addMX(z dnstest.Zone, domain string, pref uint16, host, ip string) {
	z[domain+"."] = append(z[domain+"."], dnstest.MX(domain, pref, host))
	z[host+"."] = append(z[host+"."], dnstest.A(host, ip))
}

// server starts another scripted server on ip at the harness port.
func (h *harness) server(ip string, b smtptest.Behaviour) *smtptest.Server {
	return smtptest.NewListener(h.t, h.ports.Listen(ip), b)
}

// start creates the agent and runs it until the test ends.
func (h *harness) start() {
	h.t.Helper()
	r, err := dnsmx.NewResolver([]string{h.dns.Addr}, 5*time.Second)
	if err != nil {
		h.t.Fatal(err)
	}
	opts := Options{Config: h.cfg, Queue: h.q, Resolver: r,
		Logger: slog.New(slog.NewTextHandler(h.logs, &slog.HandlerOptions{Level: slog.LevelDebug}))}
	if h.editOpts != nil {
		h.editOpts(&opts)
	}
	a, err := New(opts)
	if err != nil {
		h.t.Fatal(err)
	}
	a.onRecord = func(id string, _ bool) {
		h.mu.Lock()
		h.records[id]++
		close(h.changed)
		h.changed = make(chan struct{})
		h.mu.Unlock()
	}
	h.agent = a
	ctx, cancel := context.WithCancel(context.Background())
	h.cancel = cancel
	h.stopped = make(chan struct{})
	go func() {
		defer close(h.stopped)
		if err := a.Run(ctx); err != nil {
			h.t.Errorf("Run: %v", err)
		}
	}()
	h.t.Cleanup(h.stop)
	h.t.Cleanup(func() {
		if h.t.Failed() {
			h.t.Logf("agent log:\n%s", h.logs.String())
		}
	})
}

// stop cancels Run, cuts deliveries under way, and waits for Run to return.
func (h *harness) stop() {
	h.cancel()
	h.agent.Abort()
	select {
	case <-h.stopped:
	case <-time.After(10 * time.Second):
		h.t.Error("Run did not return within 10s of cancel")
	}
}

// waitRecords waits until n attempts of id have been recorded.
func (h *harness) waitRecords(id string, n int) {
	h.t.Helper()
	timeout := time.NewTimer(15 * time.Second)
	defer timeout.Stop()
	for {
		h.mu.Lock()
		got, ch := h.records[id], h.changed
		h.mu.Unlock()
		if got >= n {
			return
		}
		select {
		case <-ch:
		case <-timeout.C:
			h.t.Fatalf("%d attempts of %s recorded after 15s, want %d\nlog:\n%s", got, id, n, h.logs.String())
		}
	}
}

// submit queues a message from sender@sender.test to rcpts.
func (h *harness) submit(body string, rcpts []string, mod ...func(*queue.Envelope)) string {
	h.t.Helper()
	env := &queue.Envelope{From: "sender@sender.test"}
	for _, r := range rcpts {
		env.Recipients = append(env.Recipients, queue.Recipient{Address: r})
	}
	for _, m := range mod {
		m(env)
	}
	if err := h.q.Enqueue(env, strings.NewReader(body)); err != nil {
		h.t.Fatal(err)
	}
	return env.ID
}

// rcptStates returns id's recipients, or nil when it has left the queue.
func (h *harness) envelope(id string) *queue.Envelope {
	env, err := h.q.Get(id)
	if err != nil {
		return nil
	}
	return env
}

// rcptPendingWith checks that recipient i of id is pending with a last
// reply that contains text.
func (h *harness) rcptPendingWith(id string, i int, text string) {
	h.t.Helper()
	env := h.envelope(id)
	if env == nil {
		h.t.Fatalf("message %s left the queue, want recipient %d pending", id, i)
	}
	if r := env.Recipients[i]; r.State != queue.Pending || !strings.Contains(r.Reply, text) {
		h.t.Errorf("%s: %v %q, want pending with %q", r.Address, r.State, r.Reply, text)
	}
}

const testBody = "From: Sender <sender@sender.test>\r\n" +
	"To: rcpt@example.test\r\n" +
	"Subject: hello\r\n" +
	"Message-ID: <1@sender.test>\r\n" +
	"\r\n" +
	"Hello.\r\n" +
	".leading dot\r\n" +
	"..two dots\r\n" +
	".\r\n" +
	"last line without dot\r\n"

// testPKI is a CA and a certificate it signed for some names.
type testPKI struct {
	caFile string
	cert   tls.Certificate
}

func newPKI(t *testing.T, names ...string) *testPKI {
	t.Helper()
	ca := testpki.NewCA(t)
	return &testPKI{caFile: ca.File, cert: ca.Issue(t, append(names, "127.0.0.1")...)}
}

func (p *testPKI) serverConfig() *tls.Config {
	return &tls.Config{Certificates: []tls.Certificate{p.cert}}
}
