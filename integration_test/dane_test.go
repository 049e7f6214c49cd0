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
	"crypto/tls"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/mailhop/mailhop/dnsmx/dnstest"
	"github.com/mailhop/mailhop/internal/testpki"
	"github.com/mailhop/mailhop/relay/admin"
	"github.com/mailhop/mailhop/relay/outbound/smtptest"
)

func TestDANEEndToEnd(t *testing.T) {
	t.Parallel()
	ca, stranger := testpki.NewCA(t), testpki.NewCA(t)
	z := dnstest.Zone{}
	for d, ip := range map[string]string{"daneee.test": "127.0.0.2", "danebad.test": "127.0.0.3", "daneta.test": "127.0.0.4"} {
		z[d+"."] = []dns.RR{dnstest.MX(d, 10, "mx."+d)}
		z["mx."+d+"."] = []dns.RR{dnstest.A("mx."+d, ip)}
	}
	w := newMXWorld(t, z)
	w.dns.SetAD(true)

	eeCert := ca.Issue(t, "mx.daneee.test")
	taCert := ca.Issue(t, "mx.daneta.test")
	ee := w.mx("127.0.0.2", smtptest.Behaviour{TLS: &tls.Config{Certificates: []tls.Certificate{eeCert}}})
	bad := w.mx("127.0.0.3", smtptest.Behaviour{TLS: &tls.Config{Certificates: []tls.Certificate{ca.Issue(t, "mx.danebad.test")}}})
	ta := w.mx("127.0.0.4", smtptest.Behaviour{TLS: &tls.Config{Certificates: []tls.Certificate{taCert}}})
	w.dns.Set(fmt.Sprintf("_%d._tcp.mx.daneee.test.", w.port), testpki.TLSA(t, w.port, "mx.daneee.test", 3, 1, 1, eeCert.Leaf))
	w.dns.Set(fmt.Sprintf("_%d._tcp.mx.danebad.test.", w.port),
		testpki.TLSA(t, w.port, "mx.danebad.test", 3, 1, 1, stranger.Issue(t, "mx.danebad.test").Leaf))
	w.dns.Set(fmt.Sprintf("_%d._tcp.mx.daneta.test.", w.port), testpki.TLSA(t, w.port, "mx.daneta.test", 2, 0, 1, ca.Cert))

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
