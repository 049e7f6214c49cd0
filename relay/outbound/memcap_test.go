package outbound

import (
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"sync"
	"testing"
	"time"

	"github.com/mailhop/mailhop/dnsmx"
	"github.com/mailhop/mailhop/queue"
	"github.com/mailhop/mailhop/relay/config"
	"github.com/mailhop/mailhop/relay/smtperr"
)

// memAgent returns an agent that never delivers (nor runs), for the tests
// of its memories and limits, and a function that moves its clock, which
// starts now, on by d. edit changes its configuration.
func memAgent(t *testing.T, edit ...func(*config.Config)) (*Agent, func(d time.Duration)) {
	t.Helper()
	q, err := queue.Open(t.TempDir(), queue.Options{RetryIntervals: []time.Duration{time.Hour}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { q.Close() })
	cfg := &config.Config{Hostname: "relay.test"}
	cfg.Delivery.Concurrency = 10
	cfg.Delivery.PerDomainConcurrency = 1
	cfg.Delivery.RetryIntervals = []config.Duration{{Duration: time.Hour}}
	for _, e := range edit {
		e(cfg)
	}
	var mu sync.Mutex
	clock := time.Now() // the queue's clock, which dates the mail
	now := func() time.Time { mu.Lock(); defer mu.Unlock(); return clock }
	r, err := dnsmx.NewResolver([]string{"127.0.23.1:23553"}, time.Second) // never asked
	if err != nil {
		t.Fatal(err)
	}
	a, err := New(Options{Config: cfg, Queue: q, Resolver: r, Now: now, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	return a, func(d time.Duration) { mu.Lock(); clock = clock.Add(d); mu.Unlock() }
}

// markDeadNow marks domain dead as an attempt that began now would.
func (a *Agent) markDeadNow(domain string, e *smtperr.Error) {
	m, end := a.attemptStart(domain)
	defer end()
	a.markDead(domain, domain, e, m, false)
}

// TestMemories_Capped: the dead destinations and the hosts reached without
// STARTTLS are bounded however many distinct ones fail before any expires
// (a flood of mail to failing domains grew both without bound: only expired
// entries were swept). Past the cap the soonest to expire go, the newest
// stay, and a key already there is updated without an eviction.
func TestMemories_Capped(t *testing.T) {
	t.Parallel()
	a, advance := memAgent(t)
	tick := func() { advance(time.Millisecond) }

	e := smtperr.New(0, "4.4.1", "connection refused")
	for i := range maxDead + 1 {
		a.markDeadNow(fmt.Sprintf("d%d.test", i), e)
		tick()
	}
	if n := len(a.dead); n > maxDead {
		t.Errorf("%d dead destinations remembered, want at most %d", n, maxDead)
	}
	if a.deadErr(fmt.Sprintf("d%d.test", maxDead)) == nil || a.deadErr("d0.test") != nil {
		t.Error("the newest dead destination was evicted, or the oldest kept")
	}

	addr := func(i int) netip.Addr { return netip.AddrFrom4([4]byte{10, byte(i >> 16), byte(i >> 8), byte(i)}) }
	for i := range maxNoTLS + 1 {
		a.rememberNoTLS(addr(i))
		tick()
	}
	if n := len(a.noTLS); n > maxNoTLS {
		t.Errorf("%d hosts remembered without STARTTLS, want at most %d", n, maxNoTLS)
	}
	if !a.knownNoTLS(addr(maxNoTLS)) || a.knownNoTLS(addr(0)) {
		t.Error("the newest host without STARTTLS was evicted, or the oldest kept")
	}
	n := len(a.noTLS)
	a.rememberNoTLS(addr(maxNoTLS)) // known: updated in place
	if len(a.noTLS) != n {
		t.Errorf("remembering a known host changed the count from %d to %d", n, len(a.noTLS))
	}
}

// TestMakeRoom_SameExpiry: entries that all expire at one time are evicted
// down to nine tenths of the cap, not all at once.
func TestMakeRoom_SameExpiry(t *testing.T) {
	t.Parallel()
	now := time.Date(2026, 11, 26, 4, 0, 0, 0, time.UTC)
	m := map[int]time.Time{}
	for i := range 1000 {
		m[i] = now.Add(time.Hour)
	}
	m[1000] = now // expired
	makeRoom(m, 1000, now, func(u time.Time) time.Time { return u })
	if len(m) != 900 {
		t.Errorf("%d entries left, want 900", len(m))
	}
}

// TestSweepMemories: the hourly sweep deletes the expired entries of both
// memories and keeps the others (a quiet relay kept expired ones until they
// were looked up or the cap was reached).
func TestSweepMemories(t *testing.T) {
	t.Parallel()
	a, advance := memAgent(t)
	e := smtperr.New(0, "4.4.1", "connection refused")
	old := netip.MustParseAddr("10.0.0.1")
	a.markDeadNow("old.test", e)
	a.rememberNoTLS(old)
	advance(noTLSFor + 24*time.Hour) // past both
	a.markDeadNow("new.test", e)
	a.rememberNoTLS(netip.MustParseAddr("10.0.0.2"))
	a.sweepMemories()
	if _, ok := a.dead["old.test"]; ok || len(a.dead) != 1 {
		t.Errorf("dead destinations after the sweep: %v, want new.test only", a.dead)
	}
	if _, ok := a.noTLS[old]; ok || len(a.noTLS) != 1 {
		t.Errorf("hosts without STARTTLS after the sweep: %v, want 10.0.0.2 only", a.noTLS)
	}
}
