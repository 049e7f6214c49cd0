package dnsmx

import (
	"container/list"
	"sync"
	"time"

	"github.com/miekg/dns"
)

// DefaultCacheSize is the number of (name, type) answers a new Resolver keeps.
const DefaultCacheSize = 10000

// maxNegativeTTL caps how long NXDOMAIN and NODATA are remembered, so a
// domain that fixes its DNS gets mail within the hour (RFC 2308 §5 suggests
// a cap of hours; the queue retries sooner than that).
const maxNegativeTTL = time.Hour

// maxPositiveTTL caps how long any answer is kept.
const maxPositiveTTL = 24 * time.Hour

// defaultNegativeTTL is used for a negative answer that carries no SOA.
const defaultNegativeTTL = time.Minute

type cacheKey struct {
	name  string // lower case FQDN
	qtype uint16
}

// answer is the part of a response the lookups need: the rcode (only
// NOERROR or NXDOMAIN; failures are errors and never stored) and the answer
// section. Its slices are shared between callers and must not be modified.
type answer struct {
	rcode  int
	rrs    []dns.RR
	secure bool // the AD bit: a validating resolver vouched for it (DNSSEC)
}

type cacheEntry struct {
	key     cacheKey
	ans     *answer
	expires time.Time
}

// cache is a bounded LRU of answers, safe for concurrent use.
type cache struct {
	mu    sync.Mutex
	max   int
	ll    *list.List // front: most recently used
	items map[cacheKey]*list.Element
}

func newCache(size int) *cache {
	return &cache{max: size, ll: list.New(), items: make(map[cacheKey]*list.Element)}
}

func (c *cache) get(k cacheKey, now time.Time) *answer {
	c.mu.Lock()
	defer c.mu.Unlock()
	el, ok := c.items[k]
	if !ok {
		return nil
	}
	e := el.Value.(*cacheEntry)
	if !now.Before(e.expires) {
		c.ll.Remove(el)
		delete(c.items, k)
		return nil
	}
	c.ll.MoveToFront(el)
	return e.ans
}

func (c *cache) put(k cacheKey, a *answer, expires time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.max <= 0 {
		return
	}
	if el, ok := c.items[k]; ok {
		e := el.Value.(*cacheEntry)
		e.ans, e.expires = a, expires
		c.ll.MoveToFront(el)
		return
	}
	c.items[k] = c.ll.PushFront(&cacheEntry{key: k, ans: a, expires: expires})
	for c.ll.Len() > c.max {
		old := c.ll.Back()
		c.ll.Remove(old)
		delete(c.items, old.Value.(*cacheEntry).key)
	}
}

// resize changes the bound, evicting the least recently used entries;
// size <= 0 empties the cache and disables it.
func (c *cache) resize(size int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.max = size
	for c.ll.Len() > max(size, 0) {
		old := c.ll.Back()
		c.ll.Remove(old)
		delete(c.items, old.Value.(*cacheEntry).key)
	}
}

// clear forgets every answer.
func (c *cache) clear() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.ll.Init()
	clear(c.items)
}

func (c *cache) len() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.ll.Len()
}

// ttlOf says how long a response may be cached: the smallest TTL in the
// answer section for a positive answer; for NXDOMAIN or NODATA the SOA's
// negative TTL, min(SOA TTL, SOA MINIMUM) (RFC 2308 §5), capped at an hour.
func ttlOf(m *dns.Msg) time.Duration {
	if m.Rcode == dns.RcodeSuccess && len(m.Answer) > 0 {
		ttl := uint32(1<<32 - 1)
		for _, rr := range m.Answer {
			ttl = min(ttl, rr.Header().Ttl)
		}
		return min(time.Duration(ttl)*time.Second, maxPositiveTTL)
	}
	for _, rr := range m.Ns {
		if soa, ok := rr.(*dns.SOA); ok {
			ttl := min(soa.Hdr.Ttl, soa.Minttl)
			return min(time.Duration(ttl)*time.Second, maxNegativeTTL)
		}
	}
	return defaultNegativeTTL
}
