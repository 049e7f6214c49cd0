package tlsrpt

import (
	"encoding/json"
	"errors"
	"time"
)

// TLS reports (RFC 8460): the JSON a daily report job sends to the rua of
// _smtp._tls.DOMAIN, built from the counts of Stats.Results. Sending it
// (mailto: through the queue from a configured reporting address, or an
// https: POST) is the job's.

// ReportInfo is what a report says about its sender and period.
type ReportInfo struct {
	Organization string    // organization-name: who runs this relay
	Contact      string    // contact-info: e.g. "postmaster@relay.example"
	ReportID     string    // report-id: unique per report
	Start, End   time.Time // the period covered (RFC 8460 §4.1: a UTC day)
}

type tlsReport struct {
	Organization string           `json:"organization-name"`
	DateRange    tlsReportRange   `json:"date-range"`
	Contact      string           `json:"contact-info"`
	ReportID     string           `json:"report-id"`
	Policies     []tlsReportEntry `json:"policies"`
}

type tlsReportRange struct {
	Start string `json:"start-datetime"`
	End   string `json:"end-datetime"`
}

type tlsReportEntry struct {
	Policy struct {
		Type   string   `json:"policy-type"`
		String []string `json:"policy-string,omitempty"`
		Domain string   `json:"policy-domain"`
		MXHost []string `json:"mx-host,omitempty"`
	} `json:"policy"`
	Summary struct {
		Success uint64 `json:"total-successful-session-count"`
		Failure uint64 `json:"total-failure-session-count"`
	} `json:"summary"`
	Failures []tlsReportFailure `json:"failure-details,omitempty"`
}

type tlsReportFailure struct {
	ResultType  string `json:"result-type"`
	SendingIP   string `json:"sending-mta-ip,omitempty"`
	ReceivingMX string `json:"receiving-mx-hostname,omitempty"`
	ReceivingIP string `json:"receiving-ip,omitempty"`
	Count       uint64 `json:"failed-session-count"`
	Reason      string `json:"failure-reason-code,omitempty"`
}

// Build returns the RFC 8460 §4 JSON report for policy domain
// domain from counts (those of other domains are left out).
func Build(domain string, counts []Counts, info ReportInfo) ([]byte, error) {
	if info.Organization == "" || info.Contact == "" || info.ReportID == "" {
		return nil, errors.New("tls report: organization, contact and report ID are required")
	}
	r := tlsReport{Organization: info.Organization, Contact: info.Contact, ReportID: info.ReportID,
		DateRange: tlsReportRange{Start: info.Start.UTC().Format(time.RFC3339), End: info.End.UTC().Format(time.RFC3339)},
		Policies:  []tlsReportEntry{}}
	for _, c := range counts {
		if c.PolicyDomain != domain {
			continue
		}
		var e tlsReportEntry
		e.Policy.Type, e.Policy.String, e.Policy.Domain, e.Policy.MXHost = c.PolicyType, c.PolicyString, c.PolicyDomain, c.MXHosts
		e.Summary.Success, e.Summary.Failure = c.Success, c.Failure
		for _, f := range c.Failures {
			e.Failures = append(e.Failures, tlsReportFailure{ResultType: f.ResultType, SendingIP: f.SendingIP, ReceivingMX: f.ReceivingMX,
				ReceivingIP: f.ReceivingIP, Count: f.Count, Reason: f.Reason})
		}
		r.Policies = append(r.Policies, e)
	}
	if len(r.Policies) == 0 {
		return nil, errors.New("tls report: nothing counted for " + domain)
	}
	return json.MarshalIndent(r, "", "  ")
}

// NextPeriodEnd is the end of the period after now: the next multiple of
// iv since the zero time, which for a divisor of 24h is aligned on UTC
// midnight (RFC 8460 §4.1 wants UTC days).
func NextPeriodEnd(now time.Time, iv time.Duration) time.Time {
	return now.Truncate(iv).Add(iv)
}
