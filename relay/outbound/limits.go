package outbound

import (
	"context"
	"sync"
)

// sem is a counting semaphore whose size can change while it is in use,
// so delivery.concurrency and per_domain_concurrency apply from a reload
// on: a larger size lets waiters in at once; a smaller one lets no one
// new in until enough holders have left (nothing under way is cut).
type sem struct {
	mu   sync.Mutex
	max  int
	n    int
	wake chan struct{} // closed when a slot may have come free; nil: nobody waits
}

func newSem(max int) *sem { return &sem{max: max} }

// acquire takes a slot, waiting until one is free or ctx is done.
func (s *sem) acquire(ctx context.Context) error {
	for {
		s.mu.Lock()
		if s.n < s.max {
			s.n++
			s.mu.Unlock()
			return nil
		}
		if s.wake == nil {
			s.wake = make(chan struct{})
		}
		w := s.wake
		s.mu.Unlock()
		select {
		case <-w:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// release gives a slot back.
func (s *sem) release() {
	s.mu.Lock()
	s.n--
	s.wakeAll()
	s.mu.Unlock()
}

// free returns the slots not taken (negative after a lowered size).
func (s *sem) free() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.max - s.n
}

// setMax changes the size.
func (s *sem) setMax(max int) {
	s.mu.Lock()
	s.max = max
	s.wakeAll()
	s.mu.Unlock()
}

// wakeAll lets every waiter look again; s.mu is held.
func (s *sem) wakeAll() {
	if s.wake != nil {
		close(s.wake)
		s.wake = nil
	}
}

// tryAcquire takes a slot if one is free now.
func (s *sem) tryAcquire() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.n < s.max {
		s.n++
		return true
	}
	return false
}

// limiter bounds concurrent deliveries per domain; entries exist only
// while used, so the map does not grow with the number of domains seen.
// A message waits for its domain either in acquire (holding its
// goroutine) or parked (acquireOrPark): then it holds nothing but its
// queue ID here, and unpark hands it back to the queue when a slot frees.
type limiter struct {
	mu     sync.Mutex
	max    int
	m      map[string]*slot
	unpark func(id string) bool // false: the message no longer waits (deleted, held)
}

type slot struct {
	sem    *sem
	users  int      // holders, waiters and parked messages
	parked []string // queue IDs waiting for a slot, oldest first
}

func newLimiter(max int, unpark func(id string) bool) *limiter {
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

// unparkAll hands every message parked for key back to the queue, free
// slot or not: for a dead destination, whose mail is deferred without one.
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
		l.unpark(id)
		l.leaveLocked(key, s)
	}
}

// tryAcquire takes a slot for key if one is free now.
func (l *limiter) tryAcquire(key string) (release func(), ok bool) {
	return l.acquireOrPark(key, "", func() bool { return false })
}

// release gives back a slot taken with acquireOrPark, tryAcquire or acquire.
func (l *limiter) release(key string, s *slot) {
	l.mu.Lock()
	defer l.mu.Unlock()
	s.sem.release()
	l.unparkLocked(key, s)
	l.leaveLocked(key, s)
}

// unparkLocked hands parked messages back to the queue, as many as there
// are free slots (skipping those that no longer wait). l.mu is held.
func (l *limiter) unparkLocked(key string, s *slot) {
	for n := s.sem.free(); n > 0 && len(s.parked) > 0; {
		id := s.parked[0]
		s.parked[0] = ""
		s.parked = s.parked[1:]
		if l.unpark(id) {
			n--
		}
		l.leaveLocked(key, s)
	}
}

// sweep unparks, for every domain with a free slot, as many parked
// messages as it has free slots. A release unparks a message to take the
// slot it frees; one deleted or held before it is handed out takes none,
// so no release of its unparks the next, and the domain's other parked
// mail would wait for mail to the domain that may never come.
func (l *limiter) sweep() {
	l.mu.Lock()
	defer l.mu.Unlock()
	for key, s := range l.m {
		l.unparkLocked(key, s)
	}
}

func (l *limiter) acquire(ctx context.Context, key string) (func(), error) {
	l.mu.Lock()
	s := l.slotLocked(key)
	s.users++
	l.mu.Unlock()
	if err := s.sem.acquire(ctx); err != nil {
		l.mu.Lock()
		l.leaveLocked(key, s)
		l.mu.Unlock()
		return nil, err
	}
	return func() { l.release(key, s) }, nil
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
