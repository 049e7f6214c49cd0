package outbound

import (
	"testing"

	"github.com/mailhop/mailhop/relay/outbound/smtptest"
)

// The TLS report counts and the period's start survive a restart of the
// agent, and are not doubled by another one.
func TestTLSCounts_SurviveARestart(t *testing.T) {
	t.Parallel()
	h := newHarness(t, smtptest.Behaviour{}, nil)
	h.cfg.DataDir = t.TempDir()
	h.start()
	h.agent.tlsrpt.mu.Lock()
	start := h.agent.tlsrpt.start
	h.agent.tlsrpt.mu.Unlock()
	policy := []string{"version: STSv1", "mode: enforce", "mx: mx.example.test"}
	h.agent.tlsStats.AddSuccess("example.test", policySTS, policy, "mx.example.test")
	h.agent.tlsStats.AddFailure("example.test", policySTS, policy, "mx.example.test", "192.0.2.1", "192.0.2.9", "certificate-expired", "expired")
	for range 2 {
		h.stop()
		h.start()
		got := h.agent.TLSResults(false)
		if len(got) != 1 || got[0].Success != 1 || got[0].Failure != 1 || len(got[0].Failures) != 1 ||
			got[0].Failures[0].Count != 1 || got[0].Failures[0].ReceivingIP != "192.0.2.1" || got[0].Failures[0].SendingIP != "192.0.2.9" || len(got[0].PolicyString) != 3 {
			t.Fatalf("counts after a restart: %+v", got)
		}
		h.agent.tlsrpt.mu.Lock()
		s := h.agent.tlsrpt.start
		h.agent.tlsrpt.mu.Unlock()
		if !s.Equal(start) {
			t.Errorf("period start %v after a restart, want %v", s, start)
		}
	}
}
