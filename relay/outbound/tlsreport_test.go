package outbound

import (
	"encoding/json"
	"net"
	"slices"
	"testing"
	"time"

	"github.com/mailhop/mailhop/relay/config"
	"github.com/mailhop/mailhop/relay/tlsrpt"
)

// The counts of real deliveries make a report that has every field RFC
// 8460 §4.4's JSON schema requires, with the values it allows.
func TestTLSReport_JSONHasSchemaRequiredFields(t *testing.T) {
	t.Parallel()
	w := newTLSWorld(t)
	w.cfg.Delivery.TLSPolicy = config.TLSVerify
	w.start()
	for _, d := range []string{"good.test", "untrusted.test", "untrusted.test"} {
		id := w.submit(testBody, []string{"a@" + d})
		w.waitRecords(id, 1)
	}
	counts := w.agent.TLSResults(true)
	if len(w.agent.TLSResults(false)) != 0 {
		t.Error("TLSResults(true) did not reset the counts")
	}
	day := time.Date(2026, 3, 1, 0, 0, 0, 0, time.UTC)
	info := tlsrpt.ReportInfo{Organization: "relay.test", Contact: "postmaster@relay.test", ReportID: "2026-03-01T00:00:00Z_untrusted.test",
		Start: day, End: day.Add(24*time.Hour - time.Second)}
	data, err := tlsrpt.Build("untrusted.test", counts, info)
	if err != nil {
		t.Fatal(err)
	}
	var r map[string]any
	if err := json.Unmarshal(data, &r); err != nil {
		t.Fatal(err)
	}
	for _, k := range []string{"organization-name", "date-range", "contact-info", "report-id", "policies"} {
		if _, ok := r[k]; !ok {
			t.Errorf("report lacks %q:\n%s", k, data)
		}
	}
	dr, _ := r["date-range"].(map[string]any)
	for _, k := range []string{"start-datetime", "end-datetime"} {
		s, _ := dr[k].(string)
		if _, err := time.Parse(time.RFC3339, s); err != nil {
			t.Errorf("date-range.%s = %q: %v", k, s, err)
		}
	}
	policies, _ := r["policies"].([]any)
	if len(policies) != 1 {
		t.Fatalf("%d policies, want 1 (only untrusted.test):\n%s", len(policies), data)
	}
	p := policies[0].(map[string]any)
	pol, _ := p["policy"].(map[string]any)
	if typ, _ := pol["policy-type"].(string); !slices.Contains([]string{"tlsa", "sts", "no-policy-found"}, typ) {
		t.Errorf("policy-type %q", typ)
	}
	if pol["policy-domain"] != "untrusted.test" {
		t.Errorf("policy-domain %v", pol["policy-domain"])
	}
	sum, _ := p["summary"].(map[string]any)
	if sum["total-successful-session-count"] != float64(0) || sum["total-failure-session-count"] != float64(2) {
		t.Errorf("summary %v, want 0 successes and 2 failures", sum)
	}
	results := []string{"starttls-not-supported", "certificate-host-mismatch", "certificate-expired", "tlsa-invalid",
		"dnssec-invalid", "dane-required", "certificate-not-trusted", "sts-policy-invalid", "sts-webpki-invalid",
		"validation-failure", "sts-policy-fetch-error"}
	fails, _ := p["failure-details"].([]any)
	if len(fails) == 0 {
		t.Fatalf("no failure-details:\n%s", data)
	}
	for _, f := range fails {
		fd := f.(map[string]any)
		if rt, _ := fd["result-type"].(string); !slices.Contains(results, rt) {
			t.Errorf("result-type %q is not one of RFC 8460's", rt)
		}
		if n, ok := fd["failed-session-count"].(float64); !ok || n < 1 {
			t.Errorf("failed-session-count %v", fd["failed-session-count"])
		}
		// A session that reached the server names both ends (RFC 8460
		// §4.4: sending-mta-ip, receiving-ip).
		for _, k := range []string{"sending-mta-ip", "receiving-ip"} {
			if s, _ := fd[k].(string); net.ParseIP(s) == nil {
				t.Errorf("%s = %v, want an IP address:\n%s", k, fd[k], data)
			}
		}
	}
	if _, err := tlsrpt.Build("nothing.test", counts, info); err == nil {
		t.Error("a report for a domain with no counts was built")
	}
}
