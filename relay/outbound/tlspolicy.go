package outbound

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/miekg/dns"

	"github.com/mailhop/mailhop/dnsmx"
	"github.com/mailhop/mailhop/dnsmx/mtasts"
	"github.com/mailhop/mailhop/relay/config"
	"github.com/mailhop/mailhop/relay/smtperr"
	"github.com/mailhop/mailhop/relay/tlsrpt"
)

// TLS policy for one delivery (see the package doc, "TLS policy"):
//
//  1. The domain's level: the route's tls key for routed domains, else the
//     [[tls_policy]] entry listing the domain, else delivery.tls_policy.
//  2. For MX delivery at any level but none, the domain's MTA-STS policy
//     (RFC 8461), fetched once per attempt (cached by the Fetcher).
//  3. Per MX host, at levels may, encrypt and dane with
//     delivery.dnssec_trusted_resolver: its TLSA records (RFC 7672). DANE
//     takes precedence over MTA-STS for a host that has usable records
//     (RFC 8461 §2).
//  4. A REQUIRETLS message (RFC 8689) needs a verified certificate (PKIX
//     or DANE) and a server offering REQUIRETLS, whatever the level.

// STSGetter finds a domain's MTA-STS policy; *mtasts.Fetcher implements it.
// A nil policy means none applies (the error, if any, says why).
type STSGetter interface {
	Get(ctx context.Context, domain string) (*mtasts.Policy, error)
}

// TLSAResolver looks up TLSA records with their AD bit; *dnsmx.Resolver
// implements it. An MXResolver that also implements it gets DANE.
type TLSAResolver interface {
	LookupTLSA(ctx context.Context, host string, port int) ([]*dns.TLSA, bool, error)
}

// txtResolver is what an MXResolver needs for the default MTA-STS fetcher.
type txtResolver interface {
	LookupTXT(ctx context.Context, name string) ([]string, error)
}

// Certificate checks of a plan.
const (
	checkNone = ""     // any certificate (or none: opportunistic)
	checkPKIX = "pkix" // valid for the host name under the trusted roots
	checkDANE = "dane" // matches the host's TLSA records
)

// Policy sources, as logged (tls_policy) and counted.
const (
	srcRoute  = "route"
	srcMTASTS = "mta-sts"
	srcDANE   = "dane"
)

// RFC 8460 §4.2 policy types.
const (
	policySTS  = tlsrpt.PolicySTS
	policyTLSA = tlsrpt.PolicyTLSA
	policyNone = tlsrpt.PolicyNone
)

// domainTLS is what applies to every host of one domain group.
type domainTLS struct {
	domain     string
	level      string         // config level ("" for a route)
	sts        *mtasts.Policy // enforce or testing mode; nil when none applies
	requireTLS bool           // the message has REQUIRETLS
	optional   bool           // TLS-Required: No: opportunistic whatever the policies
	// stsFetchFailed: the MTA-STS policy could not be fetched (and none
	// was cached); the attempt was counted for TLS reports as that
	// failure, so its sessions are not counted again.
	stsFetchFailed bool
	// literal: mail to an address literal (user@[192.0.2.1]): no domain
	// name, so no MTA-STS policy and no TLS report (RFC 8460 reports go
	// to a domain's _smtp._tls record).
	literal bool
}

// requiredBy names what makes TLS required in p, for error texts: the
// message's REQUIRETLS (whatever the level, which may be "may"), or the
// TLS policy.
func (p *tlsPlan) requiredBy() string {
	if p.requireTLS {
		return "REQUIRETLS"
	}
	return "TLS policy " + p.source
}

// srcTLSOptional is the plan source of a message with TLS-Required: No.
const srcTLSOptional = "tls-required-no"

// tlsPlan says how one connection to one host uses TLS.
type tlsPlan struct {
	source     string // what decided, for logs: a level, "mta-sts", "dane" or "route"
	plain      bool   // never STARTTLS
	required   bool   // TLS or no delivery (else opportunistic)
	implicit   bool   // TLS from the first byte (route tls = "tls")
	check      string // checkNone, checkPKIX or checkDANE
	tlsa       []*dns.TLSA
	roots      *x509.CertPool // for checkPKIX and testing; nil: system roots
	stsTesting bool           // MTA-STS testing mode: check and report, never refuse
	counted    bool           // the session is already counted for TLS reports (as a failure)
	requireTLS bool           // REQUIRETLS: the server must offer REQUIRETLS

	policyDomain string // for the TLS report counts
	policyType   string // policySTS, policyTLSA or policyNone
	policyStr    []string
}

// key tells connections apart in the pool: a connection is reused only
// for a plan that asks no more of it than the one it was made under.
func (p *tlsPlan) key() string {
	k := p.source + "/" + p.check
	switch {
	case p.plain:
		k += "/plain"
	case p.implicit:
		k += "/implicit"
	case p.required:
		k += "/required"
	}
	if p.requireTLS {
		k += "/requiretls"
	}
	if p.stsTesting {
		// Its certificate is checked and counted (RFC 8461 §5): not a
		// connection made without that check.
		k += "/sts-testing"
	}
	return k
}

// wantsTLS reports whether the plan tries TLS at all.
func (p *tlsPlan) wantsTLS() bool { return !p.plain }

// policyError is a failure to meet the TLS policy: the host is skipped and
// the mail deferred (4.7.x), or bounced (5.7.30) for REQUIRETLS.
func policyError(stage, enh, format string, args ...any) *stageError {
	return &stageError{stage: stage, err: smtperr.New(0, enh, format, args...), policy: true}
}

// domainPolicy finds what applies to every host of domain: its level and,
// for MX delivery, its MTA-STS policy.
//
// A message with the header field "TLS-Required: No" (RFC 8689 §5; TLS
// reports carry it, RFC 8460 §5.3) is delivered opportunistically whatever
// the level, MTA-STS or DANE say, and is not counted for TLS reports.
func (a *Agent) domainPolicy(ctx context.Context, cfg *config.Config, domain string, routed, requireTLS, tlsOptional bool, ref msgRef) (*domainTLS, *smtperr.Error) {
	dt := &domainTLS{domain: domain, requireTLS: requireTLS, literal: strings.HasPrefix(domain, "[")}
	if routed {
		return dt, nil
	}
	if tlsOptional && !requireTLS {
		dt.level, dt.optional = config.TLSMay, true
		return dt, nil
	}
	dt.level = cfg.TLSLevelFor(domain)
	if dt.level == config.TLSNone {
		if requireTLS {
			return nil, smtperr.New(0, "5.7.30", "REQUIRETLS: TLS is off for %s (tls_policy none)", domain)
		}
		return dt, nil
	}
	if a.sts == nil || dt.literal {
		return dt, nil
	}
	p, err := a.sts.Get(ctx, domain)
	switch {
	case p == nil && err != nil && !errors.Is(err, mtasts.ErrNoPolicy):
		// RFC 8461 §5: no usable policy and none cached: deliver as if
		// the domain published none.
		a.log.Info("mta-sts: no policy applied", ref.attrs("domain", domain, "err", err.Error())...)
		a.tlsStats.AddFailure(domain, policySTS, nil, "", "", "", stsFetchResult(err), err.Error())
		dt.stsFetchFailed = true
	case p != nil && err != nil:
		a.log.Debug("mta-sts: refresh failed, cached policy stands", ref.attrs("domain", domain, "err", err.Error())...)
	}
	if p != nil && (p.Mode == mtasts.Enforce || p.Mode == mtasts.Testing) {
		dt.sts = p
	}
	return dt, nil
}

// stsFetchResult names a failure to get a domain's MTA-STS policy as RFC
// 8460 §4.3.2.2 does: a policy that is not valid, a policy server whose
// certificate does not verify, or any other fetch error.
func stsFetchResult(err error) string {
	var inv *mtasts.InvalidPolicyError
	var cv *tls.CertificateVerificationError
	switch {
	case errors.As(err, &inv):
		return "sts-policy-invalid"
	case errors.As(err, &cv):
		return "sts-webpki-invalid"
	}
	return "sts-policy-fetch-error"
}

// plan decides how to use TLS with target tg of domain group dt.
func (a *Agent) plan(ctx context.Context, cfg *config.Config, dt *domainTLS, tg *target, ref msgRef) (*tlsPlan, *stageError) {
	p := &tlsPlan{policyDomain: dt.domain, policyType: policyNone, requireTLS: dt.requireTLS}
	if r := tg.route; r != nil {
		// A smarthost is not the domain's MX: its sessions say nothing
		// about the domain's TLS (RFC 8460 §3), and reporting them would
		// tell every domain that asks the names and addresses of our
		// upstreams. Not counted.
		p.source, p.policyDomain = srcRoute, ""
		switch r.TLS {
		case config.RouteTLSNone:
			if dt.requireTLS {
				return nil, policyError("requiretls", "5.7.30", "REQUIRETLS: route to %s has tls = \"none\"", tg.host)
			}
			p.plain = true
		case config.RouteTLSImplicit:
			p.implicit, p.required, p.check = true, true, checkPKIX
		default:
			p.required, p.check = true, checkPKIX
		}
		p.roots = a.rootPool(r.CAFile, cfg.Delivery.ExtraRootsFile)
		return p, nil
	}
	p.source = dt.level
	p.roots = a.rootPool("", cfg.Delivery.ExtraRootsFile)
	if dt.optional {
		p.source, p.policyDomain = srcTLSOptional, "" // opportunistic, not counted
		return p, nil
	}
	if dt.stsFetchFailed || dt.literal {
		// One session, one count (RFC 8460 §4): this attempt is in the
		// report as its policy fetch error, not also as no-policy-found.
		// An address literal has no domain to report to.
		p.policyDomain = ""
	}
	switch dt.level {
	case config.TLSNone:
		p.plain = true
		return p, nil
	case config.TLSEncrypt:
		p.required = true
	case config.TLSVerify:
		p.required, p.check = true, checkPKIX
	}

	// DANE first: it takes precedence over MTA-STS (RFC 8461 §2). Only
	// for a host whose MX record and addresses are DNSSEC-secure: an
	// attacker who can forge those could name a host with TLSA records of
	// his own (RFC 7672 §2.2); otherwise the domain's other policies apply,
	// as Postfix's "dane" level falls back to "may".
	if dt.level != config.TLSVerify && cfg.Delivery.DNSSECTrustedResolver && a.tlsa != nil && tg.dnssec {
		recs, secure, err := a.tlsa.LookupTLSA(ctx, tg.host, tg.port)
		switch {
		case err != nil && dnsmx.IsTemporary(err):
			// RFC 7672 §2.2.1: do not deliver to a host whose TLSA
			// records cannot be had; try it again later.
			return nil, &stageError{stage: "tlsa", err: &smtperr.Error{Enhanced: "4.4.3", Msg: fmt.Sprintf("TLSA lookup for %s: %v", tg.host, err)}}
		case err == nil && secure && len(recs) > 0:
			p.source, p.required, p.policyType = srcDANE, true, policyTLSA
			p.policyStr = tlsaStrings(recs)
			if usable := dnsmx.UsableTLSA(recs); len(usable) > 0 {
				p.check, p.tlsa = checkDANE, usable
				return p, nil
			}
			// RFC 7672 §2.2: records, none usable: encrypt, unauthenticated.
			p.check = checkNone
			if dt.requireTLS {
				p.check = checkPKIX
			}
			return p, nil
		}
	}

	if sts := dt.sts; sts != nil {
		p.policyType, p.policyStr = policySTS, stsStrings(sts)
		match := sts.Match(tg.host)
		switch sts.Mode {
		case mtasts.Enforce:
			if !match {
				a.tlsStats.AddFailure(dt.domain, policySTS, p.policyStr, tg.host, "", "", "validation-failure", "mx-mismatch")
				return nil, policyError("mta-sts", "4.7.5", "MX host %s does not match the MTA-STS policy of %s (mode enforce)", tg.host, dt.domain)
			}
			p.source, p.required, p.check = srcMTASTS, true, checkPKIX
		case mtasts.Testing:
			p.stsTesting = true
			if !match {
				a.log.Warn("mta-sts testing: MX host does not match the policy; delivering anyway", ref.attrs(
					"domain", dt.domain, "mx", tg.host)...)
				a.tlsStats.AddFailure(dt.domain, policySTS, p.policyStr, tg.host, "", "", "validation-failure", "mx-mismatch")
				// One session, one count (RFC 8460 §4): this failure,
				// not also a success when the TLS session works.
				p.stsTesting, p.counted = false, true
			}
		}
	}
	if dt.requireTLS && p.check == checkNone {
		// RFC 8689 §4.2.1: REQUIRETLS needs a verified certificate.
		p.required, p.check = true, checkPKIX
	}
	return p, nil
}

// tlsResult is what the handshake found out about the certificate.
type tlsResult struct {
	verified bool
	err      error // why it is not verified
	rejected bool  // err stopped the handshake: the plan required the check
}

// clientTLS returns the TLS configuration for a connection to host under
// plan p. Certificates are checked in VerifyConnection, so that a check
// that is only reported (opportunistic, MTA-STS testing) never stops the
// handshake while one that is required does.
func (a *Agent) clientTLS(p *tlsPlan, host string, res *tlsResult) *tls.Config {
	return &tls.Config{
		ServerName:         host,
		MinVersion:         tls.VersionTLS12,
		InsecureSkipVerify: true, // checked below, per the plan
		VerifyConnection: func(cs tls.ConnectionState) error {
			var err error
			switch p.check {
			case checkDANE:
				err = dnsmx.VerifyDANE(p.tlsa, cs)
			default:
				err = verifyPKIX(cs, host, p.roots)
			}
			res.verified, res.err = err == nil, err
			if p.check != checkNone {
				res.rejected = err != nil
				return err
			}
			return nil
		},
	}
}

// verifyPKIX checks that the server's certificate chains to roots (nil:
// the system roots) and is valid for host (RFC 6125; RFC 8461 §4.2).
func verifyPKIX(cs tls.ConnectionState, host string, roots *x509.CertPool) error {
	certs := cs.PeerCertificates
	if len(certs) == 0 {
		return errors.New("the server presented no certificate")
	}
	inter := x509.NewCertPool()
	for _, c := range certs[1:] {
		inter.AddCert(c)
	}
	_, err := certs[0].Verify(x509.VerifyOptions{
		DNSName:       strings.TrimSuffix(host, "."),
		Roots:         roots,
		Intermediates: inter,
	})
	return err
}

// resultType names a certificate failure as RFC 8460 §4.3 does.
func resultType(err error) string {
	var he x509.HostnameError
	var ie x509.CertificateInvalidError
	var ua x509.UnknownAuthorityError
	switch {
	case errors.As(err, &he):
		return "certificate-host-mismatch"
	case errors.As(err, &ie) && ie.Reason == x509.Expired:
		return "certificate-expired"
	case errors.As(err, &ua):
		return "certificate-not-trusted"
	}
	return "validation-failure"
}

// rootPool returns the system roots plus the PEM certificates in files
// (cached per set of files until a reload); nil, meaning the system roots,
// when no file is given.
func (a *Agent) rootPool(files ...string) *x509.CertPool {
	var names []string
	for _, f := range files {
		if f != "" {
			names = append(names, f)
		}
	}
	if len(names) == 0 {
		return nil
	}
	key := strings.Join(names, "\x00")
	a.mu.Lock()
	defer a.mu.Unlock()
	if p, ok := a.caPools[key]; ok {
		return p
	}
	pool, err := x509.SystemCertPool()
	if err != nil || pool == nil {
		pool = x509.NewCertPool()
	}
	for _, f := range names {
		pem, err := os.ReadFile(f)
		if err != nil || !pool.AppendCertsFromPEM(pem) {
			a.log.Error("trusted roots file unusable; ignoring it", "file", f, "err", err)
		}
	}
	a.caPools[key] = pool
	return pool
}

// newSTSFetcher makes the default MTA-STS fetcher: TXT records from the
// resolver, policies over HTTPS with the system roots plus
// delivery.extra_roots_file, mta-sts hosts resolved with the resolver and
// reached on delivery.mta_sts_port, and the cache in data_dir/mta-sts.
func (a *Agent) newSTSFetcher(cfg *config.Config, txt txtResolver) *mtasts.Fetcher {
	f := &mtasts.Fetcher{
		LookupTXT:  txt.LookupTXT,
		HTTPClient: mtasts.NewHTTPClient(a.rootPool(cfg.Delivery.ExtraRootsFile), a.stsDial),
	}
	if cfg.DataDir != "" {
		f.Dir = filepath.Join(cfg.DataDir, "mta-sts")
	}
	return f
}

// stsDial connects to an mta-sts host: its addresses from the resolver,
// port 443 replaced by delivery.mta_sts_port.
func (a *Agent) stsDial(ctx context.Context, network, addr string) (net.Conn, error) {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return nil, err
	}
	if p := a.config().Delivery.MTASTSPort; p > 0 && port == "443" {
		port = strconv.Itoa(p)
	}
	return a.dialHost(ctx, host, port)
}

// dialHost connects to host:port, the host's addresses from the agent's
// resolver (so tests and split-horizon setups see the same DNS as
// delivery), each address in turn.
func (a *Agent) dialHost(ctx context.Context, host, port string) (net.Conn, error) {
	pn, err := strconv.Atoi(port)
	if err != nil {
		return nil, fmt.Errorf("bad port %q", port)
	}
	var ips []netip.Addr
	if ip, err := netip.ParseAddr(host); err == nil {
		ips = []netip.Addr{ip}
	} else if ips, err = a.resolver.LookupHost(ctx, host); err != nil {
		return nil, err
	}
	last := fmt.Errorf("%s has no address", host)
	for _, ip := range ips {
		c, err := a.dial(ctx, "tcp", netip.AddrPortFrom(ip.Unmap(), uint16(pn)).String())
		if err == nil {
			return c, nil
		}
		last = err
	}
	return nil, last
}

func tlsaStrings(recs []*dns.TLSA) []string {
	out := make([]string, len(recs))
	for i, r := range recs {
		out[i] = fmt.Sprintf("%d %d %d %s", r.Usage, r.Selector, r.MatchingType, r.Certificate)
	}
	return out
}

func stsStrings(p *mtasts.Policy) []string {
	out := []string{"version: STSv1", "mode: " + string(p.Mode)}
	for _, mx := range p.MX {
		out = append(out, "mx: "+mx)
	}
	return append(out, fmt.Sprintf("max_age: %d", int64(p.MaxAge.Seconds())))
}
