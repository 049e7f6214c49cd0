package mtasts

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"mime"
	"net"
	"net/http"
	"strings"
	"sync"
	"time"
)

// maxPolicySize bounds the policy body (RFC 8461 §3.3 suggests 64 KiB).
const maxPolicySize = 64 << 10

// FetchTimeout bounds one policy fetch (RFC 8461 §3.3: a minute or less).
const FetchTimeout = 30 * time.Second

// ErrNoPolicy reports that the domain publishes no MTA-STS TXT record (or
// not exactly one valid STSv1 record) and no policy is cached.
var ErrNoPolicy = errors.New("mta-sts: no policy published")

// Fetcher finds the MTA-STS policy of a domain. It is safe for concurrent
// use; set its fields before the first Get.
type Fetcher struct {
	// LookupTXT returns the TXT records at a name, one string per record;
	// no records and no error when there are none (dnsmx.Resolver's
	// LookupTXT). Required.
	LookupTXT func(ctx context.Context, name string) ([]string, error)
	// HTTPClient fetches policies. Nil: NewHTTPClient(nil, nil). A client
	// given here must verify certificates and must not follow redirects
	// (RFC 8461 §3.3).
	HTTPClient *http.Client
	// Dir, when set, holds the cache as one JSON file per domain, so it
	// survives restarts. It is created if missing.
	Dir string
	// Now is the clock; nil means time.Now.
	Now func() time.Time

	mu       sync.Mutex
	policies map[string]*Policy // by domain; loaded from Dir on first use
	inflight map[string]*call   // one discovery per domain at a time
}

type call struct {
	done chan struct{}
	p    *Policy
	err  error
}

// NewHTTPClient returns an HTTP client for policy fetches: certificates
// verified against roots (nil: the system roots), no redirects, no proxy,
// FetchTimeout. dial, when not nil, replaces how connections are made —
// tests use it to reach a server on 127.0.0.1 whatever the host name.
func NewHTTPClient(roots *x509.CertPool, dial func(ctx context.Context, network, addr string) (net.Conn, error)) *http.Client {
	if dial == nil {
		d := &net.Dialer{Timeout: 10 * time.Second}
		dial = d.DialContext
	}
	return &http.Client{
		Timeout: FetchTimeout,
		Transport: &http.Transport{
			DialContext:         dial,
			TLSClientConfig:     &tls.Config{RootCAs: roots, MinVersion: tls.VersionTLS12},
			TLSHandshakeTimeout: 10 * time.Second,
			MaxIdleConns:        10,
			IdleConnTimeout:     30 * time.Second,
			ForceAttemptHTTP2:   true,
		},
		CheckRedirect: func(*http.Request, []*http.Request) error {
			return errors.New("mta-sts: redirects are not followed (RFC 8461 §3.3)")
		},
	}
}

func (f *Fetcher) now() time.Time {
	if f.Now != nil {
		return f.Now()
	}
	return time.Now()
}

// Get returns the policy to apply to mail for domain (see the package doc
// for the steps). A nil policy means: deliver as if the domain had no
// MTA-STS; the error then says why (ErrNoPolicy when nothing is
// published, else the lookup or fetch failure, for logs and TLS reports).
// A policy with mode None is returned as such. A non-nil policy may come
// with an error too: a refresh failed and the cached policy stands.
func (f *Fetcher) Get(ctx context.Context, domain string) (*Policy, error) {
	domain = strings.ToLower(strings.TrimSuffix(domain, "."))
	if !validPattern(domain) || strings.HasPrefix(domain, "*") {
		return nil, fmt.Errorf("mta-sts: bad domain %q", domain)
	}
	// One discovery per domain at a time: concurrent deliveries to one
	// domain share its result instead of each fetching the policy.
	f.mu.Lock()
	if c, ok := f.inflight[domain]; ok {
		f.mu.Unlock()
		select {
		case <-c.done:
			return c.p, c.err
		case <-ctx.Done():
			return f.cached(domain), ctx.Err()
		}
	}
	c := &call{done: make(chan struct{})}
	if f.inflight == nil {
		f.inflight = make(map[string]*call)
	}
	f.inflight[domain] = c
	f.mu.Unlock()

	c.p, c.err = f.discover(ctx, domain)

	f.mu.Lock()
	delete(f.inflight, domain)
	f.mu.Unlock()
	close(c.done)
	return c.p, c.err
}

func (f *Fetcher) discover(ctx context.Context, domain string) (*Policy, error) {
	cached := f.cached(domain)

	recs, err := f.LookupTXT(ctx, "_mta-sts."+domain)
	if err != nil {
		return cached, fmt.Errorf("mta-sts: TXT lookup for _mta-sts.%s: %w", domain, err)
	}
	var ids []string
	valid := true
	for _, r := range recs {
		if !strings.HasPrefix(r, "v=STSv1") {
			continue // another TXT record at the name
		}
		id, ok := parseTXT(r)
		valid = valid && ok
		ids = append(ids, id)
	}
	switch {
	case len(ids) == 0:
		if cached != nil {
			return cached, nil
		}
		return nil, ErrNoPolicy
	case len(ids) > 1 || !valid:
		return cached, fmt.Errorf("mta-sts: _mta-sts.%s: want one valid v=STSv1 record, found %q", domain, recs)
	}
	if cached != nil && cached.ID == ids[0] {
		return cached, nil
	}

	p, err := f.fetch(ctx, domain)
	if err != nil {
		return cached, err
	}
	p.Domain, p.ID, p.Fetched = domain, ids[0], f.now()
	f.store(p)
	return p, nil
}

// fetch gets and parses https://mta-sts.DOMAIN/.well-known/mta-sts.txt.
func (f *Fetcher) fetch(ctx context.Context, domain string) (*Policy, error) {
	client := f.HTTPClient
	if client == nil {
		client = defaultClient()
	}
	url := "https://mta-sts." + domain + "/.well-known/mta-sts.txt"
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return nil, fmt.Errorf("mta-sts: %w", err)
	}
	resp, err := client.Do(req)
	if err != nil {
		return nil, fmt.Errorf("mta-sts: fetching %s: %w", url, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("mta-sts: fetching %s: %s", url, resp.Status)
	}
	if mt, _, err := mime.ParseMediaType(resp.Header.Get("Content-Type")); err != nil || mt != "text/plain" {
		return nil, fmt.Errorf("mta-sts: %s: Content-Type %q, want text/plain", url, resp.Header.Get("Content-Type"))
	}
	body, err := io.ReadAll(io.LimitReader(resp.Body, maxPolicySize+1))
	if err != nil {
		return nil, fmt.Errorf("mta-sts: reading %s: %w", url, err)
	}
	if len(body) > maxPolicySize {
		return nil, fmt.Errorf("mta-sts: %s is larger than %d bytes", url, maxPolicySize)
	}
	p, err := Parse(body)
	if err != nil {
		return nil, &InvalidPolicyError{Err: fmt.Errorf("%w (from %s)", err, url)}
	}
	return p, nil
}

// InvalidPolicyError is a policy that was fetched but is not a valid
// policy file (RFC 8460 §4.3.2.2 reports it as sts-policy-invalid, not as a
// fetch error).
type InvalidPolicyError struct{ Err error }

func (e *InvalidPolicyError) Error() string { return e.Err.Error() }
func (e *InvalidPolicyError) Unwrap() error { return e.Err }

var defaultClient = sync.OnceValue(func() *http.Client { return NewHTTPClient(nil, nil) })
