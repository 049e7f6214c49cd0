package dnsmx

import (
	"context"
	"errors"
	"fmt"
	"net"
	"slices"
	"strings"
	"sync/atomic"
	"time"

	"github.com/miekg/dns"
)

// ednsSize is the UDP payload size advertised with EDNS0: the value DNS Flag
// Day 2020 settled on to avoid IP fragmentation.
const ednsSize = 1232

// DefaultTimeout is used when NewResolver is given a timeout <= 0.
const DefaultTimeout = 5 * time.Second

// resolvConf is where NewResolver finds servers when none are given.
const resolvConf = "/etc/resolv.conf"

// Resolver looks up mail routes. It is safe for concurrent use; set its
// exported fields before the first lookup.
type Resolver struct {
	// Now is the clock for cache expiry; tests replace it. Nil means time.Now.
	Now func() time.Time

	servers atomic.Pointer[[]string] // replaced whole by SetServers
	timeout time.Duration
	cache   *cache

	lookups  atomic.Uint64
	failures atomic.Uint64
}

// NewResolver makes a resolver that sends every query to servers ("host:port",
// or a bare host for port 53), tried in order until one answers. With no
// servers it reads /etc/resolv.conf. timeout bounds one query to one server
// (<= 0: DefaultTimeout). The answer cache holds DefaultCacheSize entries;
// see SetCacheSize.
func NewResolver(servers []string, timeout time.Duration) (*Resolver, error) {
	if timeout <= 0 {
		timeout = DefaultTimeout
	}
	list, err := serverList(servers)
	if err != nil {
		return nil, err
	}
	r := &Resolver{timeout: timeout, cache: newCache(DefaultCacheSize)}
	r.servers.Store(&list)
	return r, nil
}

// SetServers sends the queries from now on to servers, read as NewResolver
// reads them (none: /etc/resolv.conf); the cache is emptied, as its answers
// came from the old servers. On error nothing changes.
func (r *Resolver) SetServers(servers []string) error {
	list, err := serverList(servers)
	if err != nil {
		return err
	}
	r.servers.Store(&list)
	r.cache.clear()
	return nil
}

// serverList turns configured servers into "host:port" addresses.
func serverList(servers []string) ([]string, error) {
	if len(servers) == 0 {
		cfg, err := dns.ClientConfigFromFile(resolvConf)
		if err != nil {
			return nil, fmt.Errorf("dnsmx: no servers given and %s unreadable: %w", resolvConf, err)
		}
		for _, s := range cfg.Servers {
			servers = append(servers, net.JoinHostPort(s, cfg.Port))
		}
		if len(servers) == 0 {
			return nil, fmt.Errorf("dnsmx: no servers given and none in %s", resolvConf)
		}
	}
	list := make([]string, 0, len(servers))
	for _, s := range servers {
		s = strings.TrimSpace(s)
		if s == "" {
			return nil, errors.New("dnsmx: empty server address")
		}
		if _, _, err := net.SplitHostPort(s); err != nil {
			// A bare host or IP (IPv6 possibly in brackets): port 53.
			s = net.JoinHostPort(strings.Trim(s, "[]"), "53")
		}
		list = append(list, s)
	}
	return list, nil
}

// Servers returns the servers queries go to, in order ("host:port").
func (r *Resolver) Servers() []string { return append([]string(nil), *r.servers.Load()...) }

// SetCacheSize bounds the answer cache to n entries, evicting the least
// recently used; n <= 0 empties and disables the cache.
func (r *Resolver) SetCacheSize(n int) { r.cache.resize(n) }

// CacheLen returns the number of answers in the cache.
func (r *Resolver) CacheLen() int { return r.cache.len() }

// Stats returns the number of queries sent (answers from the cache are not
// counted), and how many of them no server answered usably (timeout,
// SERVFAIL, network), since the resolver was made. NXDOMAIN and NODATA are
// answers, not failures.
func (r *Resolver) Stats() (lookups, failures uint64) {
	return r.lookups.Load(), r.failures.Load()
}

func (r *Resolver) now() time.Time {
	if r.Now != nil {
		return r.Now()
	}
	return time.Now()
}

// query returns the answer for (name, qtype), from the cache or the servers.
// name is a lower-case FQDN. The error is always a temporary *Error:
// NXDOMAIN and NODATA are answers, not errors.
func (r *Resolver) query(ctx context.Context, name string, qtype uint16) (*answer, error) {
	return r.cached(ctx, name, qtype, r.exchange)
}

// cached returns the answer for (name, qtype) from the cache, or asks with
// exchange and keeps the answer (with its AD bit) for its TTL.
func (r *Resolver) cached(ctx context.Context, name string, qtype uint16,
	exchange func(context.Context, string, uint16) (*dns.Msg, error)) (*answer, error) {
	k := cacheKey{name, qtype}
	now := r.now()
	if a := r.cache.get(k, now); a != nil {
		return a, nil
	}
	m, err := exchange(ctx, name, qtype)
	if err != nil {
		return nil, err
	}
	a := &answer{rcode: m.Rcode, rrs: m.Answer, secure: m.AuthenticatedData}
	if ttl := ttlOf(m); ttl > 0 {
		r.cache.put(k, a, now.Add(ttl))
	}
	return a, nil
}

// exchange asks each server in turn until one gives a usable answer
// (NOERROR or NXDOMAIN). Network errors, timeouts and error rcodes move on
// to the next server; if none answers, the last failure is returned as a
// temporary *Error.
func (r *Resolver) exchange(ctx context.Context, name string, qtype uint16) (*dns.Msg, error) {
	q := new(dns.Msg)
	q.SetQuestion(name, qtype)
	q.RecursionDesired = true
	// The AD bit asks a validating resolver to say whether the answer is
	// DNSSEC-secure (RFC 6840 §5.7); DANE needs that of the MX and address
	// records (RFC 7672 §2.2).
	q.AuthenticatedData = true
	q.SetEdns0(ednsSize, false)
	return r.ask(ctx, q, strings.TrimSuffix(name, "."))
}

// ask sends q to each server in turn until one gives a usable answer
// (NOERROR or NXDOMAIN); errName names the query in errors.
func (r *Resolver) ask(ctx context.Context, q *dns.Msg, errName string) (*dns.Msg, error) {
	r.lookups.Add(1)
	qs := dns.TypeToString[q.Question[0].Qtype]
	var last error
	for _, srv := range *r.servers.Load() {
		if err := ctx.Err(); err != nil {
			r.failures.Add(1)
			return nil, temporary(errName, "%s lookup: %v", qs, err)
		}
		m, err := r.exchangeOne(ctx, srv, q)
		if err != nil {
			last = fmt.Errorf("%s lookup via %s: %s", qs, srv, r.failure(err))
			continue
		}
		switch m.Rcode {
		case dns.RcodeSuccess, dns.RcodeNameError:
			return m, nil
		default:
			last = fmt.Errorf("%s lookup via %s: server answered %s", qs, srv, dns.RcodeToString[m.Rcode])
		}
	}
	r.failures.Add(1)
	return nil, temporary(errName, "%v", last)
}

// failure says why a server gave no answer in words a sender reading a
// delay notice or `queue list` understands: "no answer within 5s" for a
// timeout, instead of Go's "read udp 127.0.0.1:51838->192.0.2.53:53: i/o
// timeout" or "context deadline exceeded".
func (r *Resolver) failure(err error) string {
	var ne net.Error
	if errors.Is(err, context.DeadlineExceeded) || errors.As(err, &ne) && ne.Timeout() {
		return fmt.Sprintf("no answer within %s", r.timeout)
	}
	return err.Error()
}

// exchangeOne sends q to one server over UDP, and again over TCP if the
// answer was truncated. The per-server timeout applies to each transport.
// A server that answers a query with EDNS0 FORMERR or NOTIMP knows no EDNS
// (RFC 6891 §7: older servers and forwarders): it is asked again without
// the OPT record, as glibc's resolver does, unless q asks for DNSSEC (the
// DO bit, for TLSA): an answer that could not be validated is no answer
// for DANE.
func (r *Resolver) exchangeOne(ctx context.Context, srv string, q *dns.Msg) (*dns.Msg, error) {
	m, err := r.roundTrip(ctx, "udp", srv, q)
	if err != nil {
		return nil, err
	}
	if opt := q.IsEdns0(); opt != nil && !opt.Do() &&
		(m.Rcode == dns.RcodeFormatError || m.Rcode == dns.RcodeNotImplemented) && m.IsEdns0() == nil {
		q = withoutEDNS(q)
		if m, err = r.roundTrip(ctx, "udp", srv, q); err != nil {
			return nil, err
		}
	}
	if m.Truncated {
		m, err = r.roundTrip(ctx, "tcp", srv, q)
		if err != nil {
			return nil, err
		}
	}
	return m, nil
}

// withoutEDNS returns a copy of q without its OPT record.
func withoutEDNS(q *dns.Msg) *dns.Msg {
	c := q.Copy()
	c.Extra = slices.DeleteFunc(c.Extra, func(rr dns.RR) bool { return rr.Header().Rrtype == dns.TypeOPT })
	return c
}

func (r *Resolver) roundTrip(ctx context.Context, network, srv string, q *dns.Msg) (*dns.Msg, error) {
	ctx, cancel := context.WithTimeout(ctx, r.timeout)
	defer cancel()
	c := &dns.Client{Net: network, Timeout: r.timeout}
	conn, err := c.DialContext(ctx, srv)
	if err != nil {
		return nil, err
	}
	defer conn.Close()
	// The client only honours the context's deadline; close the
	// connection to honour a cancellation too.
	stop := context.AfterFunc(ctx, func() { conn.Close() })
	defer stop()
	m, _, err := c.ExchangeWithConnContext(ctx, q, conn)
	if err != nil {
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		return nil, err
	}
	// A reply to another question is not an answer (the ID already
	// matched; this guards against a confused or spoofing server).
	if len(m.Question) != 1 || m.Question[0].Qtype != q.Question[0].Qtype ||
		!strings.EqualFold(m.Question[0].Name, q.Question[0].Name) {
		return nil, errors.New("reply does not match the question")
	}
	return m, nil
}
