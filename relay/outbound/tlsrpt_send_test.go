package outbound

import (
	"bytes"
	"compress/gzip"
	"context"
	"crypto/ed25519"
	"crypto/rand"
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
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/emersion/go-msgauth/dkim"

	"github.com/mailhop/mailhop/dnsmx/dnstest"
	"github.com/mailhop/mailhop/internal/testpki"
	"github.com/mailhop/mailhop/relay/config"
	"github.com/mailhop/mailhop/relay/dkimsign"
	"github.com/mailhop/mailhop/relay/outbound/smtptest"
)

// tlsReportJSON is what a test reads back from a report.
type tlsReportJSON struct {
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
		Summary *struct {
			Success *uint64 `json:"total-successful-session-count"`
			Failure *uint64 `json:"total-failure-session-count"`
		} `json:"summary"`
		Failures []struct {
			ResultType string `json:"result-type"`
			Count      uint64 `json:"failed-session-count"`
		} `json:"failure-details"`
	} `json:"policies"`
}

// checkReportJSON parses a gzipped report and checks the fields RFC 8460
// §4.4 requires, and that domain's counts are success/failure, the
// failures all of resultType.
func checkReportJSON(t *testing.T, gz []byte, domain string, success, failure uint64, resultType string) *tlsReportJSON {
	t.Helper()
	zr, err := gzip.NewReader(bytes.NewReader(gz))
	if err != nil {
		t.Fatalf("report is not gzip: %v", err)
	}
	data, err := io.ReadAll(zr)
	if err != nil {
		t.Fatalf("gunzip: %v", err)
	}
	var r tlsReportJSON
	if err := json.Unmarshal(data, &r); err != nil {
		t.Fatalf("report JSON: %v\n%s", err, data)
	}
	if r.Organization != "relay.test" || r.Contact != "postmaster@relay.test" || r.ReportID == "" {
		t.Errorf("organization-name %q, contact-info %q, report-id %q", r.Organization, r.Contact, r.ReportID)
	}
	if r.DateRange.Start.IsZero() || !r.DateRange.Start.Before(r.DateRange.End) {
		t.Errorf("date-range %v to %v", r.DateRange.Start, r.DateRange.End)
	}
	if d := r.DateRange.End.Sub(r.DateRange.Start); d < 24*time.Hour-time.Second || d > 24*time.Hour+time.Minute {
		t.Errorf("date-range %v to %v, want the 24h period", r.DateRange.Start, r.DateRange.End)
	}
	if len(r.Policies) != 1 {
		t.Fatalf("%d policies, want 1:\n%s", len(r.Policies), data)
	}
	p := r.Policies[0]
	if p.Policy.Type != "no-policy-found" || p.Policy.Domain != domain {
		t.Errorf("policy %+v, want no-policy-found for %s", p.Policy, domain)
	}
	if p.Summary == nil || p.Summary.Success == nil || p.Summary.Failure == nil {
		t.Fatalf("summary or its counts missing:\n%s", data)
	}
	if *p.Summary.Success != success || *p.Summary.Failure != failure {
		t.Errorf("summary %d successes, %d failures; want %d, %d", *p.Summary.Success, *p.Summary.Failure, success, failure)
	}
	var n uint64
	for _, f := range p.Failures {
		if f.ResultType != resultType {
			t.Errorf("failure result-type %q, want %q", f.ResultType, resultType)
		}
		n += f.Count
	}
	if n != failure {
		t.Errorf("failure-details count %d sessions, want %d:\n%s", n, failure, data)
	}
	return &r
}

// A domain with a mailto: rua gets its report as RFC 8460 §5.3 mail
// through the queue, to the rua domain's MX; a domain without TLSRPT gets
// none; the counts start afresh.
func TestTLSReports_MailtoThroughQueue(t *testing.T) {
	t.Parallel()
	w := newTLSWorld(t)
	w.cfg.Delivery.TLSPolicy = config.TLSVerify
	w.cfg.Delivery.TLSReportInterval.Duration = 24 * time.Hour
	w.dns.Set("reports.test.", dnstest.MX("reports.test", 10, "mx.reports.test"))
	w.dns.Set("mx.reports.test.", dnstest.A("mx.reports.test", "127.0.0.6"))
	w.dns.Set("_smtp._tls.untrusted.test.", dnstest.TXT("_smtp._tls.untrusted.test", "v=TLSRPTv1; rua=mailto:tls-reports@reports.test"))
	rua := w.server("127.0.0.6", smtptest.Behaviour{TLS: serverTLS(w.ca.Issue(t, "mx.reports.test"))})
	// RFC 8460 §5.3: reports SHOULD be DKIM-signed; relay.test has a key.
	_, key, _ := ed25519.GenerateKey(rand.Reader)
	pemKey, err := dkimsign.MarshalPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	keyFile := filepath.Join(t.TempDir(), "relay.test.key")
	if err := os.WriteFile(keyFile, pemKey, 0o600); err != nil {
		t.Fatal(err)
	}
	w.cfg.DKIM = []config.DKIM{{Domain: "relay.test", Selector: "tlsrpt", KeyFile: keyFile}}
	keyRecord, err := dkimsign.KeyRecord(key.Public())
	if err != nil {
		t.Fatal(err)
	}
	w.start()
	for _, d := range []string{"good.test", "untrusted.test", "untrusted.test"} {
		id := w.submit(testBody, []string{"a@" + d})
		w.waitRecords(id, 1)
	}

	w.agent.setReportPeriodStart(time.Now().Add(-24 * time.Hour))
	res, err := w.agent.SendTLSReports(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if res != (TLSReportResult{Domains: 2, Reports: 1, Sent: 1}) {
		t.Errorf("result %+v, want 2 domains, 1 report, 1 sent", res)
	}
	m := rua.Wait(t, 1)[0]
	if m.From != "postmaster@relay.test" || len(m.To) != 1 || m.To[0] != "tls-reports@reports.test" {
		t.Errorf("envelope %s → %v", m.From, m.To)
	}
	vs, err := dkim.VerifyWithOptions(bytes.NewReader(m.Data), &dkim.VerifyOptions{LookupTXT: func(name string) ([]string, error) {
		if name != "tlsrpt._domainkey.relay.test" {
			return nil, fmt.Errorf("no TXT at %s", name)
		}
		return []string{keyRecord}, nil
	}})
	if err != nil || len(vs) != 1 || vs[0].Err != nil || vs[0].Domain != "relay.test" {
		t.Errorf("DKIM: %v %+v", err, vs)
	}
	msg, err := mail.ReadMessage(bytes.NewReader(m.Data))
	if err != nil {
		t.Fatal(err)
	}
	h := msg.Header
	id := strings.TrimSuffix(strings.TrimPrefix(strings.SplitN(h.Get("Subject"), "Report-ID: ", 2)[1], "<"), ">")
	if want := "Report Domain: untrusted.test Submitter: relay.test Report-ID: <" + id + ">"; h.Get("Subject") != want || id == "" {
		t.Errorf("Subject %q, want %q", h.Get("Subject"), want)
	}
	if h.Get("TLS-Report-Domain") != "untrusted.test" || h.Get("TLS-Report-Submitter") != "relay.test" {
		t.Errorf("TLS-Report-Domain %q, TLS-Report-Submitter %q", h.Get("TLS-Report-Domain"), h.Get("TLS-Report-Submitter"))
	}
	if from, err := mail.ParseAddress(h.Get("From")); err != nil || from.Address != "postmaster@relay.test" {
		t.Errorf("From %q", h.Get("From"))
	}
	mt, params, err := mime.ParseMediaType(h.Get("Content-Type"))
	if err != nil || mt != "multipart/report" || params["report-type"] != "tlsrpt" {
		t.Fatalf("Content-Type %q", h.Get("Content-Type"))
	}
	var gz []byte
	var filename string
	mr := multipart.NewReader(msg.Body, params["boundary"])
	for {
		p, err := mr.NextPart()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		if p.Header.Get("Content-Type") != "application/tlsrpt+gzip" {
			continue
		}
		if p.Header.Get("Content-Transfer-Encoding") != "base64" {
			t.Errorf("attachment encoding %q", p.Header.Get("Content-Transfer-Encoding"))
		}
		filename = p.FileName()
		gz, err = io.ReadAll(base64.NewDecoder(base64.StdEncoding, p))
		if err != nil {
			t.Fatal(err)
		}
	}
	if gz == nil {
		t.Fatalf("no application/tlsrpt+gzip part:\n%s", m.Data)
	}
	r := checkReportJSON(t, gz, "untrusted.test", 0, 2, "certificate-not-trusted")
	if r.ReportID != id {
		t.Errorf("report-id %q, Subject says %q", r.ReportID, id)
	}
	// RFC 8460 §5.1: sender!policy-domain!begin!end!unique-id.json.gz
	parts := strings.Split(strings.TrimSuffix(filename, ".json.gz"), "!")
	if len(parts) != 5 || parts[0] != "relay.test" || parts[1] != "untrusted.test" ||
		parts[2] != fmt.Sprint(r.DateRange.Start.Unix()) || parts[3] != fmt.Sprint(r.DateRange.End.Unix()) || !strings.HasSuffix(filename, ".json.gz") {
		t.Errorf("attachment filename %q", filename)
	}
	for _, c := range w.agent.TLSResults(false) {
		if c.PolicyDomain == "untrusted.test" || c.PolicyDomain == "good.test" {
			t.Errorf("counts of the reported period remain: %+v", c)
		}
	}

	// The next period starts where this one ended; nothing counted for
	// untrusted.test since: no report.
	res, err = w.agent.SendTLSReports(context.Background())
	if err != nil || res.Reports != 0 {
		t.Errorf("second run: %+v, %v; want no report", res, err)
	}
}

// setReportPeriodStart pretends the period began at start.
func (a *Agent) setReportPeriodStart(start time.Time) {
	a.tlsrpt.mu.Lock()
	a.tlsrpt.start = start
	a.tlsrpt.mu.Unlock()
}

// reportSink is an HTTPS server that records the reports POSTed to it;
// paths under /fail answer 503.
type reportSink struct {
	srv  *httptest.Server
	port string
	mu   sync.Mutex
	got  []*http.Request
	body [][]byte
}

func newReportSink(t *testing.T, ca *testpki.CA, name string) *reportSink {
	s := &reportSink{}
	s.srv = httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		s.mu.Lock()
		s.got = append(s.got, r)
		s.body = append(s.body, b)
		s.mu.Unlock()
		if strings.HasPrefix(r.URL.Path, "/fail") {
			http.Error(w, "try later", http.StatusServiceUnavailable)
		}
	}))
	s.srv.Config.ErrorLog = log.New(io.Discard, "", 0)
	s.srv.TLS = serverTLS(ca.Issue(t, name))
	s.srv.StartTLS()
	t.Cleanup(s.srv.Close)
	_, s.port, _ = net.SplitHostPort(s.srv.Listener.Addr().String())
	return s
}

// An https: rua gets the gzipped JSON by POST, over TLS verified with
// extra_roots_file; a second rua that answers 503 is an error, reported
// and not retried.
func TestTLSReports_HTTPSPost(t *testing.T) {
	t.Parallel()
	w := newTLSWorld(t)
	w.cfg.Delivery.TLSPolicy = config.TLSVerify
	sink := newReportSink(t, w.ca, "tlsrpt.reports.test")
	w.dns.Set("tlsrpt.reports.test.", dnstest.A("tlsrpt.reports.test", "127.0.0.1"))
	base := "https://tlsrpt.reports.test:" + sink.port
	w.dns.Set("_smtp._tls.good.test.", dnstest.TXT("_smtp._tls.good.test",
		"v=TLSRPTv1;rua="+base+"/v1/tlsrpt , "+base+"/fail; ext=ignored"))
	w.start()
	for range 3 {
		id := w.submit(testBody, []string{"a@good.test"})
		w.waitRecords(id, 1)
	}
	// The connection is reused: one TLS session for the three messages
	// unless the pool dropped it; count what the agent counted.
	var want uint64
	for _, c := range w.agent.TLSResults(false) {
		if c.PolicyDomain == "good.test" {
			want = c.Success
		}
	}
	if want == 0 {
		t.Fatal("no TLS success counted for good.test")
	}

	w.agent.setReportPeriodStart(time.Now().Add(-24 * time.Hour))
	res, err := w.agent.SendTLSReports(context.Background())
	if err == nil || !strings.Contains(err.Error(), "503") {
		t.Errorf("error %v, want the 503 of the second rua", err)
	}
	if res != (TLSReportResult{Domains: 1, Reports: 1, Sent: 1}) {
		t.Errorf("result %+v, want 1 domain, 1 report, 1 sent", res)
	}
	sink.mu.Lock()
	defer sink.mu.Unlock()
	if len(sink.got) != 2 {
		t.Fatalf("%d POSTs, want 2 (one per rua, no retry)", len(sink.got))
	}
	for i, r := range sink.got {
		if r.Method != http.MethodPost || r.Header.Get("Content-Type") != "application/tlsrpt+gzip" {
			t.Errorf("request %d: %s with Content-Type %q", i, r.Method, r.Header.Get("Content-Type"))
		}
		checkReportJSON(t, sink.body[i], "good.test", want, 0, "")
	}
	if !bytes.Equal(sink.body[0], sink.body[1]) {
		t.Errorf("the two rua got different reports")
	}
	if !strings.Contains(w.logs.String(), "tls report not sent") {
		t.Errorf("the failed POST is not logged")
	}
}
