// Package metrics serves mailhop's Prometheus metrics (/metrics).
//
// Counters and gauges are not kept here: they are read from the counters the
// parts already keep (the inbound server's, the delivery agent's, the
// queue's, the resolver's) once per scrape, through one Snapshot function, so
// a message costs nothing extra. Only the two histograms are fed as events
// happen, by the delivery agent's Observer hook.
//
// The counters start at zero when the process starts, as Prometheus expects
// of counters (rate() handles the reset).
package metrics

import (
	"context"
	"errors"
	"net"
	"net/http"
	"sort"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// Snapshot is every counter and gauge at one moment.
type Snapshot struct {
	Received  uint64            // messages accepted (SMTP, sendmail, pickup)
	Refused   map[string]uint64 // refused transactions and commands, by reason
	Delivered uint64            // recipients delivered
	Deferred  uint64            // recipient attempts that will be retried
	Bounced   uint64            // recipients failed (including expired)

	QueueMessages   int
	QueueRecipients int       // pending recipients
	QueueOldest     time.Time // arrival of the oldest queued message; zero when empty

	ConnectionsIn int    // inbound SMTP connections open now
	TLSIn         uint64 // inbound connections that used TLS
	TLSOut        uint64 // outbound connections that used TLS

	DNSLookups  uint64
	DNSFailures uint64
	Fsyncs      uint64 // queue group commits, one fsync each
}

// Metrics is the registry and the histograms.
type Metrics struct {
	reg      *prometheus.Registry
	latency  prometheus.Histogram
	attempt  prometheus.Histogram
	snapshot func() Snapshot
	now      func() time.Time
}

// Names and help texts; README's "Metrics" section lists the same.
var (
	descReceived   = prometheus.NewDesc("mailhop_messages_received_total", "Messages accepted into the queue (SMTP, sendmail and the pickup directory).", nil, nil)
	descRefused    = prometheus.NewDesc("mailhop_messages_refused_total", "Messages, recipients or sessions refused by the inbound server, by reason.", []string{"reason"}, nil)
	descDelivered  = prometheus.NewDesc("mailhop_messages_delivered_total", "Recipients delivered (the next server answered 250).", nil, nil)
	descDeferred   = prometheus.NewDesc("mailhop_messages_deferred_total", "Recipient delivery attempts that failed temporarily and will be retried.", nil, nil)
	descBounced    = prometheus.NewDesc("mailhop_messages_bounced_total", "Recipients that failed permanently (5xx, expired, bounced by the operator).", nil, nil)
	descQueueMsgs  = prometheus.NewDesc("mailhop_queue_messages", "Messages in the queue now.", nil, nil)
	descQueueRcpts = prometheus.NewDesc("mailhop_queue_recipients", "Recipients waiting for delivery now.", nil, nil)
	descOldest     = prometheus.NewDesc("mailhop_queue_oldest_age_seconds", "Age of the oldest queued message (0 when the queue is empty).", nil, nil)
	descConns      = prometheus.NewDesc("mailhop_connections_open", "SMTP connections open now.", []string{"direction"}, nil)
	descTLS        = prometheus.NewDesc("mailhop_tls_connections_total", "SMTP connections that used TLS.", []string{"direction"}, nil)
	descDNS        = prometheus.NewDesc("mailhop_dns_lookups_total", "DNS queries sent for delivery (cache misses).", nil, nil)
	descDNSFail    = prometheus.NewDesc("mailhop_dns_failures_total", "DNS queries that failed temporarily (timeout, SERVFAIL, network).", nil, nil)
	descFsyncs     = prometheus.NewDesc("mailhop_queue_fsyncs_total", "Queue group commits, one fsync each.", nil, nil)
)

// New returns metrics reading counters from snapshot at each scrape (nil:
// none until SetSnapshot).
func New(snapshot func() Snapshot) *Metrics {
	m := &Metrics{
		reg:      prometheus.NewRegistry(),
		snapshot: snapshot,
		now:      time.Now,
		latency: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "mailhop_delivery_latency_seconds",
			Help: "Time from a message's arrival to the delivery of one of its recipients.",
			// 100 ms to about 2 days: local hops take milliseconds, retries hours.
			Buckets: []float64{0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 1800, 3600, 4 * 3600, 12 * 3600, 48 * 3600},
		}),
		attempt: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "mailhop_delivery_attempt_duration_seconds",
			Help:    "Duration of one delivery attempt to one domain (DNS, connect, SMTP dialog).",
			Buckets: []float64{0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 600},
		}),
	}
	m.reg.MustRegister(m.latency, m.attempt, collector{m},
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return m
}

// SetSnapshot replaces the function read at each scrape. It is for wiring
// (the parts that keep the counters are made after the Metrics, which the
// delivery agent needs as its Observer) and must be called before serving.
func (m *Metrics) SetSnapshot(f func() Snapshot) { m.snapshot = f }

// AttemptDone records one attempt's duration (outbound.Observer).
func (m *Metrics) AttemptDone(d time.Duration) { m.attempt.Observe(d.Seconds()) }

// Delivered records one delivered recipient's latency (outbound.Observer).
func (m *Metrics) Delivered(sinceArrival time.Duration) { m.latency.Observe(sinceArrival.Seconds()) }

// Handler serves the metrics in the Prometheus text format.
func (m *Metrics) Handler() http.Handler {
	return promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{})
}

// Registry is the registry, for tests and for adding collectors.
func (m *Metrics) Registry() *prometheus.Registry { return m.reg }

// collector turns a Snapshot into metrics.
type collector struct{ m *Metrics }

func (c collector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descReceived, descRefused, descDelivered, descDeferred, descBounced,
		descQueueMsgs, descQueueRcpts, descOldest, descConns, descTLS, descDNS, descDNSFail, descFsyncs} {
		ch <- d
	}
}

func (c collector) Collect(ch chan<- prometheus.Metric) {
	if c.m.snapshot == nil {
		return
	}
	s := c.m.snapshot()
	counter := func(d *prometheus.Desc, v uint64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, float64(v), labels...)
	}
	gauge := func(d *prometheus.Desc, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, labels...)
	}
	counter(descReceived, s.Received)
	reasons := make([]string, 0, len(s.Refused))
	for r := range s.Refused {
		reasons = append(reasons, r)
	}
	sort.Strings(reasons)
	for _, r := range reasons {
		counter(descRefused, s.Refused[r], r)
	}
	counter(descDelivered, s.Delivered)
	counter(descDeferred, s.Deferred)
	counter(descBounced, s.Bounced)
	gauge(descQueueMsgs, float64(s.QueueMessages))
	gauge(descQueueRcpts, float64(s.QueueRecipients))
	age := 0.0
	if !s.QueueOldest.IsZero() {
		age = max(0, c.m.now().Sub(s.QueueOldest).Seconds())
	}
	gauge(descOldest, age)
	gauge(descConns, float64(s.ConnectionsIn), "in")
	counter(descTLS, s.TLSIn, "in")
	counter(descTLS, s.TLSOut, "out")
	counter(descDNS, s.DNSLookups)
	counter(descDNSFail, s.DNSFailures)
	counter(descFsyncs, s.Fsyncs)
}

// Server serves /metrics on a TCP address.
type Server struct {
	srv  *http.Server
	ln   net.Listener
	done chan error
}

// Timeouts of the metrics server. A scrape is read and answered well within
// them; a connection whose client does not read the answer, or kept alive
// idle between scrapes, is closed after them instead of being held for good.
const writeTimeout = 30 * time.Second

var idleTimeout = 2 * time.Minute // a variable so that a test can shorten it

// Listen starts serving m on addr ("host:port") at /metrics.
func Listen(addr string, m *Metrics) (*Server, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, err
	}
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", m.Handler())
	s := &Server{ln: ln, done: make(chan error, 1),
		srv: &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second,
			WriteTimeout: writeTimeout, IdleTimeout: idleTimeout}}
	go func() {
		err := s.srv.Serve(ln)
		if errors.Is(err, http.ErrServerClosed) {
			err = nil
		}
		s.done <- err
	}()
	return s, nil
}

// Addr is the address the server listens on.
func (s *Server) Addr() net.Addr { return s.ln.Addr() }

// Shutdown stops the server.
func (s *Server) Shutdown(ctx context.Context) error {
	err := s.srv.Shutdown(ctx)
	<-s.done
	return err
}
