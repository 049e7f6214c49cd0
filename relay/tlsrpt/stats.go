package tlsrpt

import (
	"slices"
	"strings"
	"sync"
	"time"
)

// TLS outcomes counted per policy domain, for TLS reporting (RFC 8460):
// every new connection that tried TLS (or was required to) counts one
// session, successful or failed; a reused connection is the same session.

// Counts is the tally of one policy (a domain and a policy type) since
// the counts were last taken.
type Counts struct {
	PolicyDomain string          // the recipient domain
	PolicyType   string          // "sts", "tlsa" or "no-policy-found" (RFC 8460 §4.2)
	PolicyString []string        // the policy's lines or the TLSA records, as last seen
	MXHosts      []string        // MX hosts sessions went to
	Success      uint64          // sessions that met the policy
	Failure      uint64          // sessions that did not
	Failures     []FailureDetail // failures by kind, host and address
	Since        time.Time       // when counting started
}

// FailureDetail is a number of failures of one kind with one host.
type FailureDetail struct {
	ResultType  string // RFC 8460 §4.3: "starttls-not-supported", "certificate-host-mismatch", ...
	ReceivingMX string // host name
	ReceivingIP string
	SendingIP   string // the relay's address of the session (sending-mta-ip)
	Reason      string // failure-reason-code: the last error text
	Count       uint64
}

// The policy types of a report (RFC 8460 §4.2): an MTA-STS policy, DANE
// TLSA records, or none.
const (
	PolicySTS  = "sts"
	PolicyTLSA = "tlsa"
	PolicyNone = "no-policy-found"
)

type tlsKey struct{ domain, typ string }

type failKey struct{ result, mx, ip, sendIP string }

type tlsTally struct {
	policy   []string
	mx       map[string]bool
	success  uint64
	failure  uint64
	failures map[failKey]*FailureDetail
	since    time.Time
}

// Stats is the agent's tally; its methods are safe for concurrent use. The
// zero value is ready to use. Past maxTLSDomains policies, new ones are not
// counted until the counts are taken.
type Stats struct {
	mu  sync.Mutex
	Now func() time.Time // the clock; nil: time.Now
	m   map[tlsKey]*tlsTally
}

// maxTLSDomains bounds the tally: past it, new domains are not counted
// until the counts are taken.
const maxTLSDomains = 100000

func (s *Stats) entry(domain, typ string, policy []string) *tlsTally {
	if domain == "" {
		return nil // not counted: a message with TLS-Required: No
	}
	if s.m == nil {
		s.m = make(map[tlsKey]*tlsTally)
	}
	k := tlsKey{domain, typ}
	t := s.m[k]
	if t == nil {
		if len(s.m) >= maxTLSDomains {
			return nil
		}
		now := time.Now()
		if s.Now != nil {
			now = s.Now()
		}
		t = &tlsTally{mx: map[string]bool{}, failures: map[failKey]*FailureDetail{}, since: now}
		s.m[k] = t
	}
	if policy != nil {
		t.policy = policy
	}
	return t
}

// AddSuccess counts a session to mx that met its policy: domain is the
// policy domain ("" counts nothing), typ the policy type (PolicySTS, ...),
// policy its lines or records (nil keeps those last seen).
func (s *Stats) AddSuccess(domain, typ string, policy []string, mx string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if t := s.entry(domain, typ, policy); t != nil {
		t.success++
		t.noteMX(typ, mx)
	}
}

// noteMX records the mx-host of the report's policy (RFC 8460 §4.4): for
// an MTA-STS policy the policy's own "mx" patterns (as in the RFC's
// example, "*.mail.company-y.example"), otherwise the host the session
// went to. The host itself is in each failure's receiving-mx-hostname.
func (t *tlsTally) noteMX(typ, mx string) {
	if typ == PolicySTS {
		found := false
		for _, l := range t.policy {
			if k, v, ok := strings.Cut(l, ":"); ok && strings.TrimSpace(k) == "mx" {
				t.mx[strings.TrimSpace(v)], found = true, true
			}
		}
		if found {
			return
		}
	}
	if mx != "" {
		t.mx[mx] = true
	}
}

// AddFailure counts a session that did not meet its policy (domain, typ,
// policy and mx as for AddSuccess): ip is the server's address, sendIP the
// relay's, result the RFC 8460 §4.3 result type and reason the
// failure-reason-code.
func (s *Stats) AddFailure(domain, typ string, policy []string, mx, ip, sendIP, result, reason string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	t := s.entry(domain, typ, policy)
	if t == nil {
		return
	}
	t.failure++
	t.noteMX(typ, mx)
	k := failKey{result, mx, ip, sendIP}
	f := t.failures[k]
	if f == nil {
		f = &FailureDetail{ResultType: result, ReceivingMX: mx, ReceivingIP: ip, SendingIP: sendIP}
		t.failures[k] = f
	}
	f.Count++
	f.Reason = reason
}

// Results returns the TLS outcomes counted per policy domain, sorted by
// domain and type; with reset, counting starts afresh (a daily TLS report
// job takes them once a day).
func (s *Stats) Results(reset bool) []Counts {
	s.mu.Lock()
	m := s.m
	if reset {
		s.m = nil
	}
	var out []Counts
	for k, t := range m {
		c := Counts{PolicyDomain: k.domain, PolicyType: k.typ, PolicyString: t.policy,
			Success: t.success, Failure: t.failure, Since: t.since}
		for mx := range t.mx {
			c.MXHosts = append(c.MXHosts, mx)
		}
		slices.Sort(c.MXHosts)
		for _, f := range t.failures {
			c.Failures = append(c.Failures, *f)
		}
		slices.SortFunc(c.Failures, func(x, y FailureDetail) int {
			return strings.Compare(x.ResultType+x.ReceivingMX+x.ReceivingIP+" "+x.SendingIP, y.ResultType+y.ReceivingMX+y.ReceivingIP+" "+y.SendingIP)
		})
		out = append(out, c)
	}
	s.mu.Unlock()
	slices.SortFunc(out, func(x, y Counts) int {
		return strings.Compare(x.PolicyDomain+" "+x.PolicyType, y.PolicyDomain+" "+y.PolicyType)
	})
	return out
}
