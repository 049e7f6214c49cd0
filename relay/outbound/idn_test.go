package outbound

import (
	"context"
	"strings"
	"sync"
	"testing"

	"github.com/mailhop/mailhop/dnsmx/mtasts"
	"github.com/mailhop/mailhop/internal/idn"
	"github.com/mailhop/mailhop/queue"
	"github.com/mailhop/mailhop/relay/config"
	"github.com/mailhop/mailhop/relay/outbound/smtptest"
)

// stsAsked is an STSGetter that has no policy and records the domains it
// was asked about.
type stsAsked struct {
	mu      sync.Mutex
	domains []string
}

func (s *stsAsked) Get(_ context.Context, domain string) (*mtasts.Policy, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.domains = append(s.domains, domain)
	return nil, mtasts.ErrNoPolicy
}

// TestTLSPolicy_UnicodeDomain_SamePolicyAsALabel: a recipient domain
// written in Unicode gets the [[tls_policy]] and the MTA-STS lookup of its
// A-label, so the spelling cannot lower TLS.
func TestTLSPolicy_UnicodeDomain_SamePolicyAsALabel(t *testing.T) {
	t.Parallel()
	const alabel = "xn--mller-kva.test" // müller.test
	if got := idn.Key("MÜLLER.test"); got != alabel {
		t.Fatalf("idn.Key = %q", got)
	}
	h := newHarness(t, smtptest.Behaviour{SMTPUTF8: true}, zone(alabel, "127.0.0.2")) // no STARTTLS
	h.cfg.TLSPolicies = []config.TLSPolicy{{Domains: []string{alabel}, Level: config.TLSVerify}}
	sts := &stsAsked{}
	h.editOpts = func(o *Options) { o.MTASTS = sts }
	h.start()
	id := h.submit(testBody, []string{"u@müller.test", "v@" + alabel}, func(e *queue.Envelope) { e.SMTPUTF8 = true })
	h.waitRecords(id, 1)
	if n := len(h.first.Messages()); n != 0 {
		t.Fatalf("%d messages delivered in plain text under a verify policy", n)
	}
	env := h.envelope(id)
	if env == nil {
		t.Fatal("message left the queue")
	}
	for _, r := range env.Recipients {
		if r.State != queue.Pending || !strings.HasPrefix(r.Reply, "4.7.4") {
			t.Errorf("%s: state %v reply %q, want pending with 4.7.4", r.Address, r.State, r.Reply)
		}
	}
	if line := h.lastAttempt(alabel); !strings.Contains(line, "tls_policy=verify") {
		t.Errorf("attempt: %s", line)
	}
	sts.mu.Lock()
	defer sts.mu.Unlock()
	if len(sts.domains) != 1 || sts.domains[0] != alabel {
		t.Errorf("MTA-STS asked for %q, want [%s] (one group for both spellings)", sts.domains, alabel)
	}
}
