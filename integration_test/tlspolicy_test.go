package integration_test

// Outbound TLS policy end to end, through the real binary:
//
//	client ──SMTP(+STARTTLS)──▶ mailhop ──STARTTLS──▶ MX hosts on 127.0.0.2-.7 (port P)
//	                              │   └──HTTPS──▶ mta-sts.DOMAIN = 127.0.0.1:S (policy server)
//	                              └── DNS (dnstest): MX, A, _mta-sts TXT
//
// The relay trusts the test CA through delivery.extra_roots_file and
// fetches MTA-STS policies from port S (delivery.mta_sts_port).
//
//	sts.test        MTA-STS enforce, MX listed, certificate valid   → delivered over TLS
//	stsbad.test     MTA-STS enforce, certificate from another CA     → deferred (4.7.5)
//	stsother.test   MTA-STS enforce, MX not in the policy            → deferred, never contacted
//	verified.test   [[tls_policy]] verify, certificate valid         → delivered over TLS
//	verifynotls.test [[tls_policy]] verify, no STARTTLS              → deferred (4.7.4)
//	reqtls.test     REQUIRETLS message, server offers REQUIRETLS     → delivered with REQUIRETLS
//	noreqtls.test   REQUIRETLS message, server does not              → bounced 5.7.30

import (
	"crypto/tls"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-smtp"
	"github.com/miekg/dns"

	"github.com/mailhop/mailhop/dnsmx/dnstest"
	"github.com/mailhop/mailhop/internal/testpki"
	"github.com/mailhop/mailhop/relay/admin"
	"github.com/mailhop/mailhop/relay/outbound/smtptest"
)

// policyServer serves each domain's MTA-STS policy at
// https://mta-sts.DOMAIN/.well-known/mta-sts.txt on 127.0.0.1.
func policyServer(t *testing.T, ca *testpki.CA, policies map[string]string) (port string) {
	t.Helper()
	var names []string
	for d := range policies {
		names = append(names, "mta-sts."+d)
	}
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		host, _, err := net.SplitHostPort(r.Host)
		if err != nil {
			host = r.Host // no port: the URL's default, 443
		}
		p, ok := policies[strings.TrimPrefix(host, "mta-sts.")]
		if !ok || r.URL.Path != "/.well-known/mta-sts.txt" {
			http.NotFound(w, r)
			return
		}
		w.Header().Set("Content-Type", "text/plain")
		io.WriteString(w, p)
	}))
	srv.Config.ErrorLog = log.New(io.Discard, "", 0)
	srv.TLS = ca.ServerConfig(t, names...)
	srv.StartTLS()
	t.Cleanup(srv.Close)
	_, port, _ = net.SplitHostPort(srv.Listener.Addr().String())
	return port
}

func TestTLSPolicyEndToEnd(t *testing.T) {
	t.Parallel()
	ca, other := testpki.NewCA(t), testpki.NewCA(t)
	z := dnstest.Zone{}
	mx := func(domain, ip string) {
		z[domain+"."] = append(z[domain+"."], dnstest.MX(domain, 10, "mx."+domain))
		z["mx."+domain+"."] = []dns.RR{dnstest.A("mx."+domain, ip)}
	}
	sts := func(domain string) {
		z["_mta-sts."+domain+"."] = []dns.RR{dnstest.TXT("_mta-sts."+domain, "v=STSv1; id=20260301;")}
		z["mta-sts."+domain+"."] = []dns.RR{dnstest.A("mta-sts."+domain, "127.0.0.1")}
	}
	for d, ip := range map[string]string{"sts.test": "127.0.0.2", "stsbad.test": "127.0.0.3", "stsother.test": "127.0.0.4",
		"verified.test": "127.0.0.5", "verifynotls.test": "127.0.0.6", "reqtls.test": "127.0.0.7", "noreqtls.test": "127.0.0.8"} {
		mx(d, ip)
	}
	for _, d := range []string{"sts.test", "stsbad.test", "stsother.test"} {
		sts(d)
	}
	enforce := func(mx string) string {
		return "version: STSv1\r\nmode: enforce\r\nmx: " + mx + "\r\nmax_age: 604800\r\n"
	}
	stsPort := policyServer(t, ca, map[string]string{
		"sts.test":      enforce("mx.sts.test"),
		"stsbad.test":   enforce("*.stsbad.test"),
		"stsother.test": enforce("mx.elsewhere.test"),
	})

	w := newMXWorld(t, z)
	good := w.mx("127.0.0.2", smtptest.Behaviour{Hostname: "mx.sts.test", TLS: ca.ServerConfig(t, "mx.sts.test")})
	bad := w.mx("127.0.0.3", smtptest.Behaviour{TLS: other.ServerConfig(t, "mx.stsbad.test")})
	outside := w.mx("127.0.0.4", smtptest.Behaviour{TLS: ca.ServerConfig(t, "mx.stsother.test")})
	verified := w.mx("127.0.0.5", smtptest.Behaviour{TLS: ca.ServerConfig(t, "mx.verified.test")})
	noTLS := w.mx("127.0.0.6", smtptest.Behaviour{})
	reqTLS := w.mx("127.0.0.7", smtptest.Behaviour{TLS: ca.ServerConfig(t, "mx.reqtls.test"), RequireTLS: true})
	noReqTLS := w.mx("127.0.0.8", smtptest.Behaviour{TLS: ca.ServerConfig(t, "mx.noreqtls.test")})

	delivery := fmt.Sprintf("extra_roots_file = %q\nmta_sts_port = %s\n", ca.File, stsPort)
	extra := "[[tls_policy]]\ndomains = [\"verified.test\", \"verifynotls.test\"]\nlevel = \"verify\"\n"
	r := w.start("1h", delivery, extra)
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("--- relay log ---\n%s", r.logs.String())
		}
	})

	for _, to := range []string{"a@sts.test", "b@stsbad.test", "c@stsother.test", "d@verified.test", "e@verifynotls.test"} {
		submitMail(t, r, submission{From: senderAddr, To: []string{to}}, deliveryMessage(strings.Split(to, "@")[1], to))
	}
	// REQUIRETLS is given to the relay over STARTTLS.
	for _, to := range []string{"f@reqtls.test", "g@noreqtls.test"} {
		submitRequireTLS(t, r, to, deliveryMessage("reqtls-"+strings.Split(to, "@")[1], to))
	}

	for _, c := range []struct {
		srv    *smtptest.Server
		policy string
		reqTLS bool
	}{{good, "mta-sts", false}, {verified, "verify", false}, {reqTLS, "may", true}} {
		m := waitMsgs(t, c.srv, 1, 20*time.Second)[0]
		if !m.TLS || m.MailOpts.RequireTLS != c.reqTLS {
			t.Errorf("%s: TLS %v, REQUIRETLS %v; want TLS, REQUIRETLS %v", m.To, m.TLS, m.MailOpts.RequireTLS, c.reqTLS)
		}
		if line := r.logLine("msg=attempt", "domain="+strings.Split(m.To[0], "@")[1]+" ", "code=250"); !strings.Contains(line, "tls_policy="+c.policy) || !strings.Contains(line, "tls_verified=true") {
			t.Errorf("%s: attempt log %q, want tls_policy=%s tls_verified=true", m.To, line, c.policy)
		}
	}
	for rcpt, enh := range map[string]string{"b@stsbad.test": "4.7.5", "c@stsother.test": "4.7.5", "e@verifynotls.test": "4.7.4"} {
		m := waitQueued(t, r, rcpt, rcpt+" attempted", 20*time.Second, func(m *admin.Message) bool { return m.Attempts >= 1 })
		rc := m.Recipients[0]
		if rc.State != "pending" || !strings.HasPrefix(rc.Reply, enh) {
			t.Errorf("%s: state %q reply %q, want pending with %s", rcpt, rc.State, rc.Reply, enh)
		}
	}
	for _, s := range []*smtptest.Server{bad, outside, noTLS, noReqTLS} {
		if n := len(s.Messages()); n != 0 {
			t.Errorf("%s got %d message(s) against the policy", s.Addr, n)
		}
	}
	if outside.Conns() != 0 {
		t.Errorf("the MX outside the MTA-STS policy was contacted")
	}
	if r.logLine("TLS policy not met", "domain=stsbad.test", "certificate rejected") == "" {
		t.Errorf("the rejected certificate is not logged")
	}

	// The REQUIRETLS message the next server cannot take comes back with
	// 5.7.30, itself sent without REQUIRETLS.
	report := waitMsgs(t, w.senderMX, 1, 20*time.Second)[0]
	if report.MailOpts.RequireTLS {
		t.Errorf("bounce sent with REQUIRETLS")
	}
	d := checkReport(t, report)
	checkFailed(t, reportFor(t, d, "g@noreqtls.test"), "5.7.30", "")
	if !strings.Contains(d.Human, "REQUIRETLS") {
		t.Errorf("the report does not say REQUIRETLS failed:\n%s", d.Human)
	}
	if strings.Contains(string(report.Data), "tab-led line") {
		t.Errorf("the report returns the body of a REQUIRETLS message")
	}

	// The policies are cached under data_dir for the next start.
	if _, err := os.Stat(filepath.Join(r.dir, "data", "mta-sts", "sts.test.json")); err != nil {
		t.Errorf("MTA-STS policy not cached: %v", err)
	}
}

// submitRequireTLS submits one message with MAIL FROM ... REQUIRETLS over
// STARTTLS on the relay listener.
func submitRequireTLS(t *testing.T, r *relay, to string, data []byte) {
	t.Helper()
	c, err := smtp.DialStartTLS(r.Relay, &tls.Config{InsecureSkipVerify: true})
	if err != nil {
		t.Fatalf("STARTTLS: %v", err)
	}
	defer c.Close()
	c.CommandTimeout, c.SubmissionTimeout = 30*time.Second, 30*time.Second
	if err := c.Hello("client.test"); err != nil {
		t.Fatal(err)
	}
	if ok, _ := c.Extension("REQUIRETLS"); !ok {
		t.Fatalf("the relay does not offer REQUIRETLS over TLS")
	}
	if err := sendMailOn(c, submission{From: senderAddr, To: []string{to}, MailOpts: &smtp.MailOptions{RequireTLS: true}}, data); err != nil {
		t.Fatalf("submitting with REQUIRETLS: %v", err)
	}
	c.Quit()
}
