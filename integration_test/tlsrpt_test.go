package integration_test

// TLS reporting (RFC 8460) end to end, through the real binary:
//
//	client ──SMTP──▶ mailhop ──STARTTLS──▶ good.test MX 127.0.0.2 (certificate from the trusted test CA)
//	                    │     ──STARTTLS──▶ untrusted.test MX 127.0.0.3 (certificate from an unknown CA; level verify)
//	                    │     ──SMTP──────▶ reports.test MX 127.0.0.4: untrusted.test's mailto: rua
//	                    └──HTTPS POST──▶ tlsrpt.good.test = 127.0.0.1:H: good.test's https: rua
//
// delivery.tls_report_interval is 1s, so reports go out every second for
// the domains counted in that second; the test adds up the reports until
// they account for every session, whichever period each fell in.

import (
	"bytes"
	"compress/gzip"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"log"
	"mime"
	"mime/multipart"
	"net"
	"net/http"
	"net/http/httptest"
	"net/mail"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/mailhop/mailhop/dnsmx/dnstest"
	"github.com/mailhop/mailhop/internal/testpki"
	"github.com/mailhop/mailhop/relay/admin"
	"github.com/mailhop/mailhop/relay/outbound/smtptest"
)

// tlsrptJSON is the part of an RFC 8460 report the test reads.
type tlsrptJSON struct {
	Organization string `json:"organization-name"`
	DateRange    struct {
		Start time.Time `json:"start-datetime"`
		End   time.Time `json:"end-datetime"`
	} `json:"date-range"`
	Contact  string `json:"contact-info"`
	ReportID string `json:"report-id"`
	Policies []struct {
		Policy struct {
			Type   string `json:"policy-type"`
			Domain string `json:"policy-domain"`
		} `json:"policy"`
		Summary struct {
			Success uint64 `json:"total-successful-session-count"`
			Failure uint64 `json:"total-failure-session-count"`
		} `json:"summary"`
		Failures []struct {
			ResultType string `json:"result-type"`
			Count      uint64 `json:"failed-session-count"`
		} `json:"failure-details"`
	} `json:"policies"`
}

// parseTLSRPT gunzips and decodes a report and checks the fields every
// report must have (RFC 8460 §4.4) and that it is about domain only.
func parseTLSRPT(t *testing.T, gz []byte, domain string) *tlsrptJSON {
	t.Helper()
	zr, err := gzip.NewReader(bytes.NewReader(gz))
	if err != nil {
		t.Fatalf("report is not gzipped: %v", err)
	}
	data, err := io.ReadAll(zr)
	if err != nil {
		t.Fatal(err)
	}
	var raw map[string]json.RawMessage
	if err := json.Unmarshal(data, &raw); err != nil {
		t.Fatalf("report is not JSON: %v\n%s", err, data)
	}
	for _, k := range []string{"organization-name", "date-range", "contact-info", "report-id", "policies"} {
		if _, ok := raw[k]; !ok {
			t.Errorf("report lacks %q:\n%s", k, data)
		}
	}
	var r tlsrptJSON
	if err := json.Unmarshal(data, &r); err != nil {
		t.Fatalf("report JSON: %v\n%s", err, data)
	}
	if r.Organization != "mx.relay.test" || r.Contact != "postmaster@mx.relay.test" || r.ReportID == "" {
		t.Errorf("organization-name %q contact-info %q report-id %q", r.Organization, r.Contact, r.ReportID)
	}
	if r.DateRange.Start.IsZero() || r.DateRange.End.Before(r.DateRange.Start) || r.DateRange.End.Sub(r.DateRange.Start) > time.Minute {
		t.Errorf("date-range %v to %v, want the 1s periods of the test", r.DateRange.Start, r.DateRange.End)
	}
	for _, p := range r.Policies {
		if p.Policy.Domain != domain || p.Policy.Type != "no-policy-found" {
			t.Errorf("policy %+v in the report for %s", p.Policy, domain)
		}
	}
	return &r
}

// mailedTLSRPT returns the gzipped report of an RFC 8460 §5.3 mail and
// checks the mail's header.
func mailedTLSRPT(t *testing.T, m smtptest.Message, domain string) []byte {
	t.Helper()
	if m.From != "postmaster@mx.relay.test" {
		t.Errorf("report sent from <%s>, want postmaster@mx.relay.test (never the null sender)", m.From)
	}
	msg, err := mail.ReadMessage(bytes.NewReader(m.Data))
	if err != nil {
		t.Fatal(err)
	}
	h := msg.Header
	if s := h.Get("Subject"); !strings.HasPrefix(s, "Report Domain: "+domain+" Submitter: mx.relay.test Report-ID: <") || !strings.HasSuffix(s, ">") {
		t.Errorf("Subject %q", s)
	}
	if h.Get("TLS-Report-Domain") != domain || h.Get("TLS-Report-Submitter") != "mx.relay.test" {
		t.Errorf("TLS-Report-Domain %q TLS-Report-Submitter %q", h.Get("TLS-Report-Domain"), h.Get("TLS-Report-Submitter"))
	}
	mt, params, err := mime.ParseMediaType(h.Get("Content-Type"))
	if err != nil || mt != "multipart/report" || params["report-type"] != "tlsrpt" {
		t.Fatalf("Content-Type %q", h.Get("Content-Type"))
	}
	mr := multipart.NewReader(msg.Body, params["boundary"])
	for {
		p, err := mr.NextPart()
		if err != nil {
			t.Fatalf("no application/tlsrpt+gzip part (%v):\n%s", err, m.Data)
		}
		if p.Header.Get("Content-Type") == "application/tlsrpt+gzip" {
			gz, err := io.ReadAll(base64.NewDecoder(base64.StdEncoding, p))
			if err != nil {
				t.Fatal(err)
			}
			return gz
		}
	}
}

// postSink records the reports POSTed to it over HTTPS.
type postSink struct {
	mu     sync.Mutex
	bodies [][]byte
	types  []string
}

func (s *postSink) reports() ([][]byte, []string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([][]byte(nil), s.bodies...), append([]string(nil), s.types...)
}

func TestTLSReportsEndToEnd(t *testing.T) {
	t.Parallel()
	ca, other := testpki.NewCA(t), testpki.NewCA(t)

	sink := &postSink{}
	hs := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		sink.mu.Lock()
		sink.bodies = append(sink.bodies, b)
		sink.types = append(sink.types, r.Method+" "+r.URL.Path+" "+r.Header.Get("Content-Type"))
		sink.mu.Unlock()
	}))
	hs.Config.ErrorLog = log.New(io.Discard, "", 0)
	hs.TLS = ca.ServerConfig(t, "tlsrpt.good.test")
	hs.StartTLS()
	t.Cleanup(hs.Close)
	_, httpsPort, _ := net.SplitHostPort(hs.Listener.Addr().String())

	z := dnstest.Zone{}
	for d, ip := range map[string]string{"good.test": "127.0.0.2", "untrusted.test": "127.0.0.3", "reports.test": "127.0.0.4"} {
		z[d+"."] = []dns.RR{dnstest.MX(d, 10, "mx."+d)}
		z["mx."+d+"."] = []dns.RR{dnstest.A("mx."+d, ip)}
	}
	z["tlsrpt.good.test."] = []dns.RR{dnstest.A("tlsrpt.good.test", "127.0.0.1")}
	z["_smtp._tls.good.test."] = []dns.RR{dnstest.TXT("_smtp._tls.good.test",
		fmt.Sprintf("v=TLSRPTv1; rua=https://tlsrpt.good.test:%s/tlsrpt", httpsPort))}
	z["_smtp._tls.untrusted.test."] = []dns.RR{dnstest.TXT("_smtp._tls.untrusted.test", "v=TLSRPTv1; rua=mailto:tls-reports@reports.test")}

	w := newMXWorld(t, z)
	good := w.mx("127.0.0.2", smtptest.Behaviour{TLS: ca.ServerConfig(t, "mx.good.test")})
	untrusted := w.mx("127.0.0.3", smtptest.Behaviour{TLS: other.ServerConfig(t, "mx.untrusted.test")})
	rua := w.mx("127.0.0.4", smtptest.Behaviour{TLS: ca.ServerConfig(t, "mx.reports.test")})

	delivery := fmt.Sprintf("extra_roots_file = %q\ntls_report_interval = \"1s\"\n", ca.File)
	extra := "[[tls_policy]]\ndomains = [\"untrusted.test\"]\nlevel = \"verify\"\n"
	r := w.start("1h", delivery, extra)
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("--- relay log ---\n%s", r.logs.String())
		}
	})

	for _, to := range []string{"a@good.test", "b@untrusted.test", "c@untrusted.test"} {
		submitMail(t, r, submission{From: senderAddr, To: []string{to}}, deliveryMessage("tlsrpt-"+to, to))
	}
	waitMsgs(t, good, 1, 20*time.Second)
	for _, rcpt := range []string{"b@untrusted.test", "c@untrusted.test"} {
		waitQueued(t, r, rcpt, rcpt+" attempted", 20*time.Second, func(m *admin.Message) bool { return m.Attempts >= 1 })
	}
	if n := len(untrusted.Messages()); n != 0 {
		t.Fatalf("untrusted.test got %d messages under level verify", n)
	}

	// untrusted.test: two failed sessions, reported by mail to its rua.
	var failures, successes uint64
	ids := map[string]bool{}
	waitFor(t, "mailed reports covering 2 failed sessions to untrusted.test", 20*time.Second, func() bool {
		msgs := rua.Messages()
		failures, successes = 0, 0
		for _, m := range msgs {
			rep := parseTLSRPT(t, mailedTLSRPT(t, m, "untrusted.test"), "untrusted.test")
			ids[rep.ReportID] = true
			for _, p := range rep.Policies {
				failures += p.Summary.Failure
				successes += p.Summary.Success
				var n uint64
				for _, f := range p.Failures {
					if f.ResultType != "certificate-not-trusted" {
						t.Errorf("result-type %q, want certificate-not-trusted", f.ResultType)
					}
					n += f.Count
				}
				if n != p.Summary.Failure {
					t.Errorf("failure-details count %d sessions, summary %d", n, p.Summary.Failure)
				}
			}
		}
		if len(ids) != len(msgs) {
			t.Errorf("report-id repeated across %d reports", len(msgs))
		}
		return failures >= 2
	})
	if failures != 2 || successes != 0 {
		t.Errorf("untrusted.test reports: %d failures, %d successes; want 2, 0", failures, successes)
	}

	// good.test: one successful session, POSTed to its https: rua.
	waitFor(t, "a report POSTed for good.test", 20*time.Second, func() bool {
		b, _ := sink.reports()
		return len(b) > 0
	})
	bodies, types := sink.reports()
	successes, failures = 0, 0
	for i, b := range bodies {
		if types[i] != "POST /tlsrpt application/tlsrpt+gzip" {
			t.Errorf("request %q, want POST /tlsrpt with application/tlsrpt+gzip", types[i])
		}
		for _, p := range parseTLSRPT(t, b, "good.test").Policies {
			successes += p.Summary.Success
			failures += p.Summary.Failure
		}
	}
	if successes != 1 || failures != 0 {
		t.Errorf("good.test reports: %d successes, %d failures; want 1, 0", successes, failures)
	}
	if r.logLine("tls report queued", "domain=untrusted.test", "rua=mailto:tls-reports@reports.test") == "" ||
		r.logLine("tls report posted", "domain=good.test") == "" {
		t.Errorf("the reports sent are not logged")
	}
}
