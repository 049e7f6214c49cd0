package inbound

import (
	"cmp"
	"crypto/tls"
	"net"
	"net/netip"
	"slices"
	"sync"
	"time"
)

// Defaults of the AUTH failure limits (Server fields).
const (
	DefaultAuthDelayAfter   = 3           // failures before replies slow down
	DefaultAuthDelayStep    = time.Second // extra delay per failure after that
	rejectWriteTimeout      = 5 * time.Second
	sessionWriteGrace       = 10 * time.Second
	acceptRetryMaxDelay     = time.Second
	defaultShutdownDeadline = 30 * time.Second
)

// remoteIP returns the client address of c, IPv4-mapped IPv6 unmapped.
func remoteIP(a net.Addr) netip.Addr {
	if ta, ok := a.(*net.TCPAddr); ok {
		ip, _ := netip.AddrFromSlice(ta.IP)
		return ip.Unmap()
	}
	ap, err := netip.ParseAddrPort(a.String())
	if err != nil {
		return netip.Addr{}
	}
	return ap.Addr().Unmap()
}

// remotePort is the port of a client's address, 0 if it has none.
func remotePort(a net.Addr) int {
	if ta, ok := a.(*net.TCPAddr); ok {
		return ta.Port
	}
	ap, err := netip.ParseAddrPort(a.String())
	if err != nil {
		return 0
	}
	return int(ap.Port())
}

// ipv6ClientBits is how much of an IPv6 client address names one client
// for the per-address limits (connections, AUTH failures): its /64, the
// subnet of one site (RFC 6177). Anyone with IPv6 has a whole /64, so
// counting single addresses would let one client take 2^64 turns and make
// the AUTH block useless. (Postfix 3.8 and later also count IPv6 clients
// by a prefix for their limits.)
const ipv6ClientBits = 64

// clientKey returns the key of ip in the per-client counters: the address
// itself for IPv4, its /64 for IPv6.
func clientKey(ip netip.Addr) netip.Addr {
	if ip.Is6() {
		if p, err := ip.Prefix(ipv6ClientBits); err == nil {
			return p.Addr()
		}
	}
	return ip
}

// connLimits counts open connections in total and per client (clientKey).
type connLimits struct {
	mu    sync.Mutex
	total int
	perIP map[netip.Addr]int
}

// acquire takes a slot for ip, or reports false when a limit is reached
// (0 means no limit).
// An invalid ip (the zero Addr) counts toward the total only: trusted
// clients do not use up their address's (or /64's) share.
func (l *connLimits) acquire(ip netip.Addr, maxTotal, maxPerIP int) bool {
	counted := ip.IsValid()
	if counted {
		ip = clientKey(ip)
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if maxTotal > 0 && l.total >= maxTotal || counted && maxPerIP > 0 && l.perIP[ip] >= maxPerIP {
		return false
	}
	l.total++
	if counted {
		if l.perIP == nil {
			l.perIP = make(map[netip.Addr]int)
		}
		l.perIP[ip]++
	}
	return true
}

// release gives back what acquire took for the same ip.
func (l *connLimits) release(ip netip.Addr) {
	counted := ip.IsValid()
	if counted {
		ip = clientKey(ip)
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	l.total--
	if !counted {
		return
	}
	if l.perIP[ip]--; l.perIP[ip] <= 0 {
		delete(l.perIP, ip)
	}
}

func (l *connLimits) open() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.total
}

// limitListener is the accept path: it refuses a connection from a blocked
// address or over a connection limit with 421 4.7.0 before go-smtp sees it,
// and wraps the others so that closing frees their slot and the session
// timeout bounds every read.
type limitListener struct {
	net.Listener
	s *Server
	// tls is set on an implicit-TLS listener: a refusal is said over TLS
	// (RFC 8314 §3.3), never in plain text the client cannot read.
	tls *tls.Config
	// rejecting bounds the refusals answered at once; beyond it a refused
	// connection is closed without a reply.
	rejecting chan struct{}
}

// maxRejecting is how many refused connections may be answered at once.
const maxRejecting = 64

func (ll *limitListener) Accept() (net.Conn, error) {
	for {
		c, err := ll.Listener.Accept()
		if err != nil {
			return nil, err
		}
		s := ll.s
		cfg := s.cfg.Load()
		ip := remoteIP(c.RemoteAddr())
		trusted := cfg.IsTrusted(ip)
		// The trusted networks are exempt from the AUTH block (a neighbour
		// in the same /64 failing AUTH must not lock out cron), as from
		// the per-address limit below.
		if !trusted && s.authFails.blocked(ip, time.Now()) {
			s.stats.connRejected.Add(1)
			s.log.Info("connection refused", "client", ip.String(), "reason", "auth_blocked")
			ll.reject(c, "421 4.7.0 "+cfg.Hostname+" Too many failed authentications, try again later")
			continue
		}
		// Like Postfix's smtpd_client_event_limit_exceptions: the trusted
		// networks (applications, cron) are not limited per address, nor
		// counted toward their /64's limit; the total limit still applies.
		key := ip
		if trusted {
			key = netip.Addr{}
		}
		if !s.conns.acquire(key, cfg.Limits.MaxConnections, cfg.Limits.MaxConnectionsPerIP) {
			s.stats.connRejected.Add(1)
			s.log.Info("connection refused", "client", ip.String(), "reason", "too_many_connections")
			ll.reject(c, "421 4.7.0 "+cfg.Hostname+" Too many connections, try again later")
			continue
		}
		s.log.Debug("connection opened", "client", ip.String(), "local", c.LocalAddr().String())
		tc := &trackedConn{Conn: c, s: s, ip: ip, key: key}
		if d := cfg.Limits.SessionTimeout.Duration; d > 0 {
			tc.end = time.Now().Add(d)
			c.SetDeadline(tc.end)
		}
		return tc, nil
	}
}

// reject answers a refused connection and closes it, in the background
// (over TLS on an implicit-TLS listener, after the handshake); when too
// many refusals are under way it only closes.
func (ll *limitListener) reject(c net.Conn, reply string) {
	select {
	case ll.rejecting <- struct{}{}:
	default:
		c.Close()
		return
	}
	go func() {
		defer func() { <-ll.rejecting }()
		defer c.Close()
		c.SetDeadline(time.Now().Add(rejectWriteTimeout))
		if ll.tls != nil {
			tc := tls.Server(c, ll.tls)
			if tc.Handshake() != nil {
				return
			}
			c = tc
		}
		c.Write([]byte(reply + "\r\n"))
	}()
}

// trackedConn holds a connection slot until closed, and keeps every read
// deadline within the session timeout (RFC 5321 §4.5.3.2 bounds each wait;
// this bounds the whole session).
type trackedConn struct {
	net.Conn
	s    *Server
	ip   netip.Addr
	key  netip.Addr // what the per-address limit counted (zero: not counted)
	end  time.Time  // session deadline; zero: none
	once sync.Once
}

func (c *trackedConn) clamp(t time.Time, grace time.Duration) time.Time {
	if c.end.IsZero() {
		return t
	}
	if end := c.end.Add(grace); t.IsZero() || t.After(end) {
		return end
	}
	return t
}

func (c *trackedConn) SetDeadline(t time.Time) error {
	if err := c.SetReadDeadline(t); err != nil {
		return err
	}
	return c.SetWriteDeadline(t)
}

func (c *trackedConn) SetReadDeadline(t time.Time) error {
	return c.Conn.SetReadDeadline(c.clamp(t, 0))
}

// SetWriteDeadline leaves a little time after the session deadline, so that
// the 421 that ends a timed-out session can still be written.
func (c *trackedConn) SetWriteDeadline(t time.Time) error {
	return c.Conn.SetWriteDeadline(c.clamp(t, sessionWriteGrace))
}

// sessionTimeoutReason is the text of the 421 4.4.2 that ends a session at
// limits.session_timeout (go-smtp says "Idle timeout" for any other).
const sessionTimeoutReason = "Session time limit exceeded, closing connection"

// sessionExpired reports whether the session deadline has passed.
func (c *trackedConn) sessionExpired() bool {
	return !c.end.IsZero() && !time.Now().Before(c.end)
}

// TimeoutReason implements smtp.TimeoutReasoner: a read that timed out at
// the session deadline ends the session for its length, not for idleness.
// Either is logged, as Postfix logs "timeout after ...": a client that
// holds connections open without a word shows in the log.
func (c *trackedConn) TimeoutReason() string {
	port := remotePort(c.RemoteAddr())
	if !c.sessionExpired() {
		c.s.log.Info("idle timeout", "client", c.ip.String(), "port", port)
		return ""
	}
	c.s.log.Info("session time limit reached", "client", c.ip.String(), "port", port)
	return sessionTimeoutReason
}

// timeoutReply is the reply (enhanced code and text) go-smtp gave a
// session on nc whose read timed out.
func timeoutReply(nc net.Conn) string {
	if tc, ok := nc.(*tls.Conn); ok {
		nc = tc.NetConn()
	}
	if c, ok := nc.(*trackedConn); ok && c.sessionExpired() {
		return "4.4.2 " + sessionTimeoutReason
	}
	return "4.4.2 Idle timeout"
}

func (c *trackedConn) Close() error {
	err := c.Conn.Close()
	c.once.Do(func() {
		c.s.conns.release(c.key)
		c.s.log.Debug("connection closed", "client", c.ip.String())
	})
	return err
}

// authFailures counts failed AUTH attempts per client (clientKey), in memory,
// for at most limit clients (see makeRoom).
type authFailures struct {
	mu sync.Mutex
	m  map[netip.Addr]*authRecord
	// limit is the most records kept (0: maxAuthRecords); tests lower it.
	limit int
	// sweepAt is the number of records at which stale ones are dropped
	// next: twice what was left after the last sweep, so that the map
	// stays within twice its live records and a failure costs the same
	// however many there are (each swept the whole map before: 0.9 ms a
	// failure with 25,000 clients).
	sweepAt int
}

// minSweep is the fewest records at which a sweep is made.
const minSweep = 1024

// maxAuthRecords bounds the AUTH failure records. A malformed AUTH counts
// a failure without a password check, so a client with many addresses (a
// botnet, or an IPv6 network larger than a /64: a /48 is 65,536 clients, a
// /32 four billion) could otherwise add a record per connection for as
// long as it likes. A record costs about 130 bytes (its 80-byte
// authRecord, and the map's 24-byte key, 8-byte pointer and slot
// overhead; 132 measured with 100,000 records): 100,000 are some 13 MB.
const maxAuthRecords = 100_000

type authRecord struct {
	fails        int
	checking     int // password checks under way (begin without end)
	last         time.Time
	blockedUntil time.Time
	// ended is closed, and cleared, when a check under way ends; begin
	// hands it to the checks waiting for a place (nil: none waits).
	ended chan struct{}
}

// fail records a failure for ip and returns the number of failures so far.
// A record is forgotten blockFor after its last failure.
func (a *authFailures) fail(ip netip.Addr, now time.Time, blockFor time.Duration, maxFailures int) int {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.record(ip, now, blockFor).failed(now, blockFor, maxFailures)
}

// begin reserves a password check for ip; ok reports that it may start,
// and end releases the reservation. Otherwise, when the address is
// blocked (or its failures alone reach maxFailures) wait is nil: the check
// is refused. When only the checks under way stand in the way (were they
// all to fail, this one would be past the limit), wait is a channel closed
// as soon as one of them ends, after which begin is to be asked again.
// Guesses sent at once on many connections are so never checked beyond
// the limit, nor on a connection that was opened before its address was
// blocked; and the right password, sent on many connections at once (a
// busy application, an office behind one NAT address), waits its turn
// instead of being refused although nothing failed.
func (a *authFailures) begin(ip netip.Addr, now time.Time, blockFor time.Duration, maxFailures int) (ok bool, wait <-chan struct{}) {
	a.mu.Lock()
	defer a.mu.Unlock()
	r := a.record(ip, now, blockFor)
	switch {
	case now.Before(r.blockedUntil) || maxFailures > 0 && r.fails >= maxFailures:
		return false, nil
	case maxFailures > 0 && r.fails+r.checking >= maxFailures:
		if r.ended == nil {
			r.ended = make(chan struct{})
		}
		return false, r.ended
	}
	r.checking++
	return true, nil
}

// end releases a reservation of begin and, when the check failed, records
// the failure in the same step (no other check can be reserved between
// the two). It returns the number of failures so far.
func (a *authFailures) end(ip netip.Addr, now time.Time, blockFor time.Duration, maxFailures int, failed bool) int {
	a.mu.Lock()
	defer a.mu.Unlock()
	r := a.record(ip, now, blockFor) // never swept nor evicted while checking > 0
	r.checking = max(r.checking-1, 0)
	if r.ended != nil {
		close(r.ended)
		r.ended = nil
	}
	if !failed {
		return r.fails
	}
	return r.failed(now, blockFor, maxFailures)
}

// record returns ip's record, a new one when it has none or it is stale;
// a.mu is held.
func (a *authFailures) record(ip netip.Addr, now time.Time, blockFor time.Duration) *authRecord {
	ip = clientKey(ip)
	if a.m == nil {
		a.m = make(map[netip.Addr]*authRecord)
	}
	if len(a.m) >= a.sweepAt {
		a.expire(now, blockFor)
		a.sweepAt = max(2*len(a.m), minSweep)
	}
	r := a.m[ip]
	if r == nil && len(a.m) >= a.max() {
		a.makeRoom(now, blockFor)
	}
	if r == nil || r.stale(now, blockFor) {
		// A stale record's failures are forgotten, not its checks under
		// way (end releases them) nor the checks waiting for them.
		r = r.fresh()
		a.m[ip] = r
	}
	return r
}

// failed counts one failure in r and returns the failures so far.
func (r *authRecord) failed(now time.Time, blockFor time.Duration, maxFailures int) int {
	r.fails++
	r.last = now
	if maxFailures > 0 && r.fails >= maxFailures {
		r.blockedUntil = now.Add(blockFor)
	}
	return r.fails
}

// fresh returns a record without failures that keeps r's checks under way
// and its waiters (r may be nil).
func (r *authRecord) fresh() *authRecord {
	if r == nil {
		return &authRecord{}
	}
	return &authRecord{checking: r.checking, ended: r.ended}
}

// expire drops stale records, so the map cannot grow without bound.
func (a *authFailures) expire(now time.Time, blockFor time.Duration) {
	for ip, r := range a.m {
		if r.stale(now, blockFor) && r.checking == 0 {
			delete(a.m, ip)
		}
	}
}

// max is the most records a keeps.
func (a *authFailures) max() int {
	if a.limit > 0 {
		return a.limit
	}
	return maxAuthRecords
}

// makeRoom makes room for one more record when a holds its limit or more
// (a.mu is held), as outbound's makeRoom does for its memories: the stale
// records go, then, while more than nine tenths of the limit are left,
// the least worth keeping. Those are, first, the addresses not blocked,
// fewest failures first, then soonest expiring first (a flood of single
// failures from new addresses evicts its own kind before a client's
// tenth guess), and only then the blocked addresses, the soonest
// unblocked first. A record with a password check under way or waiting
// for one (checking > 0, ended != nil) is never evicted: end must find
// the reservation begin counted, and wake its waiters. The next insert to
// need a pass comes a tenth of the limit later, so its cost per insert
// is small.
func (a *authFailures) makeRoom(now time.Time, blockFor time.Duration) {
	a.expire(now, blockFor)
	limit := a.max()
	n := len(a.m) - (limit - limit/10) // how many more to evict
	if n <= 0 {
		return
	}
	type candidate struct {
		ip      netip.Addr
		blocked bool
		fails   int
		until   time.Time
	}
	cs := make([]candidate, 0, len(a.m))
	for ip, r := range a.m {
		if r.checking > 0 || r.ended != nil {
			continue
		}
		until := r.last.Add(blockFor)
		if r.blockedUntil.After(until) {
			until = r.blockedUntil
		}
		cs = append(cs, candidate{ip, now.Before(r.blockedUntil), r.fails, until})
	}
	slices.SortFunc(cs, func(x, y candidate) int {
		if x.blocked != y.blocked {
			if x.blocked {
				return 1
			}
			return -1
		}
		return cmp.Or(cmp.Compare(x.fails, y.fails), x.until.Compare(y.until))
	})
	for _, c := range cs[:min(n, len(cs))] {
		delete(a.m, c.ip)
	}
}

// stale reports whether r is forgotten: its last failure is older than
// blockFor and no block holds.
func (r *authRecord) stale(now time.Time, blockFor time.Duration) bool {
	return now.Sub(r.last) > blockFor && now.After(r.blockedUntil)
}

func (a *authFailures) blocked(ip netip.Addr, now time.Time) bool {
	ip = clientKey(ip)
	a.mu.Lock()
	defer a.mu.Unlock()
	r := a.m[ip]
	return r != nil && now.Before(r.blockedUntil)
}
