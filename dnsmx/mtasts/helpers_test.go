package mtasts

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httptest"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/mailhop/mailhop/dnsmx"
	"github.com/mailhop/mailhop/dnsmx/dnstest"
	"github.com/mailhop/mailhop/internal/testpki"
)

// stsServer is an HTTPS server standing in for mta-sts.DOMAIN hosts.
type stsServer struct {
	srv     *httptest.Server
	fetches atomic.Int64

	mu      sync.Mutex
	handler http.HandlerFunc
}

// newSTSServer serves policy (as text/plain) with a certificate for names.
func newSTSServer(t *testing.T, ca *testpki.CA, policy string, names ...string) *stsServer {
	t.Helper()
	s := &stsServer{}
	s.setPolicy(policy)
	s.srv = httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		s.fetches.Add(1)
		s.mu.Lock()
		h := s.handler
		s.mu.Unlock()
		h(w, r)
	}))
	s.srv.Config.ErrorLog = log.New(io.Discard, "", 0) // expected handshake failures
	s.srv.TLS = &tls.Config{Certificates: []tls.Certificate{ca.Issue(t, names...)}}
	s.srv.StartTLS()
	t.Cleanup(s.srv.Close)
	return s
}

func (s *stsServer) setPolicy(policy string) {
	s.setHandler(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/.well-known/mta-sts.txt" {
			http.NotFound(w, r)
			return
		}
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		w.Write([]byte(policy))
	})
}

func (s *stsServer) setHandler(h http.HandlerFunc) {
	s.mu.Lock()
	s.handler = h
	s.mu.Unlock()
}

// client returns a policy client that trusts roots and reaches the test
// server whatever host it asks for.
func (s *stsServer) client(roots *x509.CertPool) *http.Client {
	addr := s.srv.Listener.Addr().String()
	return NewHTTPClient(roots, func(ctx context.Context, network, _ string) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, network, addr)
	})
}

// lookupTXT returns a dnsmx TXT lookup asking srv, without a cache so
// tests see zone changes at once.
func lookupTXT(t *testing.T, srv *dnstest.Server) func(context.Context, string) ([]string, error) {
	t.Helper()
	r, err := dnsmx.NewResolver([]string{srv.Addr}, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	r.SetCacheSize(0)
	return r.LookupTXT
}

// clock is a clock tests move by hand.
type clock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *clock) Advance(d time.Duration) {
	c.mu.Lock()
	c.now = c.now.Add(d)
	c.mu.Unlock()
}
