package outbound

import (
	"slices"
	"strings"
	"sync"
	"time"
)

// TLS outcomes counted per policy domain, for TLS reporting (RFC 8460):
// every new connection that tried TLS (or was required to) counts one
// session, successful or failed; a reused connection is the same session.

// TLSCounts is the tally of one policy (a domain and a policy type) since
// the counts were last taken.
type TLSCounts struct {
	PolicyDomain string    // the recipient domain
	PolicyType   string    // "sts", "tlsa" or "no-policy-found" (RFC 8460 §4.2)
	PolicyString []string  // the policy's lines or the TLSA records, as last seen
	MXHosts      []string  // MX hosts sessions went to
	Success      uint64    // sessions that met the policy
	Failure      uint64    // sessions that did not
	Failures     []TLSFail // failures by kind, host and address
	Since        time.Time // when counting started
}

// TLSFail is a number of failures of one kind with one host.
type TLSFail struct {
	ResultType  string // RFC 8460 §4.3: "starttls-not-supported", "certificate-host-mismatch", ...
	ReceivingMX string // host name
	ReceivingIP string
	SendingIP   string // the relay's address of the session (sending-mta-ip)
	Reason      string // failure-reason-code: the last error text
	Count       uint64
}

type tlsKey struct{ domain, typ string }

type failKey struct{ result, mx, ip, sendIP string }

type tlsTally struct {
	policy   []string
	mx       map[string]bool
	success  uint64
	failure  uint64
	failures map[failKey]*TLSFail
	since    time.Time
}

// tlsStats is the agent's tally; its methods are safe for concurrent use.
type tlsStats struct {
	mu  sync.Mutex
	now func() time.Time
	m   map[tlsKey]*tlsTally
}

// maxTLSDomains bounds the tally: past it, new domains are not counted
// until the counts are taken.
const maxTLSDomains = 100000

func (s *tlsStats) entry(domain, typ string, policy []string) *tlsTally {
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
		if s.now != nil {
			now = s.now()
		}
		t = &tlsTally{mx: map[string]bool{}, failures: map[failKey]*TLSFail{}, since: now}
		s.m[k] = t
	}
	if policy != nil {
		t.policy = policy
	}
	return t
}

func (s *tlsStats) success(domain, typ string, policy []string, mx string) {
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
	if typ == policySTS {
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

func (s *tlsStats) failure(domain, typ string, policy []string, mx, ip, sendIP, result, reason string) {
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
		f = &TLSFail{ResultType: result, ReceivingMX: mx, ReceivingIP: ip, SendingIP: sendIP}
		t.failures[k] = f
	}
	f.Count++
	f.Reason = reason
}

// TLSResults returns the TLS outcomes counted per policy domain, sorted by
// domain and type; with reset, counting starts afresh (a daily TLS report
// job takes them once a day).
func (a *Agent) TLSResults(reset bool) []TLSCounts {
	s := &a.tlsStats
	s.mu.Lock()
	m := s.m
	if reset {
		s.m = nil
	}
	var out []TLSCounts
	for k, t := range m {
		c := TLSCounts{PolicyDomain: k.domain, PolicyType: k.typ, PolicyString: t.policy,
			Success: t.success, Failure: t.failure, Since: t.since}
		for mx := range t.mx {
			c.MXHosts = append(c.MXHosts, mx)
		}
		slices.Sort(c.MXHosts)
		for _, f := range t.failures {
			c.Failures = append(c.Failures, *f)
		}
		slices.SortFunc(c.Failures, func(x, y TLSFail) int {
			return strings.Compare(x.ResultType+x.ReceivingMX+x.ReceivingIP+" "+x.SendingIP, y.ResultType+y.ReceivingMX+y.ReceivingIP+" "+y.SendingIP)
		})
		out = append(out, c)
	}
	s.mu.Unlock()
	slices.SortFunc(out, func(x, y TLSCounts) int {
		return strings.Compare(x.PolicyDomain+" "+x.PolicyType, y.PolicyDomain+" "+y.PolicyType)
	})
	return out
}
