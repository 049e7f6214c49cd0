package outbound

import (
	"sync"
	"time"

	"github.com/mailhop/mailhop/relay/config"
)

// pool keeps set-up connections after a clean transaction so the next
// message to the same host skips connect, greeting, EHLO, STARTTLS and AUTH.
type pool struct {
	mu      sync.Mutex
	idle    map[connKey][]*conn
	closed  bool
	maxIdle int // per (address, TLS mode, route)
	n       int // idle connections, all keys
}

// newPool keeps up to maxIdle idle connections per key: as many as the
// deliveries to one domain that may run at once, so a busy host's
// connections are all reused.
func newPool(maxIdle int) *pool { return &pool{idle: make(map[connKey][]*conn), maxIdle: maxIdle} }

// setMaxIdle changes maxIdle (a reload); connections over it go as their
// idle time ends.
func (p *pool) setMaxIdle(n int) {
	p.mu.Lock()
	p.maxIdle = n
	p.mu.Unlock()
}

// get takes the most recently used idle connection for k, or nil.
func (p *pool) get(k connKey) *conn {
	p.mu.Lock()
	defer p.mu.Unlock()
	l := p.idle[k]
	if len(l) == 0 {
		return nil
	}
	cn := l[len(l)-1]
	p.idle[k] = l[:len(l)-1]
	if len(p.idle[k]) == 0 {
		delete(p.idle, k)
	}
	p.n--
	cn.idle.Stop()
	cn.reused = true
	return cn
}

// put keeps cn for at most idle, or closes it when the pool is full.
func (p *pool) put(cn *conn, idle time.Duration) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed || len(p.idle[cn.key]) >= p.maxIdle || idle <= 0 {
		go quit(cn)
		return
	}
	p.idle[cn.key] = append(p.idle[cn.key], cn)
	p.n++
	cn.since = time.Now()
	cn.idle = time.AfterFunc(idle, func() {
		if p.remove(cn) {
			quit(cn)
		}
	})
}

// holds reports whether a connection that last carried mail to dest (a
// destination, see destination) is idle in the pool.
func (p *pool) holds(dest string) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, l := range p.idle {
		for _, cn := range l {
			if cn.dest == dest {
				return true
			}
		}
	}
	return false
}

// remove takes cn out of the pool; false when it is no longer there.
func (p *pool) remove(cn *conn) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	l := p.idle[cn.key]
	for i, x := range l {
		if x == cn {
			p.idle[cn.key] = append(l[:i:i], l[i+1:]...)
			if len(p.idle[cn.key]) == 0 {
				delete(p.idle, cn.key)
			}
			p.n--
			return true
		}
	}
	return false
}

// closeAll closes every idle connection; later puts close at once.
func (p *pool) closeAll() {
	p.mu.Lock()
	var all []*conn
	for _, l := range p.idle {
		all = append(all, l...)
	}
	p.idle = make(map[connKey][]*conn)
	p.n = 0
	p.closed = true
	p.mu.Unlock()
	for _, cn := range all {
		cn.idle.Stop()
		quit(cn)
	}
}

// closeStale closes the idle connections set up under another
// configuration than cfg (a reload): no attempt takes them again.
func (p *pool) closeStale(cfg *config.Config) {
	p.mu.Lock()
	var out []*conn
	for k, l := range p.idle {
		if k.cfg != cfg {
			out = append(out, l...)
			p.n -= len(l)
			delete(p.idle, k)
		}
	}
	p.mu.Unlock()
	for _, cn := range out {
		cn.idle.Stop()
		go quit(cn)
	}
}

// trim closes the longest-idle connections until at most keep are left,
// so that idle connections and those in use together stay within
// delivery.concurrency: a new connection is dialled only after trim.
func (p *pool) trim(keep int) {
	if keep < 0 {
		keep = 0
	}
	p.mu.Lock()
	var out []*conn
	for p.n > keep {
		var oldest *conn
		for _, l := range p.idle {
			if cn := l[0]; oldest == nil || cn.since.Before(oldest.since) { // l[0]: put first
				oldest = cn
			}
		}
		l := p.idle[oldest.key]
		if p.idle[oldest.key] = l[1:]; len(l) == 1 {
			delete(p.idle, oldest.key)
		}
		p.n--
		out = append(out, oldest)
	}
	p.mu.Unlock()
	if len(out) == 0 {
		return
	}
	for _, cn := range out {
		cn.idle.Stop()
	}
	// QUIT in the background: a peer slow to answer it must not hold up
	// the delivery that needs the slot (each closes within 5 s).
	go func() {
		for _, cn := range out {
			quit(cn)
		}
	}()
}

// size returns the number of idle connections (for tests and metrics).
func (p *pool) size() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.n
}

// quit ends a connection politely, without waiting long for the reply.
func quit(cn *conn) { quitClient(cn.c) }
