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

// limiter bounds concurrent deliveries per domain; entries exist only
// while used, so the map does not grow with the number of domains seen.
type limiter struct {
	mu  sync.Mutex
	max int
	m   map[string]*slot
}

type slot struct {
	sem   *sem
	users int
}

func newLimiter(max int) *limiter { return &limiter{max: max, m: make(map[string]*slot)} }

func (l *limiter) acquire(ctx context.Context, key string) (func(), error) {
	l.mu.Lock()
	s := l.m[key]
	if s == nil {
		s = &slot{sem: newSem(l.max)}
		l.m[key] = s
	}
	s.users++
	l.mu.Unlock()
	if err := s.sem.acquire(ctx); err != nil {
		l.leave(key, s)
		return nil, err
	}
	return func() { s.sem.release(); l.leave(key, s) }, nil
}

func (l *limiter) leave(key string, s *slot) {
	l.mu.Lock()
	defer l.mu.Unlock()
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
	for _, s := range l.m {
		s.sem.setMax(max)
	}
}
