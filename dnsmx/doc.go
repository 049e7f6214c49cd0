// Package dnsmx answers the one question outbound delivery asks of DNS:
// which hosts, at which addresses, should mail for a domain go to?
//
// Every query goes through github.com/miekg/dns to the configured servers
// (or those of /etc/resolv.conf), tried in order: UDP with EDNS0 (a
// 1232-byte payload, the DNS Flag Day 2020 value that avoids IP
// fragmentation) and the RD bit set, asked again without EDNS0 when the
// server answers FORMERR or NOTIMP to it (a server that knows no EDNS, RFC
// 6891 §7; not for TLSA, which needs DNSSEC), and retried over TCP when the
// answer comes back truncated (TC bit).
//
// LookupMX follows RFC 5321 §5.1 and RFC 7505:
//
//  1. The domain is normalised: lower-case ASCII, a UTF-8 name converted to
//     A-labels (IDNA), an address literal "[192.0.2.1]" / "[IPv6:2001:db8::1]"
//     answered with that address and no query.
//  2. MX records are fetched, CNAMEs followed (in the answer, or by asking
//     again for the target; at most 8 hops).
//  3. No MX records at all: the domain itself is the implicit MX, at its own
//     A/AAAA addresses. A single MX whose target is "." is a null MX: the
//     domain accepts no mail.
//  4. The hosts are sorted by preference, shuffled among equal preferences,
//     and cut to the first 10; an MX target that is an IP literal, or no
//     host name (an octet other than a letter, digit, '-' or '_' in a
//     label, which miekg/dns writes escaped: "mx\ 1.example"), is ignored.
//  5. The A and AAAA records of every host are fetched in parallel (IPv4
//     first); hosts with no address are left out.
//
// # Failure classification
//
// Every error returned is a *Error, which says whether to retry
// (Temporary) and carries the RFC 3463 enhanced status for the DSN:
//
//   - NXDOMAIN for the domain, or no MX and no address: permanent, 5.1.2
//     (bounce now).
//   - MX records of which no host has an address (each NXDOMAIN or without
//     A and AAAA, or an IP address or no host name as MX target):
//     permanent, 5.4.4, as
//     Postfix reports it.
//   - Null MX (RFC 7505): permanent, 5.1.10.
//   - SERVFAIL, REFUSED, any other error rcode, timeouts, network errors, a
//     CNAME chain that is too long: temporary, 4.4.3 (retry later). If some
//     MX hosts fail temporarily and the others have no address, the
//     lookup is temporary too: a later attempt may succeed.
//
// IsTemporary treats any error that is not a *Error as temporary, so an
// unexpected failure leads to a retry, never to a lost message.
//
// # Cache
//
// Answers are cached per (name, type) in a bounded LRU: positive answers for
// the smallest TTL in them, negative answers (NXDOMAIN, NODATA) for the SOA
// minimum (RFC 2308), at most one hour. Temporary failures are not cached.
package dnsmx
