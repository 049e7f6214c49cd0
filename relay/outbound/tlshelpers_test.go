package outbound

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"io"
	"log"
	"math/big"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/mailhop/mailhop/dnsmx/dnstest"
	"github.com/mailhop/mailhop/queue"
)

// testCA is a certificate authority made for one test.
type testCA struct {
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
	file string // the CA certificate as PEM, for extra_roots_file
}

var serial atomic.Int64

func newTestCA(t *testing.T) *testCA {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(serial.Add(1)), Subject: pkix.Name{CommonName: "mailhop test CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, _ := x509.ParseCertificate(der)
	file := filepath.Join(t.TempDir(), "ca.pem")
	if err := os.WriteFile(file, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	return &testCA{cert: cert, key: key, file: file}
}

// issue returns a server certificate for names, presented with the CA
// certificate after it (as DANE-TA needs).
func (ca *testCA) issue(t *testing.T, names ...string) tls.Certificate {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(serial.Add(1)), Subject: pkix.Name{CommonName: names[0]}, DNSNames: names,
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, &key.PublicKey, ca.key)
	if err != nil {
		t.Fatal(err)
	}
	leaf, _ := x509.ParseCertificate(der)
	return tls.Certificate{Certificate: [][]byte{der, ca.cert.Raw}, PrivateKey: key, Leaf: leaf}
}

// serverTLS is a server configuration presenting c.
func serverTLS(c tls.Certificate) *tls.Config {
	return &tls.Config{Certificates: []tls.Certificate{c}}
}

// tlsaRR is the TLSA record "usage selector mtype" for cert at
// _port._tcp.host.
func tlsaRR(t *testing.T, port int, host string, usage, selector, mtype uint8, cert *x509.Certificate) dns.RR {
	t.Helper()
	data, err := dns.CertificateToDANE(selector, mtype, cert)
	if err != nil {
		t.Fatal(err)
	}
	return dnstest.RR(fmt.Sprintf("_%d._tcp.%s. 300 IN TLSA %d %d %d %s", port, host, usage, selector, mtype, data))
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

func newSTSServer(t *testing.T, ca *testCA, policies map[string]string) *stsServer {
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
	s.srv.TLS = serverTLS(ca.issue(t, names...))
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
func (h *harness) counts(domain, typ string) TLSCounts {
	for _, c := range h.agent.TLSResults(false) {
		if c.PolicyDomain == domain && c.PolicyType == typ {
			return c
		}
	}
	return TLSCounts{}
}
