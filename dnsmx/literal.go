package dnsmx

import (
	"errors"
	"net/netip"
	"strings"
)

// Errors of ParseAddressLiteral.
var (
	// ErrLiteralSyntax: not an IPv4 or IPv6 address literal of RFC 5321
	// §4.1.3.
	ErrLiteralSyntax = errors.New("bad address literal")
	// ErrLiteralNotUnicast: a well-formed literal that no mail server can
	// be at (unspecified, multicast or broadcast): connecting to 0.0.0.0 or
	// [::] would reach this host.
	ErrLiteralNotUnicast = errors.New("address literal is not a unicast address")
)

// ParseAddressLiteral parses an address literal of RFC 5321 §4.1.3 with its
// brackets: "[192.0.2.1]" or "[IPv6:2001:db8::1]" (the tag in any case).
// Beyond what net/netip accepts it keeps the RFC's counts: "::" stands for
// at least two groups, so at most six groups (four before an embedded IPv4
// address) may be written beside it; a zone is not part of the syntax. A
// general address literal (another tag) is ErrLiteralSyntax; a literal that
// is not a unicast address is ErrLiteralNotUnicast, with the address.
func ParseAddressLiteral(s string) (netip.Addr, error) {
	if len(s) < 3 || s[0] != '[' || s[len(s)-1] != ']' {
		return netip.Addr{}, ErrLiteralSyntax
	}
	in := s[1 : len(s)-1]
	var a netip.Addr
	if len(in) > 5 && strings.EqualFold(in[:5], "IPv6:") {
		v6 := in[5:]
		var err error
		a, err = netip.ParseAddr(v6)
		if err != nil || !a.Is6() || a.Zone() != "" || !rfc5321GroupCounts(v6) {
			return netip.Addr{}, ErrLiteralSyntax
		}
	} else {
		var err error
		a, err = netip.ParseAddr(in)
		if err != nil || !a.Is4() {
			return netip.Addr{}, ErrLiteralSyntax
		}
	}
	if !unicast(a) {
		return a, ErrLiteralNotUnicast
	}
	return a, nil
}

// unicast reports whether a mail server can be at a: not the unspecified
// address (connecting to 0.0.0.0 or :: reaches this host), a multicast
// address or the broadcast address.
func unicast(a netip.Addr) bool {
	u := a.Unmap()
	return !u.IsUnspecified() && !u.IsMulticast() && u != netip.AddrFrom4([4]byte{255, 255, 255, 255})
}

// rfc5321GroupCounts checks the group counts of RFC 5321's IPv6-comp and
// IPv6v4-comp for an address net/netip already parsed: with "::", at most 6
// hex groups besides it (4 when an IPv4 address ends it).
func rfc5321GroupCounts(v6 string) bool {
	if !strings.Contains(v6, "::") {
		return true // the full forms: netip checks their counts
	}
	max := 6
	if strings.Contains(v6, ".") {
		max = 4
		v6 = v6[:strings.LastIndexByte(v6, ':')] // the IPv4 part is not a hex group
	}
	n := 0
	for g := range strings.SplitSeq(v6, ":") {
		if g != "" {
			n++
		}
	}
	return n <= max
}
