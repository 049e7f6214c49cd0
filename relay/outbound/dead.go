package outbound

import (
	"slices"
	"time"

	"github.com/mailhop/mailhop/relay/config"
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
	until time.Time
	// seq is the queue's FlushSeq as the attempt that marked it began: a
	// flush since of a domain whose mail goes there (or of all) ends it.
	seq uint64
	err *smtperr.Error
}

// destination returns what the dead rule knows mail to domain by: the
// domain, when its mail goes to its MX hosts; for a domain that a
// [[route]] sends to smarthosts, those smarthosts as the route reaches them
// (routeID: "[host:port ...]", its tls mode and user when set; no domain's name),
// one destination for every domain routed there, as Postfix's queue
// manager keys a destination by its nexthop. A smarthost's failure is no
// failure of the domain whose mail it was carrying, and its answer to any
// domain's mail shows that it works: known by the recipient domain, a
// stalled smarthost was found dead one domain at a time (each domain's
// mail waiting a timeout first, with "*" up to delivery.concurrency
// sessions stalled at once), and one message a working smarthost was slow
// with suspended all of that domain's mail. Routes to the same smarthosts
// with another user or TLS mode are other destinations: one whose
// password the smarthost refuses does not suspend the other's mail.
func (a *Agent) destination(cfg *config.Config, domain string) string {
	if r := cfg.RouteFor(domain); r != nil && len(smarthosts(r)) > 0 {
		return a.routeID(cfg, r)
	}
	return domain
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

// domainState is what the agent knows of a destination while attempts to
// it are under way: the entry lives from the start of the first to the end
// of the last (attemptStart).
type domainState struct {
	attempts int // deliverGroup calls under way
	live     int // sessions under way that their server greeted
	// answered counts the transactions whose every recipient got a reply
	// from the server (delivered, deferred or refused): proof that the
	// destination's servers work, which a greeting is not.
	answered uint64
}

// attemptMark is what markDead needs to know of the attempt that failed,
// taken as it began (attemptStart).
type attemptMark struct {
	seq      uint64 // a.q.FlushSeq()
	answered uint64 // domainState.answered
}

// attemptStart counts an attempt to dest (a destination) under way until
// the returned func is called, and returns its mark for markDead.
func (a *Agent) attemptStart(dest string) (attemptMark, func()) {
	m := attemptMark{seq: a.q.FlushSeq()}
	a.mu.Lock()
	st := a.doms[dest]
	if st == nil {
		st = &domainState{}
		a.doms[dest] = st
	}
	st.attempts++
	m.answered = st.answered
	a.mu.Unlock()
	return m, func() {
		a.mu.Lock()
		if st.attempts--; st.attempts <= 0 {
			delete(a.doms, dest)
		}
		a.mu.Unlock()
	}
}

// markDead records dest, the destination of mail to domain (see
// destination), as dead, with e, the reason its mail is deferred, for the
// first retry interval less its jitter (-10%): the earliest any mail
// deferred now is tried again, so that attempt is a real one, not another
// deferral. A destination already dead stays dead until the time it was
// given (attempts under way when it was marked fail after, and lengthening
// it would suspend the mail deferred first once more).
//
// A destination whose servers showed they work is not dead: a transaction
// to it was answered since the attempt began (m), or a connection that
// carried its mail is idle in the pool. Nor is one with a session under way
// that its server greeted (a server that limits connections per client
// answers the others with 421) — unless the attempt waited out a timeout
// in a session its server greeted (timedOut): a session under way may be
// stalling just the same, and sessions that stall must not keep each other
// alive (with mail coming in, each slot a timeout freed started a session
// that kept the domain alive for the next timeout, and it was never dead);
// the timeout was long enough for a working server to answer some
// transaction meanwhile. A connection or greeting that timed out is no
// such stall: it says nothing of the greeted sessions under way, and a
// server limiting connections per client that is busy with slow messages
// answers no transaction within a connect timeout.
//
// m.seq is the queue's FlushSeq as the attempt began: one that began
// before a queue flush of domain (or of all) does not mark it (its lookup
// or connections may have been cut or stalled before the operator
// repaired what the flush is for, and its mark would suspend the mail
// just flushed); see deadErr for other domains routed to dest.
func (a *Agent) markDead(dest, domain string, e *smtperr.Error, m attemptMark, timedOut bool) {
	attrs := []any{"domain", domain}
	if dest != domain {
		attrs = append(attrs, "destination", dest)
	}
	if a.q.LastFlush(domain) > m.seq {
		a.log.Debug("destination not marked dead: the queue was flushed during the attempt", append(attrs, "err", e.Error())...)
		return
	}
	wait := time.Minute
	if iv := a.config().RetryDurations(); len(iv) > 0 && iv[0] > 0 {
		wait = iv[0]
	}
	wait -= wait / 10
	now := a.now()
	d := deadDest{until: now.Add(wait), seq: m.seq, err: e}
	if a.pool.holds(dest) {
		a.log.Debug("destination stays alive: a connection to it is idle in the pool", append(attrs, "err", e.Error())...)
		return
	}
	a.mu.Lock()
	alive := ""
	switch st := a.doms[dest]; {
	case st != nil && st.answered != m.answered:
		alive = "a transaction to it was answered during the attempt"
	case st != nil && st.live > 0 && !timedOut:
		alive = "a session to it is under way"
	}
	if alive != "" {
		a.mu.Unlock()
		a.log.Debug("destination stays alive: "+alive, append(attrs, "err", e.Error())...)
		return
	}
	if cur, ok := a.dead[dest]; ok && now.Before(cur.until) && cur.seq == d.seq {
		a.mu.Unlock()
		return
	}
	if _, ok := a.dead[dest]; !ok && len(a.dead) >= maxDead {
		makeRoom(a.dead, maxDead, now, func(d deadDest) time.Time { return d.until })
	}
	a.dead[dest] = d
	a.mu.Unlock()
	a.log.Info("destination marked dead: its other mail is deferred without a connection until then (or a queue flush)",
		append(attrs, "until", d.until.UTC().Format(time.RFC3339), "err", e.Error())...)
}

// sessionUp counts a session to dest (a destination) that its server
// greeted, until the returned func is called (see markDead). It is called
// within an attempt to dest (attemptStart).
func (a *Agent) sessionUp(dest string) (down func()) {
	a.mu.Lock()
	st := a.doms[dest]
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

// answered notes a transaction to dest (a destination) whose every
// recipient got the server's reply, within an attempt to it
// (attemptStart): its servers work, so it is not dead (a mark made
// meanwhile ends). A greeting does not end it: a server may greet and then
// stall every session.
func (a *Agent) answered(dest string) {
	a.mu.Lock()
	if st := a.doms[dest]; st != nil {
		st.answered++
	}
	delete(a.dead, dest)
	a.mu.Unlock()
}

// deadErr returns the deferral for mail to domain while its destination
// (see destination) is dead, else nil. A flush of domain (or of all) since
// the attempt that marked it began ends the mark: for a route's
// smarthosts, a flush of any domain routed to them, as the operator asks
// for their mail to go now.
func (a *Agent) deadErr(domain string) *smtperr.Error {
	cfg := a.config()
	dest := a.destination(cfg, domain)
	a.mu.Lock()
	d, ok := a.dead[dest]
	a.mu.Unlock()
	if !ok {
		return nil
	}
	if !a.now().Before(d.until) || a.q.LastFlush(domain) > d.seq {
		a.mu.Lock()
		if cur, ok := a.dead[dest]; ok && cur == d {
			delete(a.dead, dest)
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
