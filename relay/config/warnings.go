package config

import (
	"fmt"
	"net/netip"
)

// ExamplePasswordHash is the password_hash of the example users in
// config.example.toml and dist/: the bcrypt hash of "change-me", which
// anyone who reads the README knows.
const ExamplePasswordHash = "$2a$10$ztPAUp3f7JGTN.bLAAKzEumSXR.CLs0LFSVyqEeFt8571pCmrhScq"

// examplePassword is the documented password of the examples.
const examplePassword = "change-me"

// Warnings returns what is allowed but most likely a mistake: users with
// the example password, a smarthost password left at the example's. The
// configuration still loads (config.example.toml must run as it is);
// check-config prints them and serve logs them.
func (c *Config) Warnings() []string {
	var ws []string
	for i, u := range c.User {
		if u.PasswordHash == ExamplePasswordHash {
			ws = append(ws, fmt.Sprintf("user[%d] (%s): password_hash is the example's (the password %q, published in the README): make one with `mailhop passwd`",
				i, u.Name, examplePassword))
		}
	}
	for i, n := range c.Policy.TrustedNetworks {
		p, err := netip.ParsePrefix(n)
		if err != nil {
			continue
		}
		if p.Masked() != p {
			ws = append(ws, fmt.Sprintf("policy.trusted_networks[%d]: %q has host bits set; it means %s (write that, or /%d for one host)",
				i, n, p.Masked(), p.Addr().BitLen()))
		}
		if wideNetwork(p) {
			ws = append(ws, fmt.Sprintf("policy.trusted_networks[%d]: %q lets a large part of the Internet relay without AUTH (an open relay): list only your own networks",
				i, n))
		}
	}
	for i, r := range c.Route {
		if r.Password == examplePassword {
			ws = append(ws, fmt.Sprintf("route[%d]: password is the example's %q", i, examplePassword))
		}
	}
	if dw, age := c.Delivery.DelayWarning.Duration, c.Delivery.MaxQueueAge.Duration; dw > 0 && age > 0 && dw >= age {
		ws = append(ws, fmt.Sprintf("delivery.delay_warning (%s) is not shorter than delivery.max_queue_age (%s): a sender is never told of a delay before the bounce", dw, age))
	}
	// Mail past per_domain_concurrency waits without a delivery slot; below
	// it, a domain whose servers stall takes delivery slots for their
	// timeouts, and with as many as concurrency, every one of them.
	if n, pd := c.Delivery.Concurrency, c.Delivery.PerDomainConcurrency; n > 1 && pd >= n {
		ws = append(ws, fmt.Sprintf("delivery.per_domain_concurrency (%d) is not below delivery.concurrency (%d): one domain whose servers stall can take every connection and hold up mail to all others until their timeouts; set it lower",
			pd, n))
	}
	// RFC 5321 §4.5.3.1.6: a server must take text lines of 998 octets;
	// lower limits refuse ordinary mail.
	if n := c.Limits.MaxLineLength; n > 0 && n < 998 {
		ws = append(ws, fmt.Sprintf("limits.max_line_length = %d is below the 998 octets RFC 5321 requires a server to accept: ordinary mail will be refused", n))
	}
	if n := c.Limits.MaxHeaderSize; n > 0 && n < 998 {
		ws = append(ws, fmt.Sprintf("limits.max_header_size = %d is smaller than one header line may be (998 octets): ordinary mail will be refused", n))
	}
	return ws
}

// wideNetwork reports whether p is wider than any one organisation's
// network: shorter than /8 for IPv4 (IPv4-mapped IPv6 too), /16 for IPv6.
func wideNetwork(p netip.Prefix) bool {
	switch a := p.Addr(); {
	case a.Is4():
		return p.Bits() < 8
	case a.Is4In6() && p.Bits() >= 96:
		return p.Bits()-96 < 8
	}
	return p.Bits() < 16
}
