// Package queue is mailhop's durable mail queue: it keeps every accepted
// message until each of its recipients is delivered or has failed, and
// decides when each message is tried next.
//
// The life of a message:
//
//  1. Enqueue stores envelope and body; it returns only when both are on
//     stable storage (this is what lets the SMTP server answer 250).
//  2. The message is due at once. Next hands it to the delivery agent and
//     no one else until Done (or Requeue).
//  3. Done records the attempt's outcome per recipient (durably);
//     DoneWithReports also queues the reports (DSNs) it calls for, in the
//     same atomic commit. Recipients still Pending are tried again after
//     the next retry interval (Options.RetryIntervals, the last repeating,
//     with ±10% jitter). When none is Pending the message leaves the queue.
//
// Scheduling is one min-heap of due times under one mutex: a million
// deferred messages are a million small heap entries, not goroutines or
// timers. Only Enqueue, Done, DoneWithReports, Hold, Release and Delete
// write to storage; Flush and Requeue change the in-memory schedule only
// (after a restart every message is due at its last recorded time).
package queue

import (
	"container/heap"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"math/rand/v2"
	"path/filepath"
	"slices"
	"sync"
	"time"

	"github.com/mailhop/mailhop/internal/idn"
)

// ErrNotFound is returned for a queue ID that is not (or no longer) queued.
var ErrNotFound = errors.New("queue: no such message")

// ErrClosed is returned after Close.
var ErrClosed = errors.New("queue: closed")

// ErrBusy is returned by Claim for a message that is being delivered.
var ErrBusy = errors.New("queue: message is being delivered")

// Options configures a Queue.
type Options struct {
	// RetryIntervals are the waits between attempts; the last one repeats.
	// Empty: 1m, 5m, 15m, 30m, 1h, 2h, 4h.
	RetryIntervals []time.Duration
	// Logger receives recovery and storage events. Nil: slog.Default().
	Logger *slog.Logger
	// Now is the clock. Nil: time.Now.
	Now func() time.Time
	// Store replaces the embedded LogStore (which Open creates in dir).
	Store Store
	// ReadOnly opens the embedded LogStore with OpenLogStoreReadOnly.
	ReadOnly bool
}

// DefaultRetryIntervals is used when Options.RetryIntervals is empty.
var DefaultRetryIntervals = []time.Duration{time.Minute, 5 * time.Minute, 15 * time.Minute,
	30 * time.Minute, time.Hour, 2 * time.Hour, 4 * time.Hour}

// Queue is the durable queue. Its methods are safe for concurrent use.
type Queue struct {
	store Store
	opts  Options
	ids   idGen

	mu     sync.Mutex
	sched  map[string]*slot
	heap   slotHeap
	wake   chan struct{} // closed and replaced when the heap changes
	closed bool
	// Each Flush call gets the next number, flushSeq (see LastFlush):
	// allFlushed is the number of the last flush of every domain,
	// domainFlushes that of the last flush of each domain flushed alone,
	// so the agent can forget what it learnt about a dead destination when
	// an operator asks for its retry now. domainFlushes holds at most
	// maxDomainFlushes domains (see Flush).
	flushSeq      uint64
	allFlushed    uint64
	domainFlushes map[string]uint64
}

// maxDomainFlushes bounds the domains whose flushes are counted one by
// one: a script flushing domain after domain (every domain of a queue
// list, thousands of them) grew the map by one entry each, for the life
// of the process.
const maxDomainFlushes = 10_000

// slot is the scheduler's view of one message.
type slot struct {
	id       string
	due      time.Time
	idx      int // in heap, -1 when not
	held     bool
	inflight bool
	parked   bool     // given back by Park: out of the heap until Unpark (or its until)
	domains  []string // of pending recipients (domainKey), for Flush(domain)
	pending  int      // recipients still pending
	attempts int      // attempts made, and whether a delay DSN went out:
	warned   bool     // Done needs them without copying the envelope
}

// Open opens (creating if needed) the queue stored in dir and recovers every
// message found there.
func Open(dir string, opts Options) (*Queue, error) {
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	if len(opts.RetryIntervals) == 0 {
		opts.RetryIntervals = DefaultRetryIntervals
	}
	store := opts.Store
	if store == nil {
		var err error
		open := OpenLogStore
		if opts.ReadOnly {
			open = OpenLogStoreReadOnly
		}
		if store, err = open(filepath.Clean(dir), opts.Logger); err != nil {
			return nil, err
		}
	}
	q := &Queue{store: store, opts: opts, sched: make(map[string]*slot), wake: make(chan struct{})}
	q.ids.now = opts.Now
	for _, env := range store.Messages() {
		q.ids.observe(env.ID)
		q.schedule(env)
	}
	return q, nil
}

// schedule adds env to the scheduler. Called under mu, or before sharing.
func (q *Queue) schedule(env *Envelope) {
	s := &slot{id: env.ID, due: env.NextAttempt, idx: -1, held: env.Held, domains: pendingDomains(env),
		pending: env.Pending(), attempts: env.Attempts, warned: env.DelayWarned}
	q.sched[env.ID] = s
	q.ready(s)
}

// ready puts s into the heap at s.due, or moves it there, unless it is
// held or in flight; it reports whether s is in the heap. Called under mu;
// the caller signals.
func (q *Queue) ready(s *slot) bool {
	if s.held || s.inflight || s.parked {
		return false
	}
	if s.idx >= 0 {
		heap.Fix(&q.heap, s.idx)
	} else {
		heap.Push(&q.heap, s)
	}
	return true
}

func pendingDomains(env *Envelope) []string {
	var ds []string
	for i := range env.Recipients {
		if env.Recipients[i].State != Pending {
			continue
		}
		d := idn.Key(env.Recipients[i].Domain())
		found := false
		for _, x := range ds {
			if x == d {
				found = true
				break
			}
		}
		if !found {
			ds = append(ds, d)
		}
	}
	return ds
}

// signal wakes Next. Called under mu.
func (q *Queue) signal() {
	close(q.wake)
	q.wake = make(chan struct{})
}

// Close stops the queue; Next returns ErrClosed afterwards.
func (q *Queue) Close() error {
	q.mu.Lock()
	if q.closed {
		q.mu.Unlock()
		return nil
	}
	q.closed = true
	q.signal()
	q.mu.Unlock()
	return q.store.Close()
}

// NewID returns a fresh queue ID: unique, and sorting by arrival.
func (q *Queue) NewID() string { return q.ids.next() }

// Enqueue stores a new message durably. env.ID must come from NewID (or be
// empty, and is then assigned). body is read to EOF; an error reading it
// aborts the message and is returned (wrapped: errors.Is/As see it). When
// Enqueue returns nil the envelope and body are on stable storage.
// env.Size is set from the bytes stored.
func (q *Queue) Enqueue(env *Envelope, body io.Reader) error {
	if err := q.prepare(env); err != nil {
		return err
	}
	if err := q.store.Put(env, body); err != nil {
		return err
	}
	q.mu.Lock()
	defer q.mu.Unlock()
	q.add(env)
	return nil
}

// prepare checks a new message and fills in its ID and schedule.
func (q *Queue) prepare(env *Envelope) error {
	if env.ID == "" {
		env.ID = q.NewID()
	}
	if !validID(env.ID) {
		return fmt.Errorf("queue: bad message id %q", env.ID)
	}
	if len(env.Recipients) == 0 {
		return errors.New("queue: message without recipients")
	}
	if env.Arrived.IsZero() {
		env.Arrived = q.opts.Now()
	}
	env.NextAttempt = env.Arrived
	return nil
}

// add schedules a new message that is stored. Called under mu.
func (q *Queue) add(env *Envelope) {
	if _, dup := q.sched[env.ID]; !dup && !q.closed {
		q.schedule(env)
		q.signal()
	}
}

// Body is a reader over one stored message body.
type Body interface {
	io.Reader
	io.ReaderAt
	io.Closer
	Size() int64
}

// Body opens the body of a queued message.
func (q *Queue) Body(id string) (Body, error) { return q.store.Body(id) }

// Next blocks until a message is due for delivery (not held, not already
// handed out, NextAttempt reached) and returns a copy of its envelope. The
// message stays handed out until Done is called for it.
func (q *Queue) Next(ctx context.Context) (*Envelope, error) {
	var timer *time.Timer
	defer func() {
		if timer != nil {
			timer.Stop()
		}
	}()
	for {
		q.mu.Lock()
		if q.closed {
			q.mu.Unlock()
			return nil, ErrClosed
		}
		wait := time.Duration(-1)
		if len(q.heap) > 0 {
			s := q.heap[0]
			wait = s.due.Sub(q.opts.Now())
			if wait <= 0 {
				heap.Pop(&q.heap)
				s.inflight, s.parked = true, false
				q.mu.Unlock()
				env, err := q.store.Get(s.id)
				if err != nil { // deleted meanwhile
					q.mu.Lock()
					delete(q.sched, s.id)
					q.mu.Unlock()
					continue
				}
				return env, nil
			}
		}
		wake := q.wake
		q.mu.Unlock()
		var tc <-chan time.Time
		if wait > 0 {
			if timer == nil {
				timer = time.NewTimer(wait)
			} else {
				timer.Reset(wait)
			}
			tc = timer.C
		}
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-wake:
		case <-tc:
		}
	}
}

// Claim hands out one message now, whatever its schedule (for an operator's
// `bounce`); it fails with ErrBusy if the message is already handed out.
func (q *Queue) Claim(id string) (*Envelope, error) {
	q.mu.Lock()
	s, ok := q.sched[id]
	if !ok {
		q.mu.Unlock()
		return nil, ErrNotFound
	}
	if s.inflight {
		q.mu.Unlock()
		return nil, ErrBusy
	}
	if s.idx >= 0 {
		heap.Remove(&q.heap, s.idx)
	}
	s.inflight, s.parked = true, false
	q.mu.Unlock()
	env, err := q.store.Get(id)
	if err != nil {
		q.mu.Lock()
		delete(q.sched, id)
		q.mu.Unlock()
	}
	return env, err
}

// RcptUpdate is the outcome of one attempt for one recipient.
type RcptUpdate struct {
	Index int // into Envelope.Recipients
	State RcptState
	Code  int
	Reply string
}

// Result is the outcome of one delivery attempt of a handed-out message.
type Result struct {
	Recipients  []RcptUpdate
	LastError   string
	DelayWarned bool      // set once a delay DSN has been queued
	RetryAt     time.Time // zero: from RetryIntervals and the attempt count, with jitter
	// RetryBy, when after now, is the latest time for the next attempt
	// from RetryIntervals: a message whose delay warning or expiry falls
	// before its next retry is tried then, not an interval later.
	RetryBy time.Time
	// Uncounted: no server was tried for the recipients left pending
	// (they wait for a connection slot), so Attempts stays as it was.
	Uncounted bool
	// Park: the message waits for a connection slot; it is parked (see
	// Park) instead of scheduled, handed out again at RetryBy (when after
	// now) or by Unpark.
	Park bool
}

// Done records an attempt's outcome durably and gives the message back to
// the scheduler. Attempts is incremented. A message with no Pending
// recipient left is removed from the queue. On a storage error the message
// is given back unchanged (nothing recorded), due when the outcome would
// have made it due: the attempt is made again then.
func (q *Queue) Done(id string, res Result) error {
	err := q.done(id, res, nil)
	if err != nil && !errors.Is(err, ErrNotFound) {
		if res.Park {
			q.Park(id, res.RetryBy) // not recorded: parked all the same
			return err
		}
		// Not recorded (a full disk): keep it scheduled, in memory, for
		// when this outcome would have put it. Due at once, the attempt
		// was made again at once, over and over while the disk stayed
		// full: a tight loop of connections to the remote server.
		q.mu.Lock()
		n := 1
		if s, ok := q.sched[id]; ok {
			n = s.attempts + 1
		}
		q.mu.Unlock()
		q.requeueAt(id, q.nextAttempt(n, res))
	}
	return err
}

// Progress records, lazily, the outcome of some recipients of a message
// whose attempt is still under way (its other domains are not done yet), so
// that recipients already delivered are not sent the message again if the
// process dies before the attempt ends (Postfix marks each recipient done as
// its delivery ends). It counts no attempt and changes no schedule; Done
// follows with the whole attempt's outcome. Only the holder of the message
// calls it.
func (q *Queue) Progress(id string, rcpts []RcptUpdate) error {
	return q.ProgressWithReports(id, rcpts, nil)
}

// ProgressWithReports is Progress for recipients whose outcome calls for
// reports (a success report, NOTIFY=SUCCESS): the reports are queued in the
// same commit, as by DoneWithReports, and the commit is durable when it
// returns nil. When it fails nothing is stored.
func (q *Queue) ProgressWithReports(id string, rcpts []RcptUpdate, reports []Report) error {
	for _, r := range reports {
		if err := q.prepare(r.Env); err != nil {
			return err
		}
	}
	q.mu.Lock()
	s, ok := q.sched[id]
	inflight := ok && s.inflight
	q.mu.Unlock()
	if !inflight {
		return ErrNotFound
	}
	env, err := q.store.Get(id)
	if err != nil {
		return err
	}
	u := &StateUpdate{ID: id, Attempts: env.Attempts, NextAttempt: env.NextAttempt, LastError: env.LastError,
		DelayWarned: env.DelayWarned, Rcpts: rcpts}
	if len(reports) > 0 {
		_, _, err = q.store.UpdateWithReports(u, reports)
	} else {
		_, _, err = q.store.Update(u)
	}
	if err != nil {
		return fmt.Errorf("queue: recording delivered recipients of %s: %w", id, err)
	}
	if len(reports) > 0 {
		q.mu.Lock()
		for _, r := range reports {
			q.add(r.Env)
		}
		q.mu.Unlock()
	}
	return nil
}

// DoneWithReports is Done for an attempt that calls for reports (DSNs
// about it, to the sender): the reports are queued as new messages in the
// same commit as the outcome, so a crash at any moment leaves both or
// neither, never a report whose outcome is lost (the attempt made again,
// and a second report sent) nor an outcome without its report. Each
// report is checked and given an ID as by Enqueue; it is due at once.
// The commit is durable when DoneWithReports returns nil.
//
// When it fails, nothing is stored and the message stays handed out: the
// caller records the outcome without the reports (Done) or gives the
// message back (Requeue). ErrNotFound means the message was deleted
// meanwhile; then its reports are queued only if the deletion came while
// the commit was under way.
func (q *Queue) DoneWithReports(id string, res Result, reports []Report) error {
	for _, r := range reports {
		if err := q.prepare(r.Env); err != nil {
			return err
		}
	}
	return q.done(id, res, reports)
}

// done records an outcome with its reports, if any.
func (q *Queue) done(id string, res Result, reports []Report) error {
	q.mu.Lock()
	s, ok := q.sched[id]
	if !ok || !s.inflight {
		q.mu.Unlock()
		return ErrNotFound
	}
	// Only the holder of the message calls Done, so these stay as read.
	u := &StateUpdate{ID: id, Attempts: s.attempts + 1, LastError: res.LastError,
		DelayWarned: s.warned || res.DelayWarned, Rcpts: res.Recipients}
	if res.Uncounted {
		u.Attempts = s.attempts
	}
	q.mu.Unlock()
	u.NextAttempt = q.nextAttempt(u.Attempts, res)
	var after *Envelope
	var removed bool
	var err error
	if len(reports) > 0 {
		after, removed, err = q.store.UpdateWithReports(u, reports)
	} else {
		after, removed, err = q.store.Update(u)
	}
	if err != nil {
		if errors.Is(err, ErrNotFound) {
			q.forget(id)
		}
		return err
	}
	q.mu.Lock()
	defer q.mu.Unlock()
	// In log order: the reports, then the outcome.
	for _, r := range reports {
		q.add(r.Env)
	}
	if after == nil { // deleted while the commit was under way
		delete(q.sched, id)
		return ErrNotFound
	}
	if removed {
		delete(q.sched, id)
		return nil
	}
	s.inflight = false
	s.due = after.NextAttempt
	s.held = after.Held
	s.domains = pendingDomains(after)
	s.pending = after.Pending()
	s.attempts, s.warned = after.Attempts, after.DelayWarned
	if res.Park {
		s.parked = true
		q.pushUntil(s, res.RetryBy)
		return nil
	}
	if q.ready(s) {
		q.signal()
	}
	return nil
}

func (q *Queue) forget(id string) {
	q.mu.Lock()
	if s, ok := q.sched[id]; ok && s.idx >= 0 {
		heap.Remove(&q.heap, s.idx)
	}
	delete(q.sched, id)
	q.mu.Unlock()
}

// SetRetryIntervals replaces Options.RetryIntervals for the attempts
// recorded from now on (a configuration reload); a message already
// scheduled keeps its time. Empty: no change.
func (q *Queue) SetRetryIntervals(iv []time.Duration) {
	if len(iv) == 0 {
		return
	}
	q.mu.Lock()
	q.opts.RetryIntervals = slices.Clone(iv)
	q.mu.Unlock()
}

// nextAttempt is when a message is due after its n-th attempt, whose
// outcome is res.
func (q *Queue) nextAttempt(n int, res Result) time.Time {
	if !res.RetryAt.IsZero() {
		return res.RetryAt
	}
	now := q.opts.Now()
	at := now.Add(q.retryAfter(n))
	if res.RetryBy.After(now) && res.RetryBy.Before(at) {
		at = res.RetryBy
	}
	return at
}

// retryAfter is the wait after the n-th attempt, with ±10% jitter.
func (q *Queue) retryAfter(n int) time.Duration {
	q.mu.Lock()
	iv := q.opts.RetryIntervals
	q.mu.Unlock()
	d := iv[min(max(n-1, 0), len(iv)-1)]
	j := float64(d) * (0.9 + 0.2*rand.Float64())
	if j >= math.MaxInt64 {
		// An interval of centuries: converted, it would be negative,
		// and the message due at once after every attempt.
		return math.MaxInt64
	}
	return time.Duration(j)
}

// Requeue gives a handed-out message back unchanged (no attempt counted),
// due at once; used when delivery was cancelled by shutdown.
func (q *Queue) Requeue(id string) error {
	return q.requeueAt(id, q.opts.Now())
}

// requeueAt gives a handed-out message back unchanged, due at at.
func (q *Queue) requeueAt(id string, at time.Time) error {
	q.mu.Lock()
	defer q.mu.Unlock()
	s, ok := q.sched[id]
	if !ok {
		return ErrNotFound
	}
	if s.inflight {
		s.inflight = false
		s.due = at
		if q.ready(s) {
			q.signal()
		}
	}
	return nil
}

// Park gives a handed-out message back unchanged (no attempt counted), but
// not to the schedule: it is handed out again only after Unpark (or
// Release after a Hold, or Claim). The delivery agent parks a message whose
// destination has no free connection slot, so it waits without holding a
// delivery slot, and unparks it when a slot frees (as Postfix's queue
// manager keeps a destination's messages until it may take one). The park
// lasts as long as the process: after a restart every message is due at
// its recorded time. A non-zero until is when the message is handed out
// again, parked or not (its expiry or delay warning, which must not wait
// for a slot): parked mail waited past max_queue_age as long as its
// destination's slots stayed busy.
func (q *Queue) Park(id string, until time.Time) error {
	q.mu.Lock()
	defer q.mu.Unlock()
	s, ok := q.sched[id]
	if !ok || !s.inflight {
		return ErrNotFound
	}
	s.inflight, s.parked = false, true
	q.pushUntil(s, until)
	return nil
}

// pushUntil puts parked s into the heap at until, when that is not zero,
// to be handed out then though parked. Called under mu.
func (q *Queue) pushUntil(s *slot, until time.Time) {
	if !until.IsZero() && !s.held { // held meanwhile: Release schedules it
		s.due = until
		heap.Push(&q.heap, s)
		q.signal()
	}
}

// Unpark makes a parked message due now; false when it is no longer
// parked (deleted, claimed, released from a hold meanwhile) or held.
func (q *Queue) Unpark(id string) bool { return q.UnparkFor(id, "") }

// UnparkFor is Unpark for a connection slot of domain: false, the message
// left parked, when none of its pending recipients is in domain. A message
// parked for the slots of several domains and since delivered to one of
// them, then parked for the others, is not called back by that one (whose
// slot, kept for it, would sit idle). An empty domain is any.
func (q *Queue) UnparkFor(id, domain string) bool {
	q.mu.Lock()
	defer q.mu.Unlock()
	s, ok := q.sched[id]
	if !ok || !s.parked || domain != "" && !slices.Contains(s.domains, idn.Key(domain)) {
		return false
	}
	s.parked = false
	s.due = q.opts.Now()
	if !q.ready(s) {
		return false
	}
	q.signal()
	return true
}

// FlushSeq returns the number of the latest Flush call, of one domain or
// of all (0 before the first): a Flush that covers domain after it makes
// LastFlush(domain) greater than it.
func (q *Queue) FlushSeq() uint64 {
	q.mu.Lock()
	defer q.mu.Unlock()
	return q.flushSeq
}

// LastFlush returns the number (see FlushSeq) of the latest Flush call
// that covered domain — one of domain, or of every domain — or 0 when none
// did. Numbers only grow, so whether domain was flushed since FlushSeq
// returned n is LastFlush(domain) > n, whatever other domains were flushed
// meanwhile. Flush and LastFlush compare domains as idn.Key gives them
// (lower case, an internationalized one as its A-label), so that an
// operator may name a domain either way: its mail may be queued under
// either form, and delivery knows its destinations by the A-label.
func (q *Queue) LastFlush(domain string) uint64 {
	q.mu.Lock()
	defer q.mu.Unlock()
	return max(q.allFlushed, q.domainFlushes[idn.Key(domain)])
}

// List returns copies of every queued envelope, oldest first.
func (q *Queue) List() []*Envelope { return q.store.Messages() }

// Each calls fn with a copy of every queued envelope, oldest first, one at
// a time (so a list of a large queue never holds all of it twice), until fn
// returns false. A message removed meanwhile is skipped.
func (q *Queue) Each(fn func(*Envelope) bool) {
	for _, id := range q.store.IDs() {
		e, err := q.store.Get(id)
		if err != nil {
			continue
		}
		if !fn(e) {
			return
		}
	}
}

// Get returns a copy of one envelope.
func (q *Queue) Get(id string) (*Envelope, error) { return q.store.Get(id) }

// Due returns when a queued message is next due, without copying its
// envelope; false when it is no longer queued.
func (q *Queue) Due(id string) (time.Time, bool) {
	q.mu.Lock()
	defer q.mu.Unlock()
	s, ok := q.sched[id]
	if !ok {
		return time.Time{}, false
	}
	return s.due, true
}

// Activity reports whether a message is being delivered right now, or
// parked (waiting for a connection slot to its destination, see Park).
func (q *Queue) Activity(id string) (delivering, parked bool) {
	q.mu.Lock()
	defer q.mu.Unlock()
	s, ok := q.sched[id]
	return ok && s.inflight, ok && s.parked
}

// InFlight reports whether a message is being delivered right now.
func (q *Queue) InFlight(id string) bool {
	delivering, _ := q.Activity(id)
	return delivering
}

// Hold stops delivery of a message until Release. A delivery already under
// way finishes.
func (q *Queue) Hold(id string) error {
	if err := q.store.SetHeld(id, true); err != nil {
		return err
	}
	q.mu.Lock()
	defer q.mu.Unlock()
	if s, ok := q.sched[id]; ok {
		s.held = true
		if s.idx >= 0 {
			heap.Remove(&q.heap, s.idx)
		}
	}
	return nil
}

// Release ends a hold; the message is due at once.
func (q *Queue) Release(id string) error {
	if err := q.store.SetHeld(id, false); err != nil {
		return err
	}
	q.mu.Lock()
	defer q.mu.Unlock()
	if s, ok := q.sched[id]; ok && s.held {
		s.held, s.parked = false, false
		s.due = q.opts.Now()
		if q.ready(s) {
			q.signal()
		}
	}
	return nil
}

// Delete removes a message from the queue without any report. A delivery
// under way finishes, but its outcome is not recorded.
func (q *Queue) Delete(id string) error {
	if err := q.store.Remove(id); err != nil {
		return err
	}
	q.forget(id)
	return nil
}

// Flush makes every queued message (or those with a pending recipient in
// domain, in either form when internationalized, when domain is not "")
// due now. It returns how many.
func (q *Queue) Flush(domain string) int {
	domain = idn.Key(domain)
	q.mu.Lock()
	defer q.mu.Unlock()
	q.flushSeq++
	if domain == "" {
		q.allFlushed = q.flushSeq
	} else {
		if _, ok := q.domainFlushes[domain]; !ok && len(q.domainFlushes) >= maxDomainFlushes {
			// Full: every domain counts as flushed now, as after a flush
			// of all (its dead mark, if any, ends), and the per-domain
			// numbers, all below this one, are forgotten; LastFlush still
			// never gives back a number from before a flush.
			q.allFlushed = q.flushSeq
			q.domainFlushes = nil
		}
		if q.domainFlushes == nil {
			q.domainFlushes = make(map[string]uint64)
		}
		q.domainFlushes[domain] = q.flushSeq
	}
	now := q.opts.Now()
	n := 0
	for _, s := range q.sched {
		if s.held || s.inflight || s.parked {
			continue // a parked message is due as soon as its destination has a slot
		}
		if domain != "" && !slices.Contains(s.domains, domain) {
			continue
		}
		s.due = now
		q.ready(s)
		n++
	}
	if n > 0 {
		q.signal()
	}
	return n
}

// Stats is a summary of the queue for metrics.
type Stats struct {
	Messages   int
	Recipients int       // pending recipients
	Oldest     time.Time // arrival of the oldest message (zero when empty)
}

// Stats returns the queue's current size.
func (q *Queue) Stats() Stats {
	q.mu.Lock()
	defer q.mu.Unlock()
	var st Stats
	oldest := ""
	for id, s := range q.sched {
		st.Messages++
		st.Recipients += s.pending
		if oldest == "" || id < oldest {
			oldest = id
		}
	}
	if t, ok := idTime(oldest); ok {
		st.Oldest = time.UnixMicro(int64(t))
	}
	return st
}

// slotHeap orders slots by due time (then ID, which is arrival order).
type slotHeap []*slot

func (h slotHeap) Len() int { return len(h) }
func (h slotHeap) Less(i, j int) bool {
	if h[i].due.Equal(h[j].due) {
		return h[i].id < h[j].id
	}
	return h[i].due.Before(h[j].due)
}
func (h slotHeap) Swap(i, j int) {
	h[i], h[j] = h[j], h[i]
	h[i].idx, h[j].idx = i, j
}
func (h *slotHeap) Push(x any) {
	s := x.(*slot)
	s.idx = len(*h)
	*h = append(*h, s)
}
func (h *slotHeap) Pop() any {
	old := *h
	s := old[len(old)-1]
	old[len(old)-1] = nil
	*h = old[:len(old)-1]
	s.idx = -1
	return s
}
