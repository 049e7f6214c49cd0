package dnsmx

import (
	"cmp"
	"context"
	"errors"
	"math/rand/v2"
	"net/netip"
	"slices"
	"strings"
	"sync"

	"github.com/miekg/dns"
)

// maxMXHosts is how many MX hosts LookupMX returns at most; more only
// delays a bounce (Postfix's smtp_mx_address_limit plays the same role).
const maxMXHosts = 10

// maxCNAMEHops bounds how many CNAMEs a lookup follows.
const maxCNAMEHops = 8

// MX is one host to try for a domain.
type MX struct {
	Host     string       // MX target, lower case, no trailing dot (for implicit MX: the domain itself)
	Pref     uint16       // MX preference; lower is tried first
	Addrs    []netip.Addr // A and AAAA of Host (IPv4 first)
	Implicit bool         // no MX records: the domain's own address (RFC 5321 §5.1)
	// Secure: the MX answer and Host's address answers all carried the AD
	// bit (DNSSEC-validated). Only then may DANE TLSA records be used for
	// Host (RFC 7672 §2.2).
	Secure bool
}

// LookupHost returns the addresses of a host name, A then AAAA, for
// smarthosts. An IP address ("192.0.2.1", "2001:db8::1") or address literal
// ("[192.0.2.1]", "[IPv6:2001:db8::1]") is returned as is. Every error is a
// *Error.
func (r *Resolver) LookupHost(ctx context.Context, host string) ([]netip.Addr, error) {
	if a, err := netip.ParseAddr(strings.TrimSpace(host)); err == nil {
		return []netip.Addr{a}, nil
	}
	fqdn, lit, err := normalize(host)
	if err != nil {
		return nil, err
	}
	if lit.IsValid() {
		return []netip.Addr{lit}, nil
	}
	addrs, _, err := r.lookupAddrs(ctx, fqdn)
	if err != nil {
		return nil, onDomain(err, hostName(fqdn), "")
	}
	return addrs, nil
}

// LookupMX returns the hosts to try for domain, in order: sorted by
// preference, random order among equal preference, at most 10 hosts. Hosts
// whose address lookup failed are left out; if all fail, the error is
// returned. Every error is a *Error (see the package doc for how failures
// are classified).
func (r *Resolver) LookupMX(ctx context.Context, domain string) ([]MX, error) {
	fqdn, lit, err := normalize(domain)
	if err != nil {
		return nil, err
	}
	if lit.IsValid() {
		return []MX{{Host: lit.String(), Addrs: []netip.Addr{lit}, Implicit: true}}, nil
	}
	d := hostName(fqdn)

	rrs, nx, mxSecure, err := r.resolveSecure(ctx, fqdn, dns.TypeMX)
	if err != nil {
		return nil, onDomain(err, d, "")
	}
	if nx {
		return nil, permanent(d, CodeNoSuchDomain, "domain does not exist (NXDOMAIN)")
	}
	if len(rrs) == 0 {
		// RFC 5321 §5.1: no MX records, so the domain itself is the
		// one host, with preference 0.
		addrs, addrSecure, err := r.lookupAddrs(ctx, fqdn)
		if err != nil {
			return nil, onDomain(err, d, "no MX records; ")
		}
		return []MX{{Host: d, Addrs: addrs, Implicit: true, Secure: mxSecure && addrSecure}}, nil
	}

	recs := make([]*dns.MX, 0, len(rrs))
	for _, rr := range rrs {
		if mx, ok := rr.(*dns.MX); ok {
			recs = append(recs, mx)
		}
	}
	// RFC 7505 §3: a null MX is a single MX record whose target is ".".
	// (§3 says its preference SHOULD be 0; any preference is accepted,
	// since "." names no host either way.) A "." among other records
	// violates §3 and is ignored below like any host without an address.
	if len(recs) == 1 && recs[0].Mx == "." {
		return nil, permanent(d, CodeNullMX, "domain does not accept mail (null MX, RFC 7505)")
	}

	// RFC 5321 §5.1: lowest preference first; among equal preferences the
	// order is random to spread the load.
	rand.Shuffle(len(recs), func(i, j int) { recs[i], recs[j] = recs[j], recs[i] })
	slices.SortStableFunc(recs, func(a, b *dns.MX) int { return cmp.Compare(a.Preference, b.Preference) })

	hosts := make([]MX, 0, min(len(recs), maxMXHosts))
	seen := make(map[string]bool)
	for _, rec := range recs {
		h := hostName(rec.Mx)
		if h == "" || seen[h] || isIPLiteral(h) || !isHostName(h) {
			// "." in a set of several; a duplicate (kept at its best
			// preference); an IP literal, which RFC 5321 §5.1 does not
			// allow as an MX target; a name no host has (below).
			continue
		}
		seen[h] = true
		hosts = append(hosts, MX{Host: h, Pref: rec.Preference})
		if len(hosts) == maxMXHosts {
			break
		}
	}
	if len(hosts) == 0 {
		return nil, permanent(d, CodeUnroutable, "MX records name no usable host")
	}

	errs := make([]error, len(hosts))
	var wg sync.WaitGroup
	for i := range hosts {
		wg.Go(func() {
			var addrSecure bool
			hosts[i].Addrs, addrSecure, errs[i] = r.lookupAddrs(ctx, dns.Fqdn(hosts[i].Host))
			hosts[i].Secure = mxSecure && addrSecure
		})
	}
	wg.Wait()

	out := hosts[:0]
	var temp, perm []string
	for i, h := range hosts {
		if errs[i] == nil {
			out = append(out, h)
			continue
		}
		// Each host's failure as onDomain words it: its message, not the
		// whole Error() ("dns HOST: ... (4.4.3)"), which repeated the host
		// name and the code inside the domain's own message.
		why := onDomain(errs[i], h.Host, "").(*Error)
		if why.Temporary {
			temp = append(temp, h.Host+": "+why.Msg)
		} else {
			perm = append(perm, h.Host+": "+why.Msg)
		}
	}
	if len(out) > 0 {
		return out, nil
	}
	if len(temp) > 0 {
		// Some host may get an address later: retry.
		return nil, temporary(d, "no MX host has an address: %s", strings.Join(append(temp, perm...), "; "))
	}
	return nil, permanent(d, CodeUnroutable, "no MX host has an address: %s", strings.Join(perm, "; "))
}

// isHostName reports whether h, an MX target as hostName writes it, is a
// host name (RFC 5321 §2.3.5, RFC 1123 §2.1): labels of 1 to 63 letters,
// digits, hyphens (and underscores, which some sites use), 253 octets in
// all. miekg/dns writes any other octet of a label escaped ("mx\ 1",
// "a\.b", "\000"): such a target is no host to connect to, its name no
// TLS server name and nothing to put in logs and reports (Postfix skips
// such a record as malformed).
func isHostName(h string) bool {
	if h == "" || len(h) > 253 {
		return false
	}
	for label := range strings.SplitSeq(h, ".") {
		if label == "" || len(label) > 63 {
			return false
		}
		for i := 0; i < len(label); i++ {
			c := label[i]
			if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '-' || c == '_') {
				return false
			}
		}
	}
	return true
}

// isIPLiteral reports whether an MX target is an IP address, bare or in
// brackets.
func isIPLiteral(h string) bool {
	if strings.HasPrefix(h, "[") {
		return true
	}
	_, err := netip.ParseAddr(h)
	return err == nil
}

// lookupAddrs returns the A and AAAA addresses of fqdn, IPv4 first, asking
// for both at once. If one family fails but the other has addresses, the
// addresses win. No address at all is a permanent error; a failure of
// either query with no address from the other is temporary. An address no
// server can be at (0.0.0.0, ::, multicast, broadcast) is left out, and a
// host with only such addresses is a permanent error. secure reports that
// both answers carried the AD bit.
func (r *Resolver) lookupAddrs(ctx context.Context, fqdn string) (addrs []netip.Addr, secure bool, err error) {
	type result struct {
		rrs    []dns.RR
		nx     bool
		secure bool
		err    error
	}
	var v4, v6 result
	var wg sync.WaitGroup
	wg.Go(func() { v6.rrs, v6.nx, v6.secure, v6.err = r.resolveSecure(ctx, fqdn, dns.TypeAAAA) })
	v4.rrs, v4.nx, v4.secure, v4.err = r.resolveSecure(ctx, fqdn, dns.TypeA)
	wg.Wait()
	secure = v4.err == nil && v6.err == nil && v4.secure && v6.secure

	var notUnicast []string
	for _, rr := range append(v4.rrs, v6.rrs...) {
		var a netip.Addr
		switch rr := rr.(type) {
		case *dns.A:
			a, _ = netip.AddrFromSlice(rr.A.To4())
		case *dns.AAAA:
			a, _ = netip.AddrFromSlice(rr.AAAA.To16())
		}
		if !a.IsValid() || slices.Contains(addrs, a) {
			continue
		}
		if !unicast(a) {
			// As for an address literal: no server is there, and
			// connecting to 0.0.0.0 would reach this host.
			notUnicast = append(notUnicast, a.String())
			continue
		}
		addrs = append(addrs, a)
	}
	if len(addrs) > 0 {
		return addrs, secure, nil
	}
	if v4.err != nil {
		return nil, false, v4.err
	}
	if v6.err != nil {
		return nil, false, v6.err
	}
	if len(notUnicast) > 0 {
		return nil, false, permanent(hostName(fqdn), CodeNoSuchDomain, "host has no unicast address (%s)", strings.Join(notUnicast, ", "))
	}
	if v4.nx || v6.nx {
		return nil, false, permanent(hostName(fqdn), CodeNoSuchDomain, "no such host (NXDOMAIN)")
	}
	return nil, false, permanent(hostName(fqdn), CodeNoSuchDomain, "host has no A or AAAA records")
}

// resolve returns the records of type qtype at name, following CNAMEs: the
// chain in an answer, then a new query for the last target if the server
// stopped there. nx reports NXDOMAIN (for the end of the chain); no records
// and no error is NODATA. The error is a temporary *Error.
func (r *Resolver) resolve(ctx context.Context, name string, qtype uint16) (rrs []dns.RR, nx bool, err error) {
	rrs, nx, _, err = r.resolveSecure(ctx, name, qtype)
	return rrs, nx, err
}

// resolveSecure is resolve that also reports whether every answer on the
// way (the CNAME chain included) carried the AD bit.
func (r *Resolver) resolveSecure(ctx context.Context, name string, qtype uint16) (rrs []dns.RR, nx, secure bool, err error) {
	hops := 0
	secure = true
	for {
		a, err := r.query(ctx, name, qtype)
		if err != nil {
			return nil, false, false, err
		}
		secure = secure && a.secure
		target := name
		for {
			var found []dns.RR
			next := ""
			for _, rr := range a.rrs {
				h := rr.Header()
				if h.Class != dns.ClassINET || !strings.EqualFold(h.Name, target) {
					continue
				}
				if h.Rrtype == qtype {
					found = append(found, rr)
				} else if c, ok := rr.(*dns.CNAME); ok && next == "" {
					next = dns.Fqdn(strings.ToLower(c.Target))
				}
			}
			if len(found) > 0 {
				return found, false, secure, nil
			}
			if next == "" {
				break
			}
			hops++
			if hops > maxCNAMEHops {
				return nil, false, false, temporary(hostName(name), "more than %d CNAMEs from %s", maxCNAMEHops, hostName(name))
			}
			target = next
		}
		if a.rcode == dns.RcodeNameError {
			return nil, true, secure, nil
		}
		if target == name {
			return nil, false, secure, nil
		}
		// The server gave the CNAME but not what it points to.
		name = target
	}
}

// onDomain restates err (from a lookup of some name) as a failure of the
// domain the caller asked about, keeping its classification.
func onDomain(err error, domain, prefix string) error {
	var e *Error
	if !errors.As(err, &e) {
		return temporary(domain, "%s%v", prefix, err)
	}
	msg := e.Msg
	if e.Domain != domain {
		msg = e.Domain + ": " + msg
	}
	return &Error{Domain: domain, Temporary: e.Temporary, Enhanced: e.Enhanced, Msg: prefix + msg}
}
