package outbound

import (
	"context"
	"errors"
	"slices"
	"sync"
	"time"
)

// sem is a counting semaphore whose size can change while it is in use,
// so delivery.concurrency and per_domain_concurrency apply from a reload
// on: a larger size lets waiters in at once; a smaller one lets no one
// new in until enough holders have left (nothing under way is cut).
//
// Waiters are served in order, each woken only when a slot is handed to
// it: a release that woke every waiter to race for one slot cost as many
// goroutine wakeups as there were waiters (up to delivery.concurrency
// deliveries waiting for one busy domain's slots). A slot may also be
// reserved for one holder (a parked message called back): no one else
// takes it until take or unreserve.
type sem struct {
	mu       sync.Mutex
	max      int
	n        int             // slots taken, those handed to waiters included
	reserved int             // slots kept (reserve) and not yet taken
	waiters  []chan struct{} // oldest first; closed when given a slot
}

func newSem(max int) *sem { return &sem{max: max} }

// errWaitedTooLong is acquireWithin's error when its wait ran out.
var errWaitedTooLong = errors.New("no slot free in time")

// acquire takes a slot, waiting until one is free or ctx is done.
func (s *sem) acquire(ctx context.Context) error { return s.acquireWithin(ctx, nil) }

// acquireWithin is acquire that also gives up (errWaitedTooLong) when
// timeout fires; a nil timeout never does.
func (s *sem) acquireWithin(ctx context.Context, timeout <-chan time.Time) error {
	s.mu.Lock()
	if s.n+s.reserved < s.max && len(s.waiters) == 0 {
		s.n++
		s.mu.Unlock()
		return nil
	}
	w := make(chan struct{})
	s.waiters = append(s.waiters, w)
	s.mu.Unlock()
	err := errWaitedTooLong
	select {
	case <-w:
		return nil
	case <-ctx.Done():
		err = ctx.Err()
	case <-timeout:
	}
	s.mu.Lock()
	select {
	case <-w: // handed a slot as the wait ended: give it on
		s.n--
		s.grant()
	default:
		s.waiters = slices.DeleteFunc(s.waiters, func(c chan struct{}) bool { return c == w })
	}
	s.mu.Unlock()
	return err
}

// tryAcquire takes a slot if one is free now (and nobody waits for it).
func (s *sem) tryAcquire() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.n+s.reserved < s.max && len(s.waiters) == 0 {
		s.n++
		return true
	}
	return false
}

// release gives a slot back (to the oldest waiter, if any).
func (s *sem) release() {
	s.mu.Lock()
	s.n--
	s.grant()
	s.mu.Unlock()
}

// releaseReserved gives a slot back as a reserved one, for the holder the
// caller calls back (no waiter gets it).
func (s *sem) releaseReserved() {
	s.mu.Lock()
	s.n--
	s.reserved++
	s.mu.Unlock()
}

// free returns the slots neither taken nor reserved (negative after a
// lowered size).
func (s *sem) free() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.max - s.n - s.reserved
}

// reserve keeps a free slot for one holder.
func (s *sem) reserve() {
	s.mu.Lock()
	s.reserved++
	s.mu.Unlock()
}

// take turns a reserved slot into a taken one.
func (s *sem) take() {
	s.mu.Lock()
	s.reserved--
	s.n++
	s.mu.Unlock()
}

// unreserve gives a reserved slot back (to the oldest waiter, if any).
func (s *sem) unreserve() {
	s.mu.Lock()
	s.reserved--
	s.grant()
	s.mu.Unlock()
}

// setMax changes the size.
func (s *sem) setMax(max int) {
	s.mu.Lock()
	s.max = max
	s.grant()
	s.mu.Unlock()
}

// grant hands the free slots to waiters, oldest first; s.mu is held.
func (s *sem) grant() {
	for s.n+s.reserved < s.max && len(s.waiters) > 0 {
		s.n++
		close(s.waiters[0])
		s.waiters[0] = nil
		s.waiters = s.waiters[1:]
	}
}

// limiter bounds concurrent deliveries per domain; entries exist only
// while used, so the map does not grow with the number of domains seen.
// A message waits for its domain either in acquire (holding its
// goroutine) or parked (acquireOrPark): then it holds nothing but its
// queue ID here, and unpark hands it back to the queue when a slot frees,
// that slot kept for it until it comes back (tryAcquire with its ID) or
// callWait has passed: mail arriving meanwhile does not take it, so parked
// mail goes out oldest first and is never overtaken by newer mail.
type limiter struct {
	mu     sync.Mutex
	max    int
	m      map[string]*slot
	unpark func(key, id string) bool // false: the message no longer waits for key (deleted, held, delivered there)
}

type slot struct {
	sem    *sem
	users  int                    // holders, waiters, parked and called messages
	parked []string               // queue IDs waiting for a slot, oldest first
	called map[string]*time.Timer // unparked, a slot reserved for each until its timer
}

// callWait is how long a slot is kept for a message unparked for it: the
// time it takes through the queue's schedule back to a delivery, with room
// for a moment when every delivery slot is busy. Then the slot is given
// to the next parked message (or whoever waits).
const callWait = 2 * time.Second

func newLimiter(max int, unpark func(key, id string) bool) *limiter {
	return &limiter{max: max, m: make(map[string]*slot), unpark: unpark}
}

// acquireOrPark takes a slot for key at once, or, when none is free, calls
// park (with l.mu held, so no slot can free unseen meanwhile) and, when
// park reports the message parked, keeps id to unpark when a slot frees.
// ok is false when no slot was taken.
func (l *limiter) acquireOrPark(key, id string, park func() bool) (release func(), ok bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	s := l.slotLocked(key)
	if takeCalled(s, id) {
		return func() { l.release(key, s) }, true
	}
	if s.sem.tryAcquire() {
		s.users++
		return func() { l.release(key, s) }, true
	}
	if park() {
		s.parked = append(s.parked, id)
		s.users++
	} else if s.users == 0 {
		delete(l.m, key)
	}
	return nil, false
}

// park keeps id, a message the queue has parked (queue.Result.Park), to
// unpark when a slot of key frees: at once when one is free now.
func (l *limiter) park(key, id string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	s := l.slotLocked(key)
	s.parked = append(s.parked, id)
	s.users++
	l.unparkLocked(key, s)
}

// tryAcquire takes a slot for key if one is free now, or the one kept for
// id when it was unparked: acquireOrPark that never parks.
func (l *limiter) tryAcquire(key, id string) (release func(), ok bool) {
	return l.acquireOrPark(key, id, func() bool { return false })
}

// takeCalled takes the slot kept for id, if it was unparked for one; its
// use of the slot goes on (users unchanged). l.mu is held.
func takeCalled(s *slot, id string) bool {
	t, ok := s.called[id]
	if !ok {
		return false
	}
	t.Stop()
	delete(s.called, id)
	s.sem.take()
	return true
}

// release gives back a slot taken with acquireOrPark or acquire: to the
// oldest parked message, kept for it, when there is one (parked mail is
// older than any that waits in acquire), else to the oldest waiter.
func (l *limiter) release(key string, s *slot) {
	l.mu.Lock()
	defer l.mu.Unlock()
	// (Not past a lowered limit: then the slot is simply gone.)
	if s.sem.free() >= 0 && l.callLocked(key, s) {
		s.sem.releaseReserved()
	} else {
		s.sem.release()
	}
	l.unparkLocked(key, s)
	l.leaveLocked(key, s)
}

// unreserve gives back the slot kept for id, if any: it will not come
// for it (its destination is dead), or it did not within callWait.
func (l *limiter) unreserve(key, id string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	s := l.m[key]
	if s == nil {
		return
	}
	t, ok := s.called[id]
	if !ok {
		return
	}
	t.Stop()
	delete(s.called, id)
	// The slot stays kept, for the next parked one (within the limit).
	if s.sem.free() < 0 || !l.callLocked(key, s) {
		s.sem.unreserve()
	}
	l.unparkLocked(key, s)
	l.leaveLocked(key, s)
}

// unparkLocked hands parked messages back to the queue, as many as there
// are free slots, and keeps a slot for each. l.mu is held.
func (l *limiter) unparkLocked(key string, s *slot) {
	for n := s.sem.free(); n > 0 && l.callLocked(key, s); n-- {
		s.sem.reserve()
	}
}

// callLocked hands the oldest parked message that still waits back to the
// queue (skipping those that no longer wait) and notes that a slot is kept
// for it, which the caller provides; false when none was. l.mu is held.
func (l *limiter) callLocked(key string, s *slot) bool {
	for len(s.parked) > 0 {
		id := s.parked[0]
		s.parked[0] = ""
		s.parked = s.parked[1:]
		if _, dup := s.called[id]; dup || !l.unpark(key, id) {
			s.users--
			continue
		}
		if s.called == nil {
			s.called = make(map[string]*time.Timer)
		}
		s.called[id] = time.AfterFunc(callWait, func() { l.unreserve(key, id) })
		return true
	}
	return false
}

// dead gives back the slot kept for id, if any, and hands every message
// parked for key back to the queue: key is a dead destination, whose mail
// is deferred without a slot (kept, the slot sat idle until callWait, and
// the rest waited for one in turn).
func (l *limiter) dead(key, id string) {
	l.unreserve(key, id)
	l.unparkAll(key)
}

// unparkAll hands every message parked for key back to the queue, free
// slot or not: for a dead destination, whose mail is deferred without one
// (its deferrals take no slot, so no release would unpark the rest).
func (l *limiter) unparkAll(key string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	s := l.m[key]
	if s == nil {
		return
	}
	parked := s.parked
	s.parked = nil
	for _, id := range parked {
		l.unpark(key, id)
		l.leaveLocked(key, s)
	}
}

// sweep unparks, for every domain with a free slot, as many parked
// messages as it has free slots: a safety net for a slot that frees with
// no release to call the next parked message (a reload that raised the
// limit is handled by setMax; this catches what nothing else does).
func (l *limiter) sweep() {
	l.mu.Lock()
	defer l.mu.Unlock()
	for key, s := range l.m {
		l.unparkLocked(key, s)
	}
}

// slotLocked returns key's entry, made when missing; l.mu is held.
func (l *limiter) slotLocked(key string) *slot {
	s := l.m[key]
	if s == nil {
		s = &slot{sem: newSem(l.max)}
		l.m[key] = s
	}
	return s
}

// acquireWithin is acquire that gives up with errWaitedTooLong after wait
// (0: no limit). A timer, not a context with a deadline: every waiting
// delivery registered one with the shared parent context, under its lock.
// With a limit, it gives up at once when the domain has parked mail: every
// slot that frees goes to that first, so the wait could only run out.
func (l *limiter) acquireWithin(ctx context.Context, key string, wait time.Duration) (func(), error) {
	l.mu.Lock()
	s := l.slotLocked(key)
	if wait > 0 && len(s.parked) > 0 {
		l.mu.Unlock()
		return nil, errWaitedTooLong
	}
	s.users++
	l.mu.Unlock()
	var timeout <-chan time.Time
	if wait > 0 {
		t := time.NewTimer(wait)
		defer t.Stop()
		timeout = t.C
	}
	if err := s.sem.acquireWithin(ctx, timeout); err != nil {
		l.mu.Lock()
		// A slot handed to this waiter as it gave up went on to the
		// next waiter, or is free: then a parked message takes it.
		l.unparkLocked(key, s)
		l.leaveLocked(key, s)
		l.mu.Unlock()
		return nil, err
	}
	return func() { l.release(key, s) }, nil
}

// leaveLocked ends one use of key's slot; l.mu is held.
func (l *limiter) leaveLocked(key string, s *slot) {
	s.users--
	if s.users == 0 {
		delete(l.m, key)
	}
}

// setMax changes the limit for every domain, those being delivered to
// included.
func (l *limiter) setMax(max int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.max = max
	for key, s := range l.m {
		s.sem.setMax(max)
		l.unparkLocked(key, s)
	}
}
