package outbound

import (
	"slices"
	"time"

	"github.com/mailhop/mailhop/relay/smtperr"
)

// deadDest is a destination no host of which answered an attempt: until
// its time is up, its other mail is deferred without a connection (Postfix
// marks such a destination dead and defers its queue with "delivery
// temporarily suspended"). Without it each message to a dead domain waited
// its own connect or greeting timeout in turn, its domain's connection
// slots taken the whole time.
type deadDest struct {
	until   time.Time
	flushes uint64 // Agent.flushes(domain) when marked: a flush of it (or of all) ends it
	err     *smtperr.Error
}

// maxDead bounds the dead destinations remembered, and maxNoTLS the hosts
// reached without STARTTLS: a flood of mail to distinct failing domains
// or hosts cannot grow them past it (see makeRoom).
const (
	maxDead  = 100_000
	maxNoTLS = 100_000
)

// makeRoom makes room in m, a map of entries that expire at until(v) and
// holds limit or more, for one more: those whose time is up go, then, while
// more than nine tenths of limit are left, those that expire soonest. The
// next insert to need it comes a tenth of limit later, so its passes over
// m cost little per insert.
func makeRoom[K comparable, V any](m map[K]V, limit int, now time.Time, until func(V) time.Time) {
	for k, v := range m {
		if !now.Before(until(v)) {
			delete(m, k)
		}
	}
	n := len(m) - (limit - limit/10) // how many more to evict
	if n <= 0 {
		return
	}
	ts := make([]time.Time, 0, len(m))
	for _, v := range m {
		ts = append(ts, until(v))
	}
	slices.SortFunc(ts, time.Time.Compare)
	cut := ts[n-1]
	// Those before cut go, and as many as are needed of those at cut.
	atCut := n - slices.IndexFunc(ts, func(t time.Time) bool { return t.Equal(cut) })
	for k, v := range m {
		switch u := until(v); {
		case u.Before(cut):
			delete(m, k)
		case u.Equal(cut) && atCut > 0:
			delete(m, k)
			atCut--
		}
	}
}

// markDead records domain as dead, with e, the reason its mail is
// deferred, for the first retry interval less its jitter (-10%): the
// earliest any mail deferred now is tried again, so that attempt is a
// real one, not another deferral. A domain already dead stays dead until
// the time it was given (attempts under way when it was marked fail after,
// and lengthening it would suspend the mail deferred first once more); a
// domain with a session under way that its server greeted, or with such a
// connection idle in the pool, is not dead (a server that limits
// connections per client answers the others with 421).
//
// flushes is a.q.Flushes(domain) as the attempt that failed began: one
// that began before a queue flush does not mark the domain (its lookup or
// connections may have been cut or stalled before the operator repaired
// what the flush is for, and its mark would suspend the mail just flushed).
func (a *Agent) markDead(domain string, e *smtperr.Error, flushes uint64) {
	if a.q.Flushes(domain) != flushes {
		a.log.Debug("destination not marked dead: the queue was flushed during the attempt", "domain", domain, "err", e.Error())
		return
	}
	wait := time.Minute
	if iv := a.config().RetryDurations(); len(iv) > 0 && iv[0] > 0 {
		wait = iv[0]
	}
	wait -= wait / 10
	now := a.now()
	d := deadDest{until: now.Add(wait), flushes: flushes, err: e}
	if a.pool.holds(domain) {
		a.log.Debug("destination stays alive: a connection to it is idle in the pool", "domain", domain, "err", e.Error())
		return
	}
	a.mu.Lock()
	if a.live[domain] > 0 {
		a.mu.Unlock()
		a.log.Debug("destination stays alive: a session to it is under way", "domain", domain, "err", e.Error())
		return
	}
	if cur, ok := a.dead[domain]; ok && now.Before(cur.until) && cur.flushes == d.flushes {
		a.mu.Unlock()
		return
	}
	if _, ok := a.dead[domain]; !ok && len(a.dead) >= maxDead {
		makeRoom(a.dead, maxDead, now, func(d deadDest) time.Time { return d.until })
	}
	a.dead[domain] = d
	a.mu.Unlock()
	a.log.Info("destination marked dead: its other mail is deferred without a connection until then (or a queue flush)",
		"domain", domain, "until", d.until.UTC().Format(time.RFC3339), "err", e.Error())
}

// sessionUp counts a session to domain that its server greeted, until the
// returned func is called: the domain is alive, not dead (a mark made
// while the session was connecting ends).
func (a *Agent) sessionUp(domain string) (down func()) {
	a.mu.Lock()
	a.live[domain]++
	delete(a.dead, domain)
	a.mu.Unlock()
	return func() {
		a.mu.Lock()
		if a.live[domain]--; a.live[domain] <= 0 {
			delete(a.live, domain)
		}
		a.mu.Unlock()
	}
}

// deadErr returns the deferral for mail to domain while it is a dead
// destination, else nil.
func (a *Agent) deadErr(domain string) *smtperr.Error {
	a.mu.Lock()
	d, ok := a.dead[domain]
	a.mu.Unlock()
	if !ok {
		return nil
	}
	if !a.now().Before(d.until) || d.flushes != a.q.Flushes(domain) {
		a.mu.Lock()
		if cur, ok := a.dead[domain]; ok && cur == d {
			delete(a.dead, domain)
		}
		a.mu.Unlock()
		return nil
	}
	return &smtperr.Error{Code: d.err.Code, Enhanced: d.err.Enhanced, Msg: "delivery temporarily suspended: " + d.err.Msg}
}

// suspended defers t's recipients with e, a dead destination's deferral.
func (a *Agent) suspended(t *txn, domain string, e *smtperr.Error) groupResult {
	return groupResult{domain: domain, err: e, rcpts: allPending(t.rcpts, e)}
}
