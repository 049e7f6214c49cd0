package dnsmx

import (
	"net/netip"
	"strings"

	"github.com/mailhop/mailhop/internal/idn"
	"github.com/miekg/dns"
)

// normalize turns a mail domain as written in an address into what is asked
// of DNS: a lower-case ASCII FQDN. An address literal (RFC 5321 §4.1.3:
// "[192.0.2.1]", "[IPv6:2001:db8::1]") is returned as addr instead.
// A name that cannot be a domain is a permanent error.
func normalize(domain string) (fqdn string, addr netip.Addr, err error) {
	d := strings.TrimSpace(domain)
	if strings.HasPrefix(d, "[") && strings.HasSuffix(d, "]") {
		a, err := ParseAddressLiteral(d)
		if err != nil {
			return "", netip.Addr{}, permanent(domain, CodeNoSuchDomain, "%v", err)
		}
		return "", a, nil
	}
	d = strings.TrimSuffix(d, ".")
	if d == "" {
		return "", netip.Addr{}, permanent(domain, CodeNoSuchDomain, "empty domain")
	}
	// RFC 5890: a U-label is looked up as its A-label. The Lookup profile
	// also maps case and width (UTS #46).
	if d, err = idn.ALabel(d); err != nil {
		return "", netip.Addr{}, permanent(domain, CodeNoSuchDomain, "bad internationalized domain: %v", err)
	}
	fqdn = dns.Fqdn(d)
	if _, ok := dns.IsDomainName(fqdn); !ok || strings.Contains(d, "..") || strings.ContainsAny(d, " \t\r\n\\") {
		return "", netip.Addr{}, permanent(domain, CodeNoSuchDomain, "not a valid domain name")
	}
	return fqdn, netip.Addr{}, nil
}

// ALabelAddress returns addr with its domain as A-labels (RFC 5890, the
// Lookup profile this package queries with), for a next hop without
// SMTPUTF8 or a trace field that must stay ASCII; an ASCII address is
// returned as it is. false when the local part is not ASCII (no form
// without SMTPUTF8 exists) or the domain is no valid IDN.
func ALabelAddress(addr string) (string, bool) {
	if isASCII(addr) {
		return addr, true
	}
	at := strings.LastIndexByte(addr, '@')
	if at < 0 || !isASCII(addr[:at]) {
		return "", false
	}
	d, err := idn.ALabel(addr[at+1:])
	if err != nil {
		return "", false
	}
	return addr[:at+1] + d, true
}

func isASCII(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] >= 0x80 {
			return false
		}
	}
	return true
}

// hostName is the form MX.Host takes: lower case, no trailing dot.
func hostName(fqdn string) string {
	return strings.TrimSuffix(strings.ToLower(fqdn), ".")
}

// IsDomainSyntax reports whether s is written as a domain of RFC 5321
// §4.1.2: dot-separated labels of letters, digits and inner hyphens, each
// 1–63 octets, at most 255 octets in all, no trailing dot. With utf8, octets
// of UTF-8 (U-labels, RFC 6531) are letters too. It checks the form only;
// whether the name exists is DNS's business.
func IsDomainSyntax(s string, utf8 bool) bool {
	if s == "" || len(s) > 255 {
		return false
	}
	for label := range strings.SplitSeq(s, ".") {
		if label == "" || len(label) > 63 || label[0] == '-' || label[len(label)-1] == '-' {
			return false
		}
		for i := 0; i < len(label); i++ {
			c := label[i]
			ok := 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '-' || c >= 0x80 && utf8
			if !ok {
				return false
			}
		}
	}
	return true
}
