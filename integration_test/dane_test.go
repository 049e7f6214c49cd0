package integration_test

// DANE (RFC 7672) end to end, through the real binary:
//
//	client ──SMTP──▶ mailhop ──STARTTLS──▶ MX hosts on 127.0.0.2-.4 (port P)
//	                    └── DNS (dnstest, AD bit set): MX, A, TLSA _P._tcp.MXHOST
//
// The relay has delivery.dnssec_trusted_resolver = true and no extra roots:
// no MX certificate here would pass a PKIX check, so every delivery below
// is DANE's doing.
//
//	daneee.test   DANE-EE 3 1 1 (SPKI SHA-256) of the MX's own key   → delivered over TLS
//	danebad.test  DANE-EE 3 1 1 of some other key                     → deferred (4.7.5), never delivered
//	daneta.test   DANE-TA 2 0 1 (certificate SHA-256) of the MX's CA  → delivered over TLS

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"fmt"
	"math/big"
	"strings"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/mailhop/mailhop/dnsmx/dnstest"
	"github.com/mailhop/mailhop/relay/admin"
	"github.com/mailhop/mailhop/relay/outbound/smtptest"
)

// daneCA is a CA that no one trusts but the TLSA records.
type daneCA struct {
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
}

func newDANECA(t *testing.T) *daneCA {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "DANE test CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, _ := x509.ParseCertificate(der)
	return &daneCA{cert: cert, key: key}
}

// issue returns a certificate for name, presented with the CA certificate
// after it (DANE-TA needs the anchor in the chain the server sends).
func (ca *daneCA) issue(t *testing.T, name string) tls.Certificate {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(time.Now().UnixNano()), Subject: pkix.Name{CommonName: name},
		DNSNames: []string{name}, NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, &key.PublicKey, ca.key)
	if err != nil {
		t.Fatal(err)
	}
	leaf, _ := x509.ParseCertificate(der)
	return tls.Certificate{Certificate: [][]byte{der, ca.cert.Raw}, PrivateKey: key, Leaf: leaf}
}

// tlsaRecord is "_port._tcp.host TLSA usage selector mtype" for cert.
func tlsaRecord(t *testing.T, port int, host string, usage, selector, mtype uint8, cert *x509.Certificate) dns.RR {
	t.Helper()
	data, err := dns.CertificateToDANE(selector, mtype, cert)
	if err != nil {
		t.Fatal(err)
	}
	return dnstest.RR(fmt.Sprintf("_%d._tcp.%s. 300 IN TLSA %d %d %d %s", port, host, usage, selector, mtype, data))
}

func TestDANEEndToEnd(t *testing.T) {
	t.Parallel()
	ca, stranger := newDANECA(t), newDANECA(t)
	z := dnstest.Zone{}
	for d, ip := range map[string]string{"daneee.test": "127.0.0.2", "danebad.test": "127.0.0.3", "daneta.test": "127.0.0.4"} {
		z[d+"."] = []dns.RR{dnstest.MX(d, 10, "mx."+d)}
		z["mx."+d+"."] = []dns.RR{dnstest.A("mx."+d, ip)}
	}
	w := newMXWorld(t, z)
	w.dns.SetAD(true)

	eeCert := ca.issue(t, "mx.daneee.test")
	taCert := ca.issue(t, "mx.daneta.test")
	ee := w.mx("127.0.0.2", smtptest.Behaviour{TLS: &tls.Config{Certificates: []tls.Certificate{eeCert}}})
	bad := w.mx("127.0.0.3", smtptest.Behaviour{TLS: &tls.Config{Certificates: []tls.Certificate{ca.issue(t, "mx.danebad.test")}}})
	ta := w.mx("127.0.0.4", smtptest.Behaviour{TLS: &tls.Config{Certificates: []tls.Certificate{taCert}}})
	w.dns.Set(fmt.Sprintf("_%d._tcp.mx.daneee.test.", w.port), tlsaRecord(t, w.port, "mx.daneee.test", 3, 1, 1, eeCert.Leaf))
	w.dns.Set(fmt.Sprintf("_%d._tcp.mx.danebad.test.", w.port),
		tlsaRecord(t, w.port, "mx.danebad.test", 3, 1, 1, stranger.issue(t, "mx.danebad.test").Leaf))
	w.dns.Set(fmt.Sprintf("_%d._tcp.mx.daneta.test.", w.port), tlsaRecord(t, w.port, "mx.daneta.test", 2, 0, 1, ca.cert))

	r := w.start("1h", "dnssec_trusted_resolver = true\n", "")
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("--- relay log ---\n%s", r.logs.String())
		}
	})
	for _, to := range []string{"a@daneee.test", "b@danebad.test", "c@daneta.test"} {
		submitMail(t, r, submission{From: senderAddr, To: []string{to}}, deliveryMessage("dane-"+to, to))
	}

	for _, srv := range []*smtptest.Server{ee, ta} {
		m := waitMsgs(t, srv, 1, 20*time.Second)[0]
		domain := strings.Split(m.To[0], "@")[1]
		if !m.TLS {
			t.Errorf("%s: delivered without TLS", m.To[0])
		}
		line := r.logLine("msg=attempt", "domain="+domain+" ", "code=250")
		if !strings.Contains(line, "tls_policy=dane") || !strings.Contains(line, "tls_verified=true") {
			t.Errorf("%s: attempt log %q, want tls_policy=dane tls_verified=true", domain, line)
		}
	}

	// The TLSA record matches no key of the server: never delivered, not
	// even in plain text; deferred with the reason logged.
	m := waitQueued(t, r, "b@danebad.test", "danebad.test attempted", 20*time.Second, func(m *admin.Message) bool { return m.Attempts >= 1 })
	if rc := m.Recipients[0]; rc.State != "pending" || !strings.HasPrefix(rc.Reply, "4.7.5") {
		t.Errorf("b@danebad.test: state %q reply %q, want pending with 4.7.5", rc.State, rc.Reply)
	}
	if n := len(bad.Messages()); n != 0 {
		t.Errorf("the MX whose certificate does not match its TLSA record got %d message(s)", n)
	}
	line := r.logLine("TLS policy not met", "domain=danebad.test")
	if !strings.Contains(line, "tls_policy=dane") || !strings.Contains(line, "no TLSA record matches") {
		t.Errorf("the TLSA mismatch is not logged as a DANE failure: %q", line)
	}
	t.Logf("mismatch logged as: %s", line)
}
