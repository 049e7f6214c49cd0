// Package dnstest runs a real DNS server on loopback for tests, in the
// manner of net/http/httptest: one line starts it on a kernel-chosen port
// (the same for UDP and TCP), t.Cleanup stops it.
//
//	srv := dnstest.New(t, dnstest.Zone{
//		"example.com.":    {dnstest.MX("example.com", 10, "mx.example.com")},
//		"mx.example.com.": {dnstest.A("mx.example.com", "127.0.0.1")},
//	})
//	r, _ := dnsmx.NewResolver([]string{srv.Addr}, time.Second)
//
// It answers like a recursive resolver that knows only the zone:
//
//   - a name not in the zone: NXDOMAIN, with an SOA in the authority section;
//   - a name without records of the asked type: NOERROR/NODATA, with an SOA;
//   - a CNAME: the CNAME, then what it points to if that is in the zone
//     (unless ChaseCNAME(false));
//   - over UDP, an answer larger than the client's EDNS0 size (512 bytes
//     without EDNS0) is truncated with the TC bit, like a real server.
//
// Faults are injected per name: SetRcode (SERVFAIL, REFUSED, ...), Drop (no
// reply, so the client times out) and Truncate (UDP answers empty with TC
// set; TCP answers complete); RefuseEDNS makes the whole server one that
// knows no EDNS0. Respond replaces the zone with a function that writes any
// octets as the reply (a broken or hostile server). All setters are safe to
// call while serving.
package dnstest

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/miekg/dns"
)

// DefaultTTL is the TTL of the records the helper constructors make.
const DefaultTTL = 300

// Zone maps an owner name (FQDN, lower case; other spellings are
// normalised) to its records.
type Zone map[string][]dns.RR

// Server is a DNS server on 127.0.0.1, serving a Zone over UDP and TCP.
type Server struct {
	// Addr is "127.0.0.1:port", the same port for UDP and TCP.
	Addr string

	udp, tcp *dns.Server
	queries  atomic.Int64

	mu       sync.Mutex
	zone     Zone
	rcodes   map[string]int
	drops    map[string]bool
	truncate map[string]bool
	ad       bool
	insecure map[string]bool // names answered without AD even with SetAD(true)
	chase    bool
	noEDNS   bool
	respond  func(req *dns.Msg) []byte
	closed   bool
}

// New starts a server for zone (which it copies) and stops it when the test
// ends.
func New(t testing.TB, zone Zone) *Server {
	t.Helper()
	s, err := Start(zone)
	if err != nil {
		t.Fatalf("dnstest: %v", err)
	}
	t.Cleanup(s.Close)
	return s
}

// Start starts a server for zone (which it copies), for use outside tests;
// stop it with Close.
func Start(zone Zone) (*Server, error) {
	s := &Server{
		zone:     Zone{},
		rcodes:   map[string]int{},
		drops:    map[string]bool{},
		truncate: map[string]bool{},
		chase:    true,
	}
	for name, rrs := range zone {
		s.zone[canon(name)] = append([]dns.RR(nil), rrs...)
	}
	pc, ln, err := listen()
	if err != nil {
		return nil, err
	}
	s.Addr = pc.LocalAddr().String()
	s.udp = &dns.Server{PacketConn: pc, Handler: s}
	s.tcp = &dns.Server{Listener: ln, Handler: s}
	for _, srv := range []*dns.Server{s.udp, s.tcp} {
		started := make(chan struct{})
		failed := make(chan error, 1)
		srv.NotifyStartedFunc = func() { close(started) }
		go func() { failed <- srv.ActivateAndServe() }()
		select {
		case <-started:
		case err := <-failed:
			pc.Close()
			ln.Close()
			return nil, fmt.Errorf("dnstest: serve: %v", err)
		}
	}
	return s, nil
}

// listen binds UDP on a kernel-chosen loopback port and TCP on the same
// port, trying again if another process holds that TCP port.
func listen() (net.PacketConn, net.Listener, error) {
	var last error
	for range 20 {
		pc, err := net.ListenPacket("udp", "127.0.0.1:0")
		if err != nil {
			return nil, nil, fmt.Errorf("dnstest: listen udp: %v", err)
		}
		ln, err := net.Listen("tcp", pc.LocalAddr().String())
		if err == nil {
			return pc, ln, nil
		}
		pc.Close()
		last = err
	}
	return nil, nil, fmt.Errorf("dnstest: no port free for both udp and tcp: %v", last)
}

// Close stops the server. It is safe to call more than once.
func (s *Server) Close() {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return
	}
	s.closed = true
	s.mu.Unlock()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	s.udp.ShutdownContext(ctx)
	s.tcp.ShutdownContext(ctx)
}

// Set replaces the records of name; with no records, name leaves the zone
// (NXDOMAIN).
func (s *Server) Set(name string, rrs ...dns.RR) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(rrs) == 0 {
		delete(s.zone, canon(name))
		return
	}
	s.zone[canon(name)] = append([]dns.RR(nil), rrs...)
}

// Add appends records to those of name.
func (s *Server) Add(name string, rrs ...dns.RR) {
	s.mu.Lock()
	defer s.mu.Unlock()
	n := canon(name)
	s.zone[n] = append(s.zone[n], rrs...)
}

// SetRcode answers every query for name with rcode (e.g.
// dns.RcodeServerFailure, dns.RcodeRefused) and no records;
// dns.RcodeSuccess removes the override.
func (s *Server) SetRcode(name string, rcode int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if rcode == dns.RcodeSuccess {
		delete(s.rcodes, canon(name))
		return
	}
	s.rcodes[canon(name)] = rcode
}

// Drop makes the server never answer queries for name, so clients time out.
func (s *Server) Drop(name string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.drops[canon(name)] = true
}

// Truncate makes UDP answers for name empty with the TC bit set, so clients
// must ask again over TCP, where the answer is complete.
func (s *Server) Truncate(name string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.truncate[canon(name)] = true
}

// Reset removes the Drop, Truncate and SetRcode faults of name.
func (s *Server) Reset(name string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	n := canon(name)
	delete(s.drops, n)
	delete(s.truncate, n)
	delete(s.rcodes, n)
}

// SetAD sets or clears the AD (authenticated data) bit on every answer, as
// a validating resolver would for a DNSSEC-signed zone.
func (s *Server) SetAD(on bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.ad = on
}

// SetInsecure makes the answers for name carry no AD bit even when SetAD is
// on: a name in a zone that is not signed, or whose validation a resolver
// could not finish, among secure ones.
func (s *Server) SetInsecure(name string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.insecure == nil {
		s.insecure = make(map[string]bool)
	}
	s.insecure[canon(name)] = true
}

// ChaseCNAME says whether an answer that meets a CNAME also carries the
// records the CNAME points to (the default) or stops at the CNAME, making
// the client ask again for the target.
func (s *Server) ChaseCNAME(on bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.chase = on
}

// RefuseEDNS makes the server answer every query that carries EDNS0 (an
// OPT record) with FORMERR and no OPT, as a server or forwarder that knows
// no EDNS does (RFC 6891 §7); queries without it are answered as usual.
func (s *Server) RefuseEDNS(on bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.noEDNS = on
}

// Respond makes fn answer every query in place of the zone and its faults:
// the octets fn returns go back as they are, over UDP or TCP, but for their
// first two, the message ID, which are the query's (so the client takes
// them for its answer); nil sends nothing. A nil fn serves the zone again.
func (s *Server) Respond(fn func(req *dns.Msg) []byte) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.respond = fn
}

// Queries returns the number of queries received (answered or dropped).
func (s *Server) Queries() int { return int(s.queries.Load()) }

// ServeDNS answers one query; it implements dns.Handler.
func (s *Server) ServeDNS(w dns.ResponseWriter, req *dns.Msg) {
	s.queries.Add(1)
	s.mu.Lock()
	respond := s.respond
	s.mu.Unlock()
	if respond != nil {
		if b := respond(req); b != nil {
			b = append([]byte(nil), b...)
			if len(b) >= 2 {
				b[0], b[1] = byte(req.Id>>8), byte(req.Id)
			}
			w.Write(b)
		}
		return
	}
	m, drop := s.answer(req, w.RemoteAddr().Network() == "udp")
	if drop {
		return
	}
	w.WriteMsg(m)
}

// maxChase bounds CNAME chasing inside the zone (a loop in the zone must
// not hang the server).
const maxChase = 16

func (s *Server) answer(req *dns.Msg, udp bool) (m *dns.Msg, drop bool) {
	m = new(dns.Msg)
	m.SetReply(req)
	m.RecursionAvailable = true
	m.Compress = true
	size := dns.MinMsgSize
	if opt := req.IsEdns0(); opt != nil {
		s.mu.Lock()
		noEDNS := s.noEDNS
		s.mu.Unlock()
		if noEDNS {
			m.Rcode = dns.RcodeFormatError
			return m, false
		}
		size = max(int(opt.UDPSize()), dns.MinMsgSize)
		m.SetEdns0(opt.UDPSize(), false)
	}
	if req.Opcode != dns.OpcodeQuery || len(req.Question) != 1 {
		m.Rcode = dns.RcodeFormatError
		return m, false
	}
	q := req.Question[0]
	name := canon(q.Name)

	s.mu.Lock()
	defer s.mu.Unlock()
	m.AuthenticatedData = s.ad && !s.insecure[name]
	if s.drops[name] {
		return nil, true
	}
	if rc, ok := s.rcodes[name]; ok {
		m.Rcode = rc
		return m, false
	}
	if udp && s.truncate[name] {
		m.Truncated = true
		return m, false
	}

	cur := name
	for range maxChase {
		rrs, ok := s.zone[cur]
		if !ok {
			m.Rcode = dns.RcodeNameError
			m.Ns = []dns.RR{s.soaFor(cur)}
			break
		}
		var cname *dns.CNAME
		n := len(m.Answer)
		for _, rr := range rrs {
			h := rr.Header()
			switch {
			case h.Rrtype == q.Qtype || q.Qtype == dns.TypeANY:
				m.Answer = append(m.Answer, dns.Copy(rr))
			case h.Rrtype == dns.TypeCNAME:
				cname = rr.(*dns.CNAME)
			}
		}
		if len(m.Answer) > n || cname == nil {
			if len(m.Answer) == n {
				m.Ns = []dns.RR{s.soaFor(cur)} // NODATA
			}
			break
		}
		m.Answer = append(m.Answer, dns.Copy(cname))
		if !s.chase {
			break
		}
		cur = canon(cname.Target)
	}
	if udp && m.Len() > size {
		m.Truncate(size)
	}
	return m, false
}

// soaFor returns the SOA of the closest enclosing name that has one in the
// zone, or a default SOA (negative TTL 60 s) owned by name's parent.
func (s *Server) soaFor(name string) dns.RR {
	for n := name; ; {
		for _, rr := range s.zone[n] {
			if soa, ok := rr.(*dns.SOA); ok {
				return dns.Copy(soa)
			}
		}
		i := strings.IndexByte(n, '.')
		if n == "." || i < 0 || i == len(n)-1 {
			break
		}
		n = n[i+1:]
	}
	owner := name
	if i := strings.IndexByte(name, '.'); i >= 0 && i < len(name)-1 {
		owner = name[i+1:]
	}
	return SOA(owner, 60)
}

func canon(name string) string { return dns.CanonicalName(name) }

func hdr(name string, t uint16) dns.RR_Header {
	return dns.RR_Header{Name: canon(name), Rrtype: t, Class: dns.ClassINET, Ttl: DefaultTTL}
}

// MX returns an MX record; host "." makes a null MX (RFC 7505).
func MX(name string, pref uint16, host string) dns.RR {
	return &dns.MX{Hdr: hdr(name, dns.TypeMX), Preference: pref, Mx: canon(host)}
}

// A returns an A record; it panics if ip is not an IPv4 address.
func A(name, ip string) dns.RR {
	a := net.ParseIP(ip).To4()
	if a == nil {
		panic("dnstest.A: not an IPv4 address: " + ip)
	}
	return &dns.A{Hdr: hdr(name, dns.TypeA), A: a}
}

// AAAA returns an AAAA record; it panics if ip is not an IPv6 address.
func AAAA(name, ip string) dns.RR {
	a := net.ParseIP(ip)
	if a == nil || a.To4() != nil {
		panic("dnstest.AAAA: not an IPv6 address: " + ip)
	}
	return &dns.AAAA{Hdr: hdr(name, dns.TypeAAAA), AAAA: a}
}

// CNAME returns a CNAME record.
func CNAME(name, target string) dns.RR {
	return &dns.CNAME{Hdr: hdr(name, dns.TypeCNAME), Target: canon(target)}
}

// TXT returns a TXT record with the given strings (each at most 255 bytes).
func TXT(name string, txt ...string) dns.RR {
	return &dns.TXT{Hdr: hdr(name, dns.TypeTXT), Txt: txt}
}

// SOA returns an SOA record whose negative-caching TTL (RFC 2308) is
// minTTL; put one at a zone's apex to control negative answers below it.
func SOA(name string, minTTL uint32) dns.RR {
	h := hdr(name, dns.TypeSOA)
	h.Ttl = minTTL
	return &dns.SOA{Hdr: h, Ns: "ns.dnstest.", Mbox: "hostmaster.dnstest.",
		Serial: 1, Refresh: 3600, Retry: 600, Expire: 86400, Minttl: minTTL}
}

// WithTTL sets the TTL of rr and returns it, for building zones inline:
// dnstest.WithTTL(dnstest.A("h.example", "192.0.2.1"), 5).
func WithTTL(rr dns.RR, ttl uint32) dns.RR {
	rr.Header().Ttl = ttl
	return rr
}

// RR parses one record in zone-file syntax ("example.com. 300 IN MX 10
// mx.example.com."), for record types without a helper; it panics on a
// syntax error.
func RR(s string) dns.RR {
	rr, err := dns.NewRR(s)
	if err != nil {
		panic(errors.New("dnstest.RR: " + err.Error()))
	}
	return rr
}
