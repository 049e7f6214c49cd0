package outbound

import (
	"slices"
	"time"

	"github.com/mailhop/mailhop/relay/smtperr"
)

// deadDest is a destination every host of which failed an attempt as a
// site (no answer, or a greeted session that then timed out or lost its
// connection before any transaction was answered): until its time is up,
// its other mail is deferred without a connection (Postfix marks such a
// destination dead and defers its queue with "delivery temporarily
// suspended"). Without it each message to a dead domain waited its own
// timeout in turn, its domain's connection slots taken the whole time.
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

// domainState is what the agent knows of a domain while attempts to it
// are under way: the entry lives from the start of the first to the end
// of the last (attemptStart).
type domainState struct {
	attempts int // deliverGroup calls under way
	live     int // sessions under way that their server greeted
	// answered counts the transactions whose every recipient got a reply
	// from the server (delivered, deferred or refused): proof that the
	// domain's servers work, which a greeting is not.
	answered uint64
}

// attemptMark is what markDead needs to know of the attempt that failed,
// taken as it began (attemptStart).
type attemptMark struct {
	flushes  uint64 // a.q.Flushes(domain)
	answered uint64 // domainState.answered
}

// attemptStart counts an attempt to domain under way until the returned
// func is called, and returns its mark for markDead.
func (a *Agent) attemptStart(domain string) (attemptMark, func()) {
	m := attemptMark{flushes: a.q.Flushes(domain)}
	a.mu.Lock()
	st := a.doms[domain]
	if st == nil {
		st = &domainState{}
		a.doms[domain] = st
	}
	st.attempts++
	m.answered = st.answered
	a.mu.Unlock()
	return m, func() {
		a.mu.Lock()
		if st.attempts--; st.attempts <= 0 {
			delete(a.doms, domain)
		}
		a.mu.Unlock()
	}
}

// markDead records domain as dead, with e, the reason its mail is
// deferred, for the first retry interval less its jitter (-10%): the
// earliest any mail deferred now is tried again, so that attempt is a
// real one, not another deferral. A domain already dead stays dead until
// the time it was given (attempts under way when it was marked fail after,
// and lengthening it would suspend the mail deferred first once more).
//
// A domain whose servers showed they work is not dead: a transaction to it
// was answered since the attempt began (m), or a connection that carried
// its mail is idle in the pool. Nor is one with a session under way that
// its server greeted (a server that limits connections per client answers
// the others with 421) — unless the attempt waited out a timeout in a
// session its server greeted (timedOut): a session under way may be
// stalling just the same, and sessions that stall must not keep each other
// alive (with mail coming in, each slot a timeout freed started a session
// that kept the domain alive for the next timeout, and it was never dead);
// the timeout was long enough for a working server to answer some
// transaction meanwhile. A connection or greeting that timed out is no
// such stall: it says nothing of the greeted sessions under way, and a
// server limiting connections per client that is busy with slow messages
// answers no transaction within a connect timeout.
//
// m.flushes is a.q.Flushes(domain) as the attempt began: one that began
// before a queue flush does not mark the domain (its lookup or connections
// may have been cut or stalled before the operator repaired what the flush
// is for, and its mark would suspend the mail just flushed).
func (a *Agent) markDead(domain string, e *smtperr.Error, m attemptMark, timedOut bool) {
	if a.q.Flushes(domain) != m.flushes {
		a.log.Debug("destination not marked dead: the queue was flushed during the attempt", "domain", domain, "err", e.Error())
		return
	}
	wait := time.Minute
	if iv := a.config().RetryDurations(); len(iv) > 0 && iv[0] > 0 {
		wait = iv[0]
	}
	wait -= wait / 10
	now := a.now()
	d := deadDest{until: now.Add(wait), flushes: m.flushes, err: e}
	if a.pool.holds(domain) {
		a.log.Debug("destination stays alive: a connection to it is idle in the pool", "domain", domain, "err", e.Error())
		return
	}
	a.mu.Lock()
	alive := ""
	switch st := a.doms[domain]; {
	case st != nil && st.answered != m.answered:
		alive = "a transaction to it was answered during the attempt"
	case st != nil && st.live > 0 && !timedOut:
		alive = "a session to it is under way"
	}
	if alive != "" {
		a.mu.Unlock()
		a.log.Debug("destination stays alive: "+alive, "domain", domain, "err", e.Error())
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
// returned func is called (see markDead). It is called within an attempt
// to domain (attemptStart).
func (a *Agent) sessionUp(domain string) (down func()) {
	a.mu.Lock()
	st := a.doms[domain]
	if st == nil { // not within an attempt: nothing to keep alive
		a.mu.Unlock()
		return func() {}
	}
	st.live++
	a.mu.Unlock()
	return func() {
		a.mu.Lock()
		st.live--
		a.mu.Unlock()
	}
}

// answered notes a transaction to domain whose every recipient got the
// server's reply, within an attempt to it (attemptStart): its servers
// work, so it is not dead (a mark made meanwhile ends). A greeting does
// not end it: a server may greet and then stall every session.
func (a *Agent) answered(domain string) {
	a.mu.Lock()
	if st := a.doms[domain]; st != nil {
		st.answered++
	}
	delete(a.dead, domain)
	a.mu.Unlock()
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
