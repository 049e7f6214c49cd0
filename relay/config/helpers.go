package config

import (
	"net/netip"
	"strings"
	"time"

	"github.com/mailhop/mailhop/internal/idn"
)

// IsTrusted reports whether a client at ip may relay without AUTH: whether ip
// is in one of policy.trusted_networks. An IPv4 address written as IPv6
// (::ffff:192.0.2.1, as a dual-stack socket reports it) counts as IPv4.
func (c *Config) IsTrusted(ip netip.Addr) bool {
	ip = ip.WithZone("").Unmap()
	for _, p := range c.Policy.Trusted {
		if p.Contains(ip) {
			return true
		}
	}
	return false
}

// MaySend reports whether the user may use addr as the envelope sender
// (MAIL FROM): addr equals one of the user's senders, or the user has
// "@domain" for addr's domain. Domains compare without case, and a domain
// in Unicode (an SMTPUTF8 sender, RFC 6531) as its A-label. Local parts
// compare without case too, as Postfix's smtpd_sender_login_maps lookups
// do: a mail client set up as Alice@ for alice@ is the same person, and no
// mail system gives those two to different people. The null sender never
// matches.
func (u *User) MaySend(addr string) bool {
	at := strings.LastIndexByte(addr, '@')
	if at <= 0 {
		return false
	}
	local, domain := addr[:at], addr[at+1:]
	for _, s := range u.Senders {
		sat := strings.LastIndexByte(s, '@')
		if sat < 0 || !sameDomain(s[sat+1:], domain) {
			continue
		}
		if sat == 0 || strings.EqualFold(s[:sat], local) {
			return true
		}
	}
	return false
}

// SendsFrom reports whether some address in domain is among the user's
// senders (an exact address or "@domain"): mail the user sends is DKIM
// signed only for such domains.
func (u *User) SendsFrom(domain string) bool {
	for _, s := range u.Senders {
		if sat := strings.LastIndexByte(s, '@'); sat >= 0 && sameDomain(s[sat+1:], domain) {
			return true
		}
	}
	return false
}

// sameDomain compares domain names without case and a final dot, a U-label
// as its A-label (RFC 5890), so "exämple.com" is "xn--exmple-cua.com".
func sameDomain(a, b string) bool {
	return strings.EqualFold(asciiDomain(a), asciiDomain(b))
}

// asciiDomain returns d without a final dot, international labels as
// A-labels (the Lookup profile of UTS #46, as dnsmx and delivery use); a
// name that is not a valid IDN is returned as it is.
func asciiDomain(d string) string { return idn.Key(strings.TrimSuffix(d, ".")) }

// FindUser returns the [[user]] with this name (compared exactly), or nil.
func (c *Config) FindUser(name string) *User {
	for i := range c.User {
		if c.User[i].Name == name {
			return &c.User[i]
		}
	}
	return nil
}

// RouteFor returns the route for mail to domain: the route listing the
// domain (compared without case, a U-label as its A-label), else the route
// with "*", else nil, which means delivery by MX.
func (c *Config) RouteFor(domain string) *Route {
	domain = asciiDomain(domain)
	var wildcard *Route
	for i := range c.Route {
		for _, d := range c.Route[i].Domains {
			switch {
			case strings.EqualFold(d, domain):
				return &c.Route[i]
			case d == "*" && wildcard == nil:
				wildcard = &c.Route[i]
			}
		}
	}
	return wildcard
}

// TLSLevelFor returns the TLS level for MX delivery to domain: the level
// of the [[tls_policy]] listing it (compared without case, a U-label as its
// A-label), else delivery.tls_policy, else TLSMay.
func (c *Config) TLSLevelFor(domain string) string {
	domain = asciiDomain(domain)
	for i := range c.TLSPolicies {
		for _, d := range c.TLSPolicies[i].Domains {
			if strings.EqualFold(d, domain) {
				return c.TLSPolicies[i].Level
			}
		}
	}
	if c.Delivery.TLSPolicy != "" {
		return c.Delivery.TLSPolicy
	}
	return TLSMay
}

// RetryDurations returns delivery.retry_intervals as durations: the wait
// before the second attempt, the third, and so on; the last one repeats.
func (c *Config) RetryDurations() []time.Duration {
	out := make([]time.Duration, len(c.Delivery.RetryIntervals))
	for i, d := range c.Delivery.RetryIntervals {
		out[i] = d.Duration
	}
	return out
}
