package metrics

import (
	"bufio"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"testing"
	"time"
)

func TestMetrics_SnapshotAndHistograms(t *testing.T) {
	t.Parallel()
	now := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	m := New(func() Snapshot {
		return Snapshot{Received: 7, Refused: map[string]uint64{"relay_denied": 2, "auth_failed": 1},
			Delivered: 5, Deferred: 3, Bounced: 1, QueueMessages: 2, QueueRecipients: 4,
			QueueOldest: now.Add(-90 * time.Second), ConnectionsIn: 3, TLSIn: 6, TLSOut: 8,
			DNSLookups: 11, DNSFailures: 2, Fsyncs: 9}
	})
	m.now = func() time.Time { return now }
	m.AttemptDone(200 * time.Millisecond)
	m.Delivered(3 * time.Second)
	m.Delivered(2 * time.Hour)

	rec := httptest.NewRecorder()
	m.Handler().ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
	text := rec.Body.String()
	for _, line := range []string{
		"mailhop_messages_received_total 7",
		`mailhop_messages_refused_total{reason="auth_failed"} 1`,
		`mailhop_messages_refused_total{reason="relay_denied"} 2`,
		"mailhop_messages_delivered_total 5",
		"mailhop_messages_deferred_total 3",
		"mailhop_messages_bounced_total 1",
		"mailhop_queue_messages 2",
		"mailhop_queue_recipients 4",
		"mailhop_queue_oldest_age_seconds 90",
		`mailhop_connections_open{direction="in"} 3`,
		`mailhop_tls_connections_total{direction="in"} 6`,
		`mailhop_tls_connections_total{direction="out"} 8`,
		"mailhop_dns_lookups_total 11",
		"mailhop_dns_failures_total 2",
		"mailhop_queue_fsyncs_total 9",
		"# TYPE mailhop_messages_received_total counter",
		"# TYPE mailhop_queue_messages gauge",
		"# TYPE mailhop_delivery_latency_seconds histogram",
	} {
		if !strings.Contains(text, "\n"+line+"\n") {
			t.Errorf("/metrics lacks the line %q", line)
		}
	}
	mfs, err := m.Registry().Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		switch mf.GetName() {
		case "mailhop_delivery_latency_seconds":
			if c := mf.GetMetric()[0].GetHistogram().GetSampleCount(); c != 2 {
				t.Errorf("latency count = %d, want 2", c)
			}
		case "mailhop_delivery_attempt_duration_seconds":
			if c := mf.GetMetric()[0].GetHistogram().GetSampleCount(); c != 1 {
				t.Errorf("attempt count = %d, want 1", c)
			}
		}
	}
}

func TestServer_ServesMetricsOverHTTP(t *testing.T) {
	t.Parallel()
	m := New(func() Snapshot { return Snapshot{Received: 1} })
	s, err := Listen("127.0.0.1:0", m)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Shutdown(t.Context())
	resp, err := http.Get("http://" + s.Addr().String() + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	for _, w := range []string{"mailhop_messages_received_total 1", "mailhop_queue_messages 0", "go_goroutines"} {
		if !strings.Contains(string(b), w) {
			t.Errorf("/metrics lacks %q", w)
		}
	}
}

// A connection kept alive after a scrape is closed once idle for
// idleTimeout: it was held for good, so anyone who could reach the address
// could pile up connections (file descriptors, memory) without bound.
func TestServer_ClosesIdleConnections(t *testing.T) {
	// Not parallel: it shortens a package variable Listen reads.
	defer func(d time.Duration) { idleTimeout = d }(idleTimeout)
	idleTimeout = 100 * time.Millisecond
	s, err := Listen("127.0.0.1:0", New(func() Snapshot { return Snapshot{} }))
	if err != nil {
		t.Fatal(err)
	}
	defer s.Shutdown(t.Context())
	c, err := net.Dial("tcp", s.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	io.WriteString(c, "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		t.Fatal(err)
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	// The server closes the idle connection: the read ends (EOF) well
	// before the deadline.
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := c.Read(make([]byte, 1)); err != io.EOF {
		t.Errorf("idle connection after a scrape: read %v, want EOF (closed by the server)", err)
	}
}

// TestMetrics_ReadmeTable holds the README's metrics table to the metrics
// served: every mailhop_ metric is documented, and every documented one
// exists.
func TestMetrics_ReadmeTable(t *testing.T) {
	t.Parallel()
	readme, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	_, section, ok := strings.Cut(string(readme), "\n## Metrics\n")
	if !ok {
		t.Fatal("README.md has no Metrics section")
	}
	section, _, _ = strings.Cut(section, "\n## ")
	documented := map[string]bool{}
	for line := range strings.Lines(section) {
		if name, ok := strings.CutPrefix(line, "| `mailhop_"); ok {
			name, _, _ = strings.Cut(name, "`")
			name, _, _ = strings.Cut(name, "{")
			documented["mailhop_"+name] = true
		}
	}
	m := New(func() Snapshot { return Snapshot{Refused: map[string]uint64{"relay_denied": 1}} })
	mfs, err := m.Registry().Gather()
	if err != nil {
		t.Fatal(err)
	}
	served := map[string]bool{}
	for _, mf := range mfs {
		if name := mf.GetName(); strings.HasPrefix(name, "mailhop_") {
			served[name] = true
			if !documented[name] {
				t.Errorf("README.md's metrics table does not list %s", name)
			}
		}
	}
	for name := range documented {
		if !served[name] {
			t.Errorf("README.md's metrics table lists %s, which is not served", name)
		}
	}
}
