package outbound

import (
	"bufio"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/emersion/go-smtp"
	"github.com/miekg/dns"

	"github.com/mailhop/mailhop/dnsmx/dnstest"
	"github.com/mailhop/mailhop/internal/testpki"
	"github.com/mailhop/mailhop/queue"
	"github.com/mailhop/mailhop/relay/config"
	"github.com/mailhop/mailhop/relay/outbound/smtptest"
)

// tlsWorld is a harness with four MX hosts that differ in TLS:
//
//	good.test       127.0.0.2  certificate from the trusted CA for its name
//	untrusted.test  127.0.0.3  certificate for its name from an unknown CA
//	wrongname.test  127.0.0.4  certificate from the trusted CA for another name
//	nostarttls.test 127.0.0.5  no STARTTLS
type tlsWorld struct {
	*harness
	ca                                *testpki.CA
	good, untrusted, wrongname, noTLS *smtptest.Server
}

func newTLSWorld(t *testing.T) *tlsWorld {
	ca, other := testpki.NewCA(t), testpki.NewCA(t)
	w := &tlsWorld{ca: ca}
	w.harness = newHarness(t, smtptest.Behaviour{TLS: serverTLS(ca.Issue(t, "mx.good.test"))},
		zone("good.test", "127.0.0.2", "untrusted.test", "127.0.0.3", "wrongname.test", "127.0.0.4", "nostarttls.test", "127.0.0.5"))
	w.good = w.first
	w.untrusted = w.server("127.0.0.3", smtptest.Behaviour{TLS: serverTLS(other.Issue(t, "mx.untrusted.test"))})
	w.wrongname = w.server("127.0.0.4", smtptest.Behaviour{TLS: serverTLS(ca.Issue(t, "elsewhere.test"))})
	w.noTLS = w.server("127.0.0.5", smtptest.Behaviour{})
	w.cfg.Delivery.ExtraRootsFile = ca.File
	return w
}

// Each level against a server with a good certificate, an untrusted one, one
// for another name, and none at all.
func TestTLSPolicy_Levels(t *testing.T) {
	t.Parallel()
	const (
		plain      = "plain"
		tlsOK      = "tls verified"
		tlsUnverif = "tls unverified"
	)
	type want struct{ good, untrusted, wrongname, noTLS string } // a mode, or an enhanced code: deferred
	for _, tc := range []struct {
		level string
		want  want
	}{
		{config.TLSNone, want{plain, plain, plain, plain}},
		{config.TLSMay, want{tlsOK, tlsUnverif, tlsUnverif, plain}},
		{config.TLSEncrypt, want{tlsOK, tlsUnverif, tlsUnverif, "4.7.4"}},
		{config.TLSVerify, want{tlsOK, "4.7.5", "4.7.5", "4.7.4"}},
	} {
		t.Run(tc.level, func(t *testing.T) {
			t.Parallel()
			w := newTLSWorld(t)
			w.cfg.Delivery.TLSPolicy = tc.level
			w.start()
			for _, c := range []struct {
				domain string
				srv    *smtptest.Server
				want   string
			}{
				{"good.test", w.good, tc.want.good},
				{"untrusted.test", w.untrusted, tc.want.untrusted},
				{"wrongname.test", w.wrongname, tc.want.wrongname},
				{"nostarttls.test", w.noTLS, tc.want.noTLS},
			} {
				id := w.submit(testBody, []string{"rcpt@" + c.domain})
				w.waitRecords(id, 1)
				line := w.lastAttempt(c.domain)
				if !strings.Contains(line, "tls_policy="+tc.level) {
					t.Errorf("%s: attempt log lacks tls_policy=%s: %s", c.domain, tc.level, line)
				}
				msgs := c.srv.Messages()
				switch c.want {
				case plain, tlsOK, tlsUnverif:
					if len(msgs) != 1 || w.outcome(id).state != queue.Delivered {
						t.Errorf("%s: %d messages, outcome %+v; want delivered", c.domain, len(msgs), w.outcome(id))
						continue
					}
					if gotTLS := msgs[0].TLS; gotTLS != (c.want != plain) {
						t.Errorf("%s: delivered with TLS = %v, want %s", c.domain, gotTLS, c.want)
					}
					if c.want != plain && !strings.Contains(line, "tls_verified="+map[bool]string{true: "true", false: "false"}[c.want == tlsOK]) {
						t.Errorf("%s: want %s: %s", c.domain, c.want, line)
					}
				default:
					if len(msgs) != 0 {
						t.Errorf("%s: delivered %d messages, want none (never in plain text)", c.domain, len(msgs))
					}
					w.deferredWith(id, c.want)
				}
			}
			if tc.level == config.TLSNone {
				if n := w.agent.Stats().TLSConns; n != 0 {
					t.Errorf("level none made %d TLS connections", n)
				}
			}
			if tc.level == config.TLSVerify {
				for domain, result := range map[string]string{
					"untrusted.test":  "certificate-not-trusted",
					"wrongname.test":  "certificate-host-mismatch",
					"nostarttls.test": "starttls-not-supported",
				} {
					c := w.counts(domain, policyNone)
					if c.Failure == 0 || len(c.Failures) == 0 || c.Failures[0].ResultType != result {
						t.Errorf("%s: TLS counts %+v, want a %s failure", domain, c, result)
					}
				}
				if c := w.counts("good.test", policyNone); c.Success != 1 || c.Failure != 0 {
					t.Errorf("good.test: TLS counts %+v", c)
				}
			}
		})
	}
}

// [[tls_policy]] entries override delivery.tls_policy per domain.
func TestTLSPolicy_PerDomainOverride(t *testing.T) {
	t.Parallel()
	w := newTLSWorld(t)
	w.cfg.Delivery.TLSPolicy = config.TLSVerify
	w.cfg.TLSPolicies = []config.TLSPolicy{
		{Domains: []string{"untrusted.test"}, Level: config.TLSEncrypt},
		{Domains: []string{"good.test"}, Level: config.TLSNone},
	}
	w.start()
	id := w.submit(testBody, []string{"a@untrusted.test"})
	w.waitRecords(id, 1)
	if m := w.untrusted.Messages(); len(m) != 1 || !m[0].TLS {
		t.Errorf("encrypt override: %+v", m)
	}
	id = w.submit(testBody, []string{"a@good.test"})
	w.waitRecords(id, 1)
	if m := w.good.Messages(); len(m) != 1 || m[0].TLS {
		t.Errorf("none override: %+v", m)
	}
	id = w.submit(testBody, []string{"a@wrongname.test"})
	w.waitRecords(id, 1)
	w.deferredWith(id, "4.7.5")
}

// TLS-Required: No (RFC 8689 §5, carried by TLS reports) makes delivery
// opportunistic whatever the policy says, and the session is not counted.
func TestTLSPolicy_TLSRequiredNo(t *testing.T) {
	t.Parallel()
	w := newTLSWorld(t)
	w.cfg.Delivery.TLSPolicy = config.TLSVerify
	w.start()
	id := w.submit(testBody, []string{"a@untrusted.test"})
	w.waitRecords(id, 1)
	w.deferredWith(id, "4.7.5")
	id = w.submit("TLS-Required: No\r\n"+testBody, []string{"b@untrusted.test"})
	w.waitRecords(id, 1)
	if m := w.untrusted.Messages(); len(m) != 1 || m[0].To[0] != "b@untrusted.test" {
		t.Fatalf("TLS-Required: No message not delivered despite the verify level: %+v", m)
	}
	res := w.agent.TLSResults(false)
	total := 0
	for _, r := range res {
		total += int(r.Success + r.Failure)
	}
	if total != 1 {
		t.Errorf("TLS report counts %+v: want only the first (refused) session counted", res)
	}
}

// A route's tls = "starttls" is the verify level against the smarthost's
// name; extra_roots_file is trusted there too.
func TestTLSPolicy_RouteStartTLSVerifiesWithExtraRoots(t *testing.T) {
	t.Parallel()
	ca := testpki.NewCA(t)
	z := dnstest.Zone{"smart.test.": {dnstest.A("smart.test", "127.0.0.2")}}
	h := newHarness(t, smtptest.Behaviour{TLS: serverTLS(ca.Issue(t, "smart.test")), Users: map[string]string{"app": "s3cret"}}, z)
	r := routeTo(h, []string{"smart.test"}, "starttls", "")
	h.cfg.Route = append(h.cfg.Route, r)
	h.cfg.Delivery.ExtraRootsFile = ca.File
	h.start()
	id := h.submit(testBody, []string{"x@routed.test"})
	h.waitRecords(id, 1)
	if m := h.first.Messages(); len(m) != 1 || !m[0].TLS {
		t.Fatalf("route delivery: %+v", m)
	}
	if line := h.lastAttempt("routed.test"); !strings.Contains(line, "tls_policy=route") || !strings.Contains(line, "tls_verified=true") {
		t.Errorf("attempt log: %s", line)
	}
}

// Sessions to a route's smarthosts are not counted for TLS reports: a
// smarthost is not the recipient domain's MX (RFC 8460 §3), and a report
// would hand the domain our upstreams' names and addresses. Here the first
// smarthost's certificate is refused and the second takes the mail.
func TestTLSPolicy_RouteSessionsNotCountedForTLSReports(t *testing.T) {
	t.Parallel()
	ca, other := testpki.NewCA(t), testpki.NewCA(t)
	z := dnstest.Zone{
		"bad.test.":  {dnstest.A("bad.test", "127.0.0.2")},
		"good.test.": {dnstest.A("good.test", "127.0.0.3")},
	}
	h := newHarness(t, smtptest.Behaviour{TLS: serverTLS(other.Issue(t, "bad.test")), Users: map[string]string{"app": "s3cret"}}, z)
	good := h.server("127.0.0.3", smtptest.Behaviour{TLS: serverTLS(ca.Issue(t, "good.test")), Users: map[string]string{"app": "s3cret"}})
	h.cfg.Route = append(h.cfg.Route, routeTo(h, []string{"bad.test", "good.test"}, "starttls", ""))
	h.cfg.Delivery.ExtraRootsFile = ca.File
	h.start()
	id := h.submit(testBody, []string{"x@routed.test"})
	h.waitRecords(id, 1)
	if m := good.Messages(); len(m) != 1 || !m[0].TLS {
		t.Fatalf("second smarthost got %+v, want the message over TLS", m)
	}
	if !strings.Contains(h.logs.String(), "certificate rejected") {
		t.Fatalf("the first smarthost's certificate was not refused:\n%s", h.logs.String())
	}
	if res := h.agent.TLSResults(false); len(res) != 0 {
		t.Errorf("TLS report counts %+v, want none for sessions to smarthosts", res)
	}
}

// MTA-STS enforce and testing against matching and non-matching MX hosts,
// valid and invalid certificates, no STARTTLS, and a policy fetch failure;
// one HTTPS server (certificate from the trusted CA) serves every policy.
func TestMTASTS_Modes(t *testing.T) {
	t.Parallel()
	ca, other := testpki.NewCA(t), testpki.NewCA(t)
	h := newHarness(t, smtptest.Behaviour{TLS: serverTLS(ca.Issue(t, "mx.enforce.test"))}, zone(
		"enforce.test", "127.0.0.2",
		"mismatch.test", "127.0.0.3",
		"badcert.test", "127.0.0.4",
		"testing.test", "127.0.0.5",
		"nostarttls.test", "127.0.0.6",
		"fetchfails.test", "127.0.0.7",
	))
	mismatch := h.server("127.0.0.3", smtptest.Behaviour{TLS: serverTLS(ca.Issue(t, "mx.mismatch.test"))})
	badcert := h.server("127.0.0.4", smtptest.Behaviour{TLS: serverTLS(other.Issue(t, "mx.badcert.test"))})
	testing_ := h.server("127.0.0.5", smtptest.Behaviour{TLS: serverTLS(other.Issue(t, "mx.testing.test"))})
	noTLS := h.server("127.0.0.6", smtptest.Behaviour{})
	fetchFails := h.server("127.0.0.7", smtptest.Behaviour{TLS: serverTLS(other.Issue(t, "mx.fetchfails.test"))})
	sts := newSTSServer(t, ca, map[string]string{
		"enforce.test":    stsPolicy("enforce", "mx.enforce.test"),
		"mismatch.test":   stsPolicy("enforce", "mx.elsewhere.test"),
		"badcert.test":    stsPolicy("enforce", "*.badcert.test"),
		"testing.test":    stsPolicy("testing", "mx.testing.test"),
		"nostarttls.test": stsPolicy("enforce", "mx.nostarttls.test"),
		"fetchfails.test": "", // 404
	})
	for _, d := range []string{"enforce.test", "mismatch.test", "badcert.test", "testing.test", "nostarttls.test", "fetchfails.test"} {
		h.publishSTS(d, "1")
	}
	h.cfg.DataDir = t.TempDir()
	h.cfg.Delivery.ExtraRootsFile = ca.File
	h.cfg.Delivery.MTASTSPort = sts.port
	h.start()

	send := func(domain string) string {
		id := h.submit(testBody, []string{"rcpt@" + domain})
		h.waitRecords(id, 1)
		return id
	}
	// enforce, matching MX, valid certificate: delivered, verified.
	send("enforce.test")
	if m := h.first.Messages(); len(m) != 1 || !m[0].TLS {
		t.Errorf("enforce.test: %+v", m)
	}
	if line := h.lastAttempt("enforce.test"); !strings.Contains(line, "tls_policy=mta-sts") || !strings.Contains(line, "tls_verified=true") {
		t.Errorf("enforce.test attempt: %s", line)
	}
	if c := h.counts("enforce.test", policySTS); c.Success != 1 || len(c.PolicyString) == 0 || c.MXHosts[0] != "mx.enforce.test" {
		t.Errorf("enforce.test counts: %+v", c)
	}
	// enforce, MX not in the policy: deferred without connecting.
	id := send("mismatch.test")
	h.deferredWith(id, "4.7.5")
	if n := mismatch.Conns(); n != 0 {
		t.Errorf("mismatch.test: %d connections to an MX outside the policy", n)
	}
	if !strings.Contains(h.logs.String(), "does not match the MTA-STS policy of mismatch.test") {
		t.Error("mismatch not logged")
	}
	if line := h.lastAttempt("mismatch.test"); !strings.Contains(line, "tls_policy=mta-sts") {
		t.Errorf("mismatch.test attempt does not say MTA-STS decided: %s", line)
	}
	// enforce, certificate from an unknown CA: deferred.
	id = send("badcert.test")
	h.deferredWith(id, "4.7.5")
	if len(badcert.Messages()) != 0 {
		t.Error("badcert.test: delivered despite an invalid certificate")
	}
	// The report's mx-host for an MTA-STS policy is the policy's pattern
	// (RFC 8460 §4.4); the host is in the failure details.
	if c := h.counts("badcert.test", policySTS); len(c.MXHosts) != 1 || c.MXHosts[0] != "*.badcert.test" ||
		c.Failure != 1 || c.Failures[0].ReceivingMX != "mx.badcert.test" {
		t.Errorf("badcert.test counts: %+v", c)
	}
	// enforce, no STARTTLS: deferred.
	id = send("nostarttls.test")
	h.deferredWith(id, "4.7.4")
	if len(noTLS.Messages()) != 0 {
		t.Error("nostarttls.test: delivered in plain text")
	}
	// testing, invalid certificate: delivered, logged and counted.
	send("testing.test")
	if m := testing_.Messages(); len(m) != 1 || !m[0].TLS {
		t.Errorf("testing.test: %+v", m)
	}
	if !strings.Contains(h.logs.String(), "mta-sts testing: certificate not valid") {
		t.Error("testing-mode failure not logged")
	}
	if c := h.counts("testing.test", policySTS); c.Failure != 1 || c.Failures[0].ResultType != "certificate-not-trusted" {
		t.Errorf("testing.test counts: %+v", c)
	}
	// TXT record but the policy cannot be fetched, nothing cached: as if
	// there were no policy (RFC 8461 §5), opportunistic delivery.
	send("fetchfails.test")
	if m := fetchFails.Messages(); len(m) != 1 {
		t.Errorf("fetchfails.test: %+v", m)
	}
	if line := h.lastAttempt("fetchfails.test"); !strings.Contains(line, "tls_policy=may") {
		t.Errorf("fetchfails.test attempt: %s", line)
	}
	// One session, counted once (RFC 8460 §4): as the fetch error, not
	// also as a no-policy-found success.
	if c := h.counts("fetchfails.test", policySTS); c.Failure != 1 || c.Failures[0].ResultType != "sts-policy-fetch-error" {
		t.Errorf("fetchfails.test sts counts: %+v", c)
	}
	if c := h.counts("fetchfails.test", policyNone); c.Success+c.Failure != 0 {
		t.Errorf("fetchfails.test counted again as %s: %+v", policyNone, c)
	}
	if sts.fetches.Load() < 6 {
		t.Errorf("%d policy fetches", sts.fetches.Load())
	}
}

// An MX host outside a testing-mode policy is one failed session for the
// TLS report (validation-failure), even when its certificate is valid and
// the mail goes through: not also a success (RFC 8460 §4: each session is
// counted once).
func TestMTASTS_TestingMismatchCountedOnce(t *testing.T) {
	t.Parallel()
	ca := testpki.NewCA(t)
	h := newHarness(t, smtptest.Behaviour{TLS: serverTLS(ca.Issue(t, "mx.testmis.test"))}, zone("testmis.test", "127.0.0.2"))
	sts := newSTSServer(t, ca, map[string]string{"testmis.test": stsPolicy("testing", "mx.elsewhere.test")})
	h.publishSTS("testmis.test", "1")
	h.cfg.DataDir = t.TempDir()
	h.cfg.Delivery.ExtraRootsFile = ca.File
	h.cfg.Delivery.MTASTSPort = sts.port
	h.start()

	id := h.submit(testBody, []string{"rcpt@testmis.test"})
	h.waitRecords(id, 1)
	if m := h.first.Messages(); len(m) != 1 || !m[0].TLS {
		t.Fatalf("testmis.test: %+v", m)
	}
	c := h.counts("testmis.test", policySTS)
	if c.Success != 0 || c.Failure != 1 || len(c.Failures) != 1 || c.Failures[0].ResultType != "validation-failure" {
		t.Errorf("testmis.test counts: %+v, want one validation-failure and no success", c)
	}
}

// A policy that cannot be had is counted under the RFC 8460 §4.3.2.2
// result type that says why: a policy file that is not valid is
// sts-policy-invalid, a policy server whose certificate does not verify
// sts-webpki-invalid (both were sts-policy-fetch-error).
func TestMTASTS_FetchFailureResultTypes(t *testing.T) {
	t.Parallel()
	for _, c := range []struct {
		name, policy string
		trusted      bool // the policy server's CA is in extra_roots_file
		want         string
	}{
		{"invalid", "mode: enforce\nmx: mx.elsewhere.test\nmax_age: 86400\n", true, "sts-policy-invalid"},
		{"webpki", stsPolicy("enforce", "mx.elsewhere.test"), false, "sts-webpki-invalid"},
		{"notfound", "", true, "sts-policy-fetch-error"},
	} {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			ca, other := testpki.NewCA(t), testpki.NewCA(t)
			h := newHarness(t, smtptest.Behaviour{TLS: serverTLS(ca.Issue(t, "mx.stsfail.test"))}, zone("stsfail.test", "127.0.0.2"))
			sts := newSTSServer(t, ca, map[string]string{"stsfail.test": c.policy})
			h.publishSTS("stsfail.test", "1")
			h.cfg.DataDir = t.TempDir()
			h.cfg.Delivery.ExtraRootsFile = other.File
			if c.trusted {
				h.cfg.Delivery.ExtraRootsFile = ca.File
			}
			h.cfg.Delivery.MTASTSPort = sts.port
			h.start()

			id := h.submit(testBody, []string{"rcpt@stsfail.test"})
			h.waitRecords(id, 1)
			if m := h.first.Messages(); len(m) != 1 {
				t.Fatalf("not delivered as without a policy: %+v", m)
			}
			got := h.counts("stsfail.test", policySTS)
			if got.Failure != 1 || len(got.Failures) != 1 || got.Failures[0].ResultType != c.want {
				t.Errorf("counts: %+v, want one %s", got, c.want)
			}
		})
	}
}

// The policy cache is on disk: a new agent (new Fetcher, same data_dir)
// applies the cached enforce policy while the HTTPS server is down.
func TestMTASTS_CacheSurvivesRestart(t *testing.T) {
	t.Parallel()
	ca := testpki.NewCA(t)
	h := newHarness(t, smtptest.Behaviour{TLS: serverTLS(ca.Issue(t, "mx.example.test"))}, zone("example.test", "127.0.0.2"))
	evil := h.server("127.0.0.3", smtptest.Behaviour{})
	sts := newSTSServer(t, ca, map[string]string{"example.test": stsPolicy("enforce", "mx.example.test")})
	h.publishSTS("example.test", "7")
	h.cfg.DataDir = t.TempDir()
	h.cfg.Delivery.ExtraRootsFile = ca.File
	h.cfg.Delivery.MTASTSPort = sts.port
	h.start()
	id := h.submit(testBody, []string{"a@example.test"})
	h.waitRecords(id, 1)
	if len(h.first.Messages()) != 1 {
		t.Fatalf("first delivery failed:\n%s", h.logs.String())
	}
	if _, err := os.Stat(filepath.Join(h.cfg.DataDir, "mta-sts", "example.test.json")); err != nil {
		t.Fatalf("policy not cached on disk: %v", err)
	}

	// Restart with the policy server gone and the MX record pointing
	// elsewhere (an attacker's plain-text server).
	h.stop()
	sts.srv.Close()
	h.dns.Set("example.test.", dnstest.MX("example.test", 10, "mx.evil.test"))
	h.dns.Set("mx.evil.test.", dnstest.A("mx.evil.test", "127.0.0.3"))
	h.start()
	id = h.submit(testBody, []string{"b@example.test"})
	h.waitRecords(id, 1)
	h.deferredWith(id, "4.7.5")
	if evil.Conns() != 0 {
		t.Errorf("the MX outside the cached policy got %d connections", evil.Conns())
	}
}

// DANE-EE and DANE-TA, matching and not; a DANE host without STARTTLS; a
// failed TLSA lookup; TLSA records none of which is usable.
func TestDANE(t *testing.T) {
	t.Parallel()
	ca, other := testpki.NewCA(t), testpki.NewCA(t)
	eeCert := other.Issue(t, "not-the-mx-name.test") // DANE-EE checks neither name nor issuer
	h := newHarness(t, smtptest.Behaviour{TLS: serverTLS(eeCert)}, zone(
		"ee.test", "127.0.0.2",
		"eemismatch.test", "127.0.0.3",
		"ta.test", "127.0.0.4",
		"tawrongname.test", "127.0.0.5",
		"nostarttls.test", "127.0.0.6",
		"servfail.test", "127.0.0.7",
		"unusable.test", "127.0.0.8",
	))
	eeMismatch := h.server("127.0.0.3", smtptest.Behaviour{TLS: serverTLS(other.Issue(t, "mx.eemismatch.test"))})
	ta := h.server("127.0.0.4", smtptest.Behaviour{TLS: serverTLS(ca.Issue(t, "mx.ta.test"))})
	taWrong := h.server("127.0.0.5", smtptest.Behaviour{TLS: serverTLS(ca.Issue(t, "mx.other.test"))})
	noTLS := h.server("127.0.0.6", smtptest.Behaviour{})
	servfail := h.server("127.0.0.7", smtptest.Behaviour{TLS: serverTLS(eeCert)})
	unusable := h.server("127.0.0.8", smtptest.Behaviour{TLS: serverTLS(other.Issue(t, "mx.unusable.test"))})
	p := h.port
	add := func(host string, rr dns.RR) { h.dns.Add("_"+itoa(p)+"._tcp."+host+".", rr) }
	add("mx.ee.test", testpki.TLSA(t, p, "mx.ee.test", 3, 1, 1, eeCert.Leaf))
	add("mx.eemismatch.test", testpki.TLSA(t, p, "mx.eemismatch.test", 3, 1, 1, eeCert.Leaf)) // not its certificate
	add("mx.ta.test", testpki.TLSA(t, p, "mx.ta.test", 2, 0, 1, ca.Cert))
	add("mx.tawrongname.test", testpki.TLSA(t, p, "mx.tawrongname.test", 2, 0, 1, ca.Cert))
	add("mx.nostarttls.test", testpki.TLSA(t, p, "mx.nostarttls.test", 3, 1, 1, eeCert.Leaf))
	add("mx.unusable.test", testpki.TLSA(t, p, "mx.unusable.test", 1, 1, 1, eeCert.Leaf)) // PKIX-EE: unusable for SMTP
	h.dns.SetRcode("_"+itoa(p)+"._tcp.mx.servfail.test.", dns.RcodeServerFailure)
	h.dns.SetAD(true)
	h.cfg.Delivery.DNSSECTrustedResolver = true
	h.start()

	send := func(domain string) string {
		id := h.submit(testBody, []string{"rcpt@" + domain})
		h.waitRecords(id, 1)
		return id
	}
	send("ee.test")
	if m := h.first.Messages(); len(m) != 1 || !m[0].TLS {
		t.Errorf("DANE-EE match: %+v", m)
	}
	if line := h.lastAttempt("ee.test"); !strings.Contains(line, "tls_policy=dane") || !strings.Contains(line, "tls_verified=true") {
		t.Errorf("DANE-EE attempt: %s", line)
	}
	if c := h.counts("ee.test", policyTLSA); c.Success != 1 || len(c.PolicyString) != 1 || !strings.HasPrefix(c.PolicyString[0], "3 1 1 ") {
		t.Errorf("DANE-EE counts: %+v", c)
	}
	id := send("eemismatch.test")
	h.deferredWith(id, "4.7.5")
	if len(eeMismatch.Messages()) != 0 {
		t.Error("DANE-EE mismatch delivered")
	}
	send("ta.test")
	if m := ta.Messages(); len(m) != 1 || !m[0].TLS {
		t.Errorf("DANE-TA: %+v", m)
	}
	id = send("tawrongname.test")
	h.deferredWith(id, "4.7.5")
	if len(taWrong.Messages()) != 0 {
		t.Error("DANE-TA with a certificate for another name delivered")
	}
	id = send("nostarttls.test")
	h.deferredWith(id, "4.7.4")
	if len(noTLS.Messages()) != 0 {
		t.Error("DANE host without STARTTLS got the message in plain text")
	}
	id = send("servfail.test")
	h.deferredWith(id, "4.4.3")
	if servfail.Conns() != 0 {
		t.Error("host with a failed TLSA lookup was contacted")
	}
	if line := h.lastAttempt("servfail.test"); !strings.Contains(line, "tls_policy=dane") {
		t.Errorf("servfail.test attempt does not say DANE decided: %s", line)
	}
	send("unusable.test")
	if m := unusable.Messages(); len(m) != 1 || !m[0].TLS {
		t.Errorf("unusable TLSA (encrypt, unauthenticated): %+v", m)
	}
	if line := h.lastAttempt("unusable.test"); !strings.Contains(line, "tls_policy=dane") || !strings.Contains(line, "tls_verified=false") {
		t.Errorf("unusable TLSA attempt: %s", line)
	}
}

// Without the AD bit (or without dnssec_trusted_resolver) TLSA records
// are ignored: a mismatching record does not stop opportunistic delivery.
func TestDANE_NotTrustedIsIgnored(t *testing.T) {
	t.Parallel()
	other := testpki.NewCA(t)
	for _, c := range []struct {
		name      string
		ad, trust bool
		insecure  string // a name answered without the AD bit
	}{{"no AD bit", false, true, ""}, {"resolver not trusted", true, false, ""},
		// RFC 7672 §2.2: TLSA records count only for a host named by a
		// secure MX record set, with secure address records.
		{"MX records not secure", true, true, "example.test"},
		{"MX host address not secure", true, true, "mx.example.test"}} {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			h := newHarness(t, smtptest.Behaviour{TLS: serverTLS(other.Issue(t, "mx.example.test"))}, zone("example.test", "127.0.0.2"))
			h.dns.Add("_"+itoa(h.port)+"._tcp.mx.example.test.", testpki.TLSA(t, h.port, "mx.example.test", 3, 1, 1, other.Cert))
			h.dns.SetAD(c.ad)
			if c.insecure != "" {
				h.dns.SetInsecure(c.insecure)
			}
			h.cfg.Delivery.DNSSECTrustedResolver = c.trust
			h.start()
			id := h.submit(testBody, []string{"a@example.test"})
			h.waitRecords(id, 1)
			if m := h.first.Messages(); len(m) != 1 || !m[0].TLS {
				t.Fatalf("opportunistic delivery: %+v", m)
			}
			if line := h.lastAttempt("example.test"); !strings.Contains(line, "tls_policy=may") {
				t.Errorf("attempt: %s", line)
			}
		})
	}
}

// REQUIRETLS (RFC 8689): verified TLS to a server that offers REQUIRETLS,
// passed on in MAIL; anything less bounces with 5.7.30 (the bounce without
// REQUIRETLS, and without the body).
func TestREQUIRETLS(t *testing.T) {
	t.Parallel()
	ca, other := testpki.NewCA(t), testpki.NewCA(t)
	h := newHarness(t, smtptest.Behaviour{TLS: serverTLS(ca.Issue(t, "mx.ok.test")), RequireTLS: true}, zone(
		"ok.test", "127.0.0.2",
		"noext.test", "127.0.0.3",
		"badcert.test", "127.0.0.4",
		"down.test", "127.0.0.5",
		"off.test", "127.0.0.6",
	))
	noExt := h.server("127.0.0.3", smtptest.Behaviour{TLS: serverTLS(ca.Issue(t, "mx.noext.test"))})
	badcert := h.server("127.0.0.4", smtptest.Behaviour{TLS: serverTLS(other.Issue(t, "mx.badcert.test")), RequireTLS: true})
	off := h.server("127.0.0.6", smtptest.Behaviour{TLS: serverTLS(ca.Issue(t, "mx.off.test")), RequireTLS: true})
	bounces := h.server("127.0.0.250", smtptest.Behaviour{})
	h.cfg.Delivery.ExtraRootsFile = ca.File
	h.cfg.TLSPolicies = []config.TLSPolicy{{Domains: []string{"off.test"}, Level: config.TLSNone}}
	h.start()
	requireTLS := func(e *queue.Envelope) { e.RequireTLS, e.Ret = true, "FULL" }
	send := func(domain string, mod ...func(*queue.Envelope)) string {
		id := h.submit(testBody, []string{"rcpt@" + domain}, mod...)
		h.waitRecords(id, 1)
		return id
	}

	send("ok.test", requireTLS)
	if m := h.first.Messages(); len(m) != 1 || !m[0].TLS || !m[0].MailOpts.RequireTLS {
		t.Fatalf("REQUIRETLS delivery: %+v", m)
	}
	if line := h.lastAttempt("ok.test"); !strings.Contains(line, "tls_verified=true") || !strings.Contains(line, "requiretls=true") {
		t.Errorf("attempt: %s", line)
	}

	nBounces := 0
	for _, c := range []struct {
		domain string
		srv    *smtptest.Server
	}{{"noext.test", noExt}, {"badcert.test", badcert}, {"off.test", off}} {
		id := send(c.domain, requireTLS)
		if o := h.outcome(id); !o.gone {
			t.Errorf("%s: %+v, want bounced", c.domain, o)
		}
		if n := len(c.srv.Messages()); n != 0 {
			t.Errorf("%s: delivered %d", c.domain, n)
		}
		nBounces++
		m := bounces.Wait(t, nBounces)[nBounces-1]
		if m.From != "" || m.MailOpts.RequireTLS {
			t.Errorf("%s: bounce from %q with REQUIRETLS %v", c.domain, m.From, m.MailOpts.RequireTLS)
		}
		body := string(m.Data)
		if !strings.Contains(body, "5.7.30") || !strings.Contains(body, "rcpt@"+c.domain) {
			t.Errorf("%s: bounce lacks 5.7.30:\n%s", c.domain, body)
		}
		if strings.Contains(body, "last line without dot") {
			t.Errorf("%s: bounce of a REQUIRETLS message returns its body", c.domain)
		}
	}
	if off.Conns() != 0 {
		t.Error("off.test (tls_policy none) was contacted for a REQUIRETLS message")
	}
	// A server that negotiated verified TLS but lacks the REQUIRETLS
	// extension had a good TLS session (RFC 8460 counts TLS negotiation,
	// and has no result type for a missing SMTP extension).
	if c := h.counts("noext.test", policyNone); c.Success != 1 || c.Failure != 0 {
		t.Errorf("noext.test TLS report counts: %+v, want 1 success, 0 failures", c)
	}
	// The same message without REQUIRETLS goes to noext.test as usual.
	send("noext.test")
	if m := noExt.Messages(); len(m) != 1 || m[0].MailOpts.RequireTLS {
		t.Errorf("plain message to noext.test: %+v", m)
	}
	// A host that cannot be reached is not a REQUIRETLS failure: retried.
	id := send("down.test", requireTLS)
	if o := h.outcome(id); o.state != queue.Pending {
		t.Errorf("down.test: %+v, want pending", o)
	}
}

// A REQUIRETLS message to a server without STARTTLS bounces with a reason
// that names REQUIRETLS, not the domain's TLS level ("may" requires
// nothing), in the log and in the bounce the sender reads.
func TestREQUIRETLS_NoSTARTTLSReasonNamesREQUIRETLS(t *testing.T) {
	t.Parallel()
	h := newHarness(t, smtptest.Behaviour{}, zone("plain.test", "127.0.0.2"))
	bounces := h.server("127.0.0.250", smtptest.Behaviour{})
	h.start()
	id := h.submit(testBody, []string{"rcpt@plain.test"}, func(e *queue.Envelope) { e.RequireTLS = true })
	h.waitRecords(id, 1)
	if n := len(h.first.Messages()); n != 0 {
		t.Fatalf("delivered %d REQUIRETLS messages in plain text", n)
	}
	body := string(bounces.Wait(t, 1)[0].Data)
	if !strings.Contains(body, "does not offer STARTTLS, required by REQUIRETLS") || strings.Contains(body, "TLS policy may") {
		t.Errorf("bounce reason does not name REQUIRETLS:\n%s", body)
	}
}

func itoa(n int) string { return strconv.Itoa(n) }

// An MTA-STS testing policy is checked and counted also when a connection
// to the same MX host is idle in the pool from mail without a policy: that
// connection was made without the check, so it is not reused for it.
func TestMTASTS_TestingNotOnAnUncheckedPooledConnection(t *testing.T) {
	t.Parallel()
	ca, other := testpki.NewCA(t), testpki.NewCA(t)
	z := zone("testing.test", "127.0.0.5")
	z["plain.test."] = append(z["plain.test."], dnstest.MX("plain.test", 10, "mx.testing.test"))
	h := newHarness(t, smtptest.Behaviour{}, z)
	mx := h.server("127.0.0.5", smtptest.Behaviour{TLS: serverTLS(other.Issue(t, "mx.testing.test"))})
	sts := newSTSServer(t, ca, map[string]string{"testing.test": stsPolicy("testing", "mx.testing.test")})
	h.publishSTS("testing.test", "1")
	h.cfg.DataDir = t.TempDir()
	h.cfg.Delivery.ExtraRootsFile = ca.File
	h.cfg.Delivery.MTASTSPort = sts.port
	h.start()

	for _, d := range []string{"plain.test", "testing.test"} {
		id := h.submit(testBody, []string{"rcpt@" + d})
		h.waitRecords(id, 1)
	}
	if n := len(mx.Messages()); n != 2 {
		t.Fatalf("the MX got %d messages, want 2", n)
	}
	if !strings.Contains(h.logs.String(), "mta-sts testing: certificate not valid") {
		t.Error("the testing-mode certificate failure was not logged")
	}
	if c := h.counts("testing.test", policySTS); c.Failure != 1 {
		t.Errorf("testing.test counts: %+v", c)
	}
}

// The lines an MTA-STS testing policy logs about a failure it lets pass
// (a certificate not valid for the MX host, no STARTTLS) name the message,
// as every line about a message does, so a grep for its queue ID finds
// them; they named only the domain and host.
func TestMTASTS_TestingFailureLinesNameTheMessage(t *testing.T) {
	t.Parallel()
	ca, other := testpki.NewCA(t), testpki.NewCA(t)
	h := newHarness(t, smtptest.Behaviour{TLS: serverTLS(other.Issue(t, "mx.badcert.test"))}, zone(
		"badcert.test", "127.0.0.2",
		"nostarttls.test", "127.0.0.3",
	))
	h.server("127.0.0.3", smtptest.Behaviour{})
	sts := newSTSServer(t, ca, map[string]string{
		"badcert.test":    stsPolicy("testing", "mx.badcert.test"),
		"nostarttls.test": stsPolicy("testing", "mx.nostarttls.test"),
	})
	h.publishSTS("badcert.test", "1")
	h.publishSTS("nostarttls.test", "1")
	h.cfg.DataDir = t.TempDir()
	h.cfg.Delivery.ExtraRootsFile = ca.File
	h.cfg.Delivery.MTASTSPort = sts.port
	h.start()

	for domain, msg := range map[string]string{
		"badcert.test":    "mta-sts testing: certificate not valid",
		"nostarttls.test": "mta-sts testing: server does not offer STARTTLS",
	} {
		id := h.submit(testBody, []string{"rcpt@" + domain})
		h.waitRecords(id, 1)
		var line string
		for _, l := range strings.Split(h.logs.String(), "\n") {
			if strings.Contains(l, msg) && strings.Contains(l, "domain="+domain) {
				line = l
			}
		}
		if line == "" {
			t.Errorf("%s: no %q line:\n%s", domain, msg, h.logs.String())
		} else if !strings.Contains(line, "queue_id="+id) {
			t.Errorf("%s: the line does not name queue_id=%s: %s", domain, id, line)
		}
	}
}

// Mail to an address literal has no domain name: no MTA-STS lookup (it
// logged "mta-sts: no policy applied ... bad domain") and no TLS report
// counts under a policy domain "[127.0.0.2]".
func TestMTASTS_NotForAddressLiterals(t *testing.T) {
	t.Parallel()
	ca := testpki.NewCA(t)
	h := newHarness(t, smtptest.Behaviour{TLS: serverTLS(ca.Issue(t, "mx.example.test"))}, zone("example.test", "127.0.0.2"))
	sts := newSTSServer(t, ca, map[string]string{"example.test": stsPolicy("enforce", "mx.example.test")})
	h.cfg.DataDir = t.TempDir()
	h.cfg.Delivery.ExtraRootsFile = ca.File
	h.cfg.Delivery.MTASTSPort = sts.port
	h.start()
	id := h.submit(testBody, []string{"rcpt@[127.0.0.2]"})
	h.waitRecords(id, 1)
	if m := h.first.Messages(); len(m) != 1 || !m[0].TLS {
		t.Fatalf("literal: %+v", m)
	}
	if strings.Contains(h.logs.String(), "mta-sts") {
		t.Errorf("MTA-STS looked up for an address literal:\n%s", h.logs.String())
	}
	for _, c := range h.agent.TLSResults(false) {
		if strings.HasPrefix(c.PolicyDomain, "[") {
			t.Errorf("TLS report counts for an address literal: %+v", c)
		}
	}
}

// TestMTASTS_FailoverAttemptNamesTheAnsweringHost: under an enforced
// MTA-STS policy that lists mx1 only, mx1 takes ok@ and defers grey@ with
// 451; mx2, outside the policy, is skipped without a connection. grey@
// keeps mx1's reply, and the attempt line, which carries that reply, names
// mx1 with its address and TLS — not mx2 with mx1's address and TLS. When
// mx1 cannot be reached at all, the attempt line for the skipped mx2 has
// no address: none was connected to.
func TestMTASTS_FailoverAttemptNamesTheAnsweringHost(t *testing.T) {
	t.Parallel()
	ca := testpki.NewCA(t)
	z := mxZone("127.0.0.2", "127.0.0.3")
	addMX(z, "down.test", 10, "mx1.down.test", "127.0.0.4") // nothing listens
	addMX(z, "down.test", 20, "mx2.down.test", "127.0.0.3")
	h := newHarness(t, smtptest.Behaviour{TLS: serverTLS(ca.Issue(t, "mx1.example.test")),
		Rcpt: func(to string, _ *smtp.RcptOptions) error {
			if strings.HasPrefix(to, "grey@") {
				return smtptest.Reply(451, "4.7.1", "greylisted, try again later")
			}
			return nil
		}}, z)
	mx2 := h.server("127.0.0.3", smtptest.Behaviour{TLS: serverTLS(ca.Issue(t, "mx2.example.test", "mx2.down.test"))})
	sts := newSTSServer(t, ca, map[string]string{
		"example.test": stsPolicy("enforce", "mx1.example.test"),
		"down.test":    stsPolicy("enforce", "mx1.down.test"),
	})
	h.publishSTS("example.test", "1")
	h.publishSTS("down.test", "1")
	h.cfg.DataDir = t.TempDir()
	h.cfg.Delivery.ExtraRootsFile = ca.File
	h.cfg.Delivery.MTASTSPort = sts.port
	h.start()

	id := h.submit(testBody, []string{"ok@example.test", "grey@example.test"})
	h.waitRecords(id, 1)
	h.rcptPendingWith(id, 1, "greylisted")
	if n := mx2.Conns(); n != 0 {
		t.Fatalf("%d connections to mx2, outside the MTA-STS policy", n)
	}
	line := h.lastAttempt("example.test")
	want := "mx=mx1.example.test addr=127.0.0.2:" + itoa(h.port) + ` tls="TLS 1.3" tls_policy=mta-sts tls_verified=true`
	if !strings.Contains(line, want) || !strings.Contains(line, "code=451") {
		t.Errorf("attempt line does not name the host whose reply it gives;\nwant %s\n got %s", want, line)
	}

	id = h.submit(testBody, []string{"a@down.test"})
	h.waitRecords(id, 1)
	h.deferredWith(id, "4.7.5")
	line = h.lastAttempt("down.test")
	if want := `mx=mx2.down.test addr="" tls="" tls_policy=mta-sts tls_verified=false`; !strings.Contains(line, want) {
		t.Errorf("attempt line for a host skipped before connecting;\nwant %s\n got %s", want, line)
	}
}

// A TLS handshake the shutdown cuts short is no failed session for the TLS
// report: the server did nothing wrong (it was counted a
// validation-failure of the domain's MX).
func TestTLSReport_ShutdownInHandshakeNotCounted(t *testing.T) {
	t.Parallel()
	h := newHarness(t, smtptest.Behaviour{}, zone("hang.test", "127.0.0.3"))
	ln := h.ports.Listen("127.0.0.3")
	t.Cleanup(func() { ln.Close() })
	inTLS, release := make(chan struct{}), make(chan struct{})
	t.Cleanup(func() { close(release) })
	go func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		io.WriteString(c, "220 mx.hang.test ESMTP\r\n")
		r := bufio.NewReader(c)
		for {
			l, err := r.ReadString('\n')
			if err != nil {
				return
			}
			if strings.HasPrefix(strings.ToUpper(l), "STARTTLS") {
				break
			}
			io.WriteString(c, "250-mx.hang.test\r\n250 STARTTLS\r\n")
		}
		io.WriteString(c, "220 go ahead\r\n")
		if _, err := r.ReadByte(); err != nil { // the ClientHello has come
			return
		}
		close(inTLS)
		<-release // and is never answered
	}()
	h.start()
	h.submit(testBody, []string{"rcpt@hang.test"})
	waitConnected(t, h, inTLS, "the handshake")
	h.stop()
	if c := h.counts("hang.test", policyNone); c.Failure != 0 {
		t.Errorf("hang.test counts after a shutdown during the handshake: %+v, want no failure", c)
	}
}
