package outbound

import (
	"crypto/tls"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/mailhop/mailhop/dnsmx/dnstest"
	"github.com/mailhop/mailhop/internal/testpki"
	"github.com/mailhop/mailhop/queue"
	"github.com/mailhop/mailhop/relay/tlsrpt"
)

// serverTLS is a server configuration presenting c.
func serverTLS(c tls.Certificate) *tls.Config {
	return &tls.Config{Certificates: []tls.Certificate{c}}
}

// stsServer serves MTA-STS policies over HTTPS on 127.0.0.1, one per
// mta-sts.DOMAIN host name, with a certificate from ca for all of them.
type stsServer struct {
	srv     *httptest.Server
	port    int
	fetches atomic.Int64

	mu       sync.Mutex
	policies map[string]string // domain → policy text ("" → 404)
}

func newSTSServer(t *testing.T, ca *testpki.CA, policies map[string]string) *stsServer {
	t.Helper()
	s := &stsServer{policies: policies}
	var names []string
	for d := range policies {
		names = append(names, "mta-sts."+d)
	}
	s.srv = httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		s.fetches.Add(1)
		host, _, err := net.SplitHostPort(r.Host)
		if err != nil {
			host = r.Host
		}
		s.mu.Lock()
		p := s.policies[strings.TrimPrefix(host, "mta-sts.")]
		s.mu.Unlock()
		if r.URL.Path != "/.well-known/mta-sts.txt" || p == "" {
			http.NotFound(w, r)
			return
		}
		w.Header().Set("Content-Type", "text/plain")
		io.WriteString(w, p)
	}))
	s.srv.Config.ErrorLog = log.New(io.Discard, "", 0)
	s.srv.TLS = serverTLS(ca.Issue(t, names...))
	s.srv.StartTLS()
	t.Cleanup(s.srv.Close)
	_, p, _ := net.SplitHostPort(s.srv.Listener.Addr().String())
	s.port, _ = strconv.Atoi(p)
	return s
}

// publish adds the MTA-STS TXT record of domain (id) and the address of
// its mta-sts host to the harness's DNS.
func (h *harness) publishSTS(domain, id string) {
	h.dns.Add("_mta-sts."+domain+".", dnstest.TXT("_mta-sts."+domain, "v=STSv1; id="+id+";"))
	h.dns.Add("mta-sts."+domain+".", dnstest.A("mta-sts."+domain, "127.0.0.1"))
}

func stsPolicy(mode string, mx ...string) string {
	p := "version: STSv1\nmode: " + mode + "\n"
	for _, m := range mx {
		p += "mx: " + m + "\n"
	}
	return p + "max_age: 86400\n"
}

// outcome is what became of the one recipient of a message.
type outcome struct {
	state queue.RcptState
	reply string
	gone  bool // the message left the queue
}

func (h *harness) outcome(id string) outcome {
	env := h.envelope(id)
	if env == nil {
		return outcome{gone: true, state: queue.Delivered}
	}
	r := env.Recipients[0]
	return outcome{state: r.State, reply: r.Reply}
}

// deferredWith fails unless id's recipient is pending with a reply
// starting with enh.
func (h *harness) deferredWith(id, enh string) {
	h.t.Helper()
	o := h.outcome(id)
	if o.state != queue.Pending || !strings.HasPrefix(o.reply, enh) {
		h.t.Errorf("message %s: state %v reply %q, want pending with %s", id, o.state, o.reply, enh)
	}
}

// lastAttempt returns the last "attempt" log line for domain.
func (h *harness) lastAttempt(domain string) string {
	line := ""
	for _, l := range strings.Split(h.logs.String(), "\n") {
		if strings.Contains(l, "msg=attempt") && strings.Contains(l, "domain="+domain+" ") {
			line = l
		}
	}
	return line
}

// counts returns the TLS counts of domain with policy type typ.
func (h *harness) counts(domain, typ string) tlsrpt.Counts {
	for _, c := range h.agent.TLSResults(false) {
		if c.PolicyDomain == domain && c.PolicyType == typ {
			return c
		}
	}
	return tlsrpt.Counts{}
}
