package outbound

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"time"

	"github.com/mailhop/mailhop/dnsmx"
	"github.com/mailhop/mailhop/relay/config"
	"github.com/mailhop/mailhop/relay/smtperr"
)

// MXResolver is what the agent asks of DNS; *dnsmx.Resolver implements it.
// Errors should be *dnsmx.Error; any other error is treated as temporary.
type MXResolver interface {
	LookupMX(ctx context.Context, domain string) ([]dnsmx.MX, error)
	LookupHost(ctx context.Context, host string) ([]netip.Addr, error)
}

// noTLSFor is how long a host whose STARTTLS handshake failed is reached
// in plain text before STARTTLS is tried again.
const noTLSFor = 3 * time.Hour

// smarthosts returns a route's "host:port" list.
func smarthosts(r *config.Route) []string {
	if len(r.Smarthosts) > 0 {
		return r.Smarthosts
	}
	switch v := r.Smarthost.(type) {
	case string:
		return []string{v}
	case []string:
		return v
	case []any:
		var out []string
		for _, x := range v {
			if s, ok := x.(string); ok {
				out = append(out, s)
			}
		}
		return out
	}
	return nil
}

// targets lists where mail for domain goes, in the order to try.
func (a *Agent) targets(ctx context.Context, cfg *config.Config, domain string) ([]target, error) {
	if r := cfg.RouteFor(domain); r != nil && len(smarthosts(r)) > 0 {
		var out []target
		for _, hp := range smarthosts(r) {
			host, portStr, err := net.SplitHostPort(hp)
			if err != nil {
				host, portStr = hp, "25"
			}
			port, _ := strconv.Atoi(portStr)
			t := target{host: host, port: port, route: r}
			if ip, err := netip.ParseAddr(strings.Trim(host, "[]")); err == nil {
				t.addrs = []netip.Addr{ip}
			}
			out = append(out, t)
		}
		return out, nil
	}
	mxs, err := a.resolver.LookupMX(ctx, domain)
	if err != nil {
		return nil, err
	}
	port := cfg.Delivery.MXPort
	if port == 0 {
		port = 25
	}
	out := make([]target, 0, len(mxs))
	for _, mx := range mxs {
		addrs := mx.Addrs
		if addrs == nil {
			addrs = []netip.Addr{} // no address: nothing to try (LookupMX resolves them)
		}
		out = append(out, target{host: strings.TrimSuffix(mx.Host, "."), addrs: addrs, port: port, dnssec: mx.Secure, pref: mx.Pref})
	}
	return out, nil
}

// dnsFailure converts a lookup error for the DSN and the queue.
func dnsFailure(err error) *smtperr.Error {
	var e *dnsmx.Error
	if errors.As(err, &e) {
		// The enhanced code leads the reply text: not repeated at its end.
		return &smtperr.Error{Enhanced: e.Enhanced, Msg: fmt.Sprintf("dns %s: %s", e.Domain, e.Msg)}
	}
	if dnsmx.IsTemporary(err) {
		return &smtperr.Error{Enhanced: dnsmx.CodeTemporary, Msg: err.Error()}
	}
	return &smtperr.Error{Enhanced: dnsmx.CodeNoSuchDomain, Msg: err.Error()}
}

// knownNoTLS reports whether a STARTTLS handshake with addr failed
// recently, so opportunistic TLS skips it (for noTLSFor).
func (a *Agent) knownNoTLS(addr netip.Addr) bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	if until, ok := a.noTLS[addr]; ok {
		if a.now().Before(until) {
			return true
		}
		delete(a.noTLS, addr)
	}
	return false
}

// rememberNoTLS records a failed STARTTLS handshake with addr.
func (a *Agent) rememberNoTLS(addr netip.Addr) {
	a.mu.Lock()
	defer a.mu.Unlock()
	now := a.now()
	if _, ok := a.noTLS[addr]; !ok && len(a.noTLS) >= maxNoTLS {
		makeRoom(a.noTLS, maxNoTLS, now, func(until time.Time) time.Time { return until })
	}
	a.noTLS[addr] = now.Add(noTLSFor)
}

// routeIDs holds the ID of each route of one configuration (routeID), made
// once when the agent takes the configuration, not per message.
type routeIDs struct {
	cfg *config.Config
	ids map[*config.Route]string
}

// newRouteIDs makes the IDs of cfg's routes.
func newRouteIDs(cfg *config.Config) *routeIDs {
	c := &routeIDs{cfg: cfg, ids: make(map[*config.Route]string, len(cfg.Route))}
	for i := range cfg.Route {
		c.ids[&cfg.Route[i]] = makeRouteID(&cfg.Route[i])
	}
	return c
}

// routeID names r, a route of cfg, by how its mail leaves: its smarthosts,
// its tls mode and user ("[host:port ...] tls=starttls user=u"; "" for no
// route). Routes with the same ID reach the same servers as the same
// client: the pool shares their connections, and the dead rule takes them
// for one destination (see destination).
func (a *Agent) routeID(cfg *config.Config, r *config.Route) string {
	if r == nil {
		return ""
	}
	if c := a.routes.Load(); c != nil && c.cfg == cfg {
		if id, ok := c.ids[r]; ok {
			return id
		}
	}
	return makeRouteID(r) // an attempt that began before a reload
}

func makeRouteID(r *config.Route) string {
	id := "[" + strings.ToLower(strings.Join(smarthosts(r), " ")) + "]"
	if r.TLS != "" {
		id += " tls=" + strings.ToLower(r.TLS)
	}
	if r.Username != "" {
		id += " user=" + r.Username
	}
	return id
}
