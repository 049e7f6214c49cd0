package dnsmx

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"strings"

	"github.com/miekg/dns"
)

// DANE for SMTP (RFC 7672): TLSA records at _PORT._tcp.MXHOST, trusted only
// when a DNSSEC-validating resolver vouches for them with the AD bit.

// LookupTLSA returns the TLSA records of _PORT._tcp.MXHOST (RFC 7672 §2.2),
// asking with the DO bit (and the AD bit, RFC 6840 §5.7) set. secure
// reports the AD bit of the answer: the resolver validated it with DNSSEC.
// That is only worth anything when the resolvers are validating ones the
// relay trusts, over a path it trusts (e.g. on localhost); the caller must
// use the records only when that is configured and secure is true.
//
// NXDOMAIN and NODATA give no records and no error (secure then says
// whether the denial was authenticated). Every error is a *Error: a
// temporary one when the servers fail (SERVFAIL, which a validating
// resolver also returns for bogus data, or a timeout) — RFC 7672 §2.2.1
// says not to deliver to the host then if its address records were
// secure — or a permanent one for a name that is not a host name.
// Answers are cached for their TTL, with their AD bit.
func (r *Resolver) LookupTLSA(ctx context.Context, mxHost string, port int) (records []*dns.TLSA, secure bool, err error) {
	fqdn, lit, err := normalize(mxHost)
	if err != nil {
		return nil, false, err
	}
	if lit.IsValid() || port <= 0 || port > 65535 {
		return nil, false, permanent(mxHost, CodeNoSuchDomain, "no TLSA records for an address or port %d", port)
	}
	name := fmt.Sprintf("_%d._tcp.%s", port, fqdn)
	a, err := r.cached(ctx, name, dns.TypeTLSA, r.exchangeDNSSEC)
	if err != nil {
		return nil, false, err
	}
	secure = a.secure
	// The records at name, or at the end of a CNAME chain in the answer
	// (RFC 7672 §2.2.3 allows TLSA records reached through CNAMEs).
	owner := name
	for range maxCNAMEHops + 1 {
		next := ""
		for _, rr := range a.rrs {
			if !strings.EqualFold(rr.Header().Name, owner) {
				continue
			}
			switch rr := rr.(type) {
			case *dns.TLSA:
				records = append(records, rr)
			case *dns.CNAME:
				next = rr.Target
			}
		}
		if len(records) > 0 || next == "" {
			break
		}
		owner = next
	}
	return records, secure, nil
}

// exchangeDNSSEC asks the servers in turn for (name, qtype) with the DO
// and AD bits set, like exchange.
func (r *Resolver) exchangeDNSSEC(ctx context.Context, name string, qtype uint16) (*dns.Msg, error) {
	q := new(dns.Msg)
	q.SetQuestion(name, qtype)
	q.RecursionDesired = true
	q.AuthenticatedData = true
	q.SetEdns0(ednsSize, true)
	return r.ask(ctx, q, hostName(name))
}

// TLSA certificate usages, selectors and matching types (RFC 6698 §2.1,
// RFC 7218 acronyms).
const (
	usageDANETA = 2 // DANE-TA: a trust anchor in the presented chain
	usageDANEEE = 3 // DANE-EE: the server's own certificate or key

	selectorCert = 0 // Cert: the whole certificate
	selectorSPKI = 1 // SPKI: its SubjectPublicKeyInfo

	matchFull   = 0 // Full: the bytes themselves
	matchSHA256 = 1 // SHA2-256
	matchSHA512 = 2 // SHA2-512
)

// ErrNoUsableTLSA reports that none of the TLSA records can be used for SMTP
// (RFC 7672 §3.1.3: PKIX-TA and PKIX-EE usages, unknown selectors or
// matching types). The connection must still be encrypted, but is not
// authenticated (RFC 7672 §2.2).
var ErrNoUsableTLSA = errors.New("dane: no usable TLSA records")

// UsableTLSA returns the records VerifyDANE can use: DANE-TA(2) and
// DANE-EE(3), selector Cert(0) or SPKI(1), matching type Full(0),
// SHA2-256(1) or SHA2-512(2).
func UsableTLSA(records []*dns.TLSA) []*dns.TLSA {
	var out []*dns.TLSA
	for _, t := range records {
		if (t.Usage == usageDANETA || t.Usage == usageDANEEE) &&
			(t.Selector == selectorCert || t.Selector == selectorSPKI) &&
			(t.MatchingType == matchFull || t.MatchingType == matchSHA256 || t.MatchingType == matchSHA512) {
			out = append(out, t)
		}
	}
	return out
}

// VerifyDANE checks the certificate chain of a TLS connection against the
// TLSA records of the server (RFC 7672 §3). It succeeds if one usable
// record matches:
//
//   - DANE-EE(3): the server's certificate (or its public key) matches.
//     Neither its names nor its validity dates are checked (§3.1.1).
//   - DANE-TA(2): a certificate the server presented after its own matches,
//     and the server's certificate chains to it through the presented
//     intermediates, is within its validity dates, and is valid for
//     state.ServerName, the TLSA base domain the client sent as SNI
//     (§3.2.2, §3.2.3; wildcards in the leftmost label only, as x509
//     checks them).
//
// Use it from tls.Config.VerifyConnection with InsecureSkipVerify set
// (DANE replaces the usual WebPKI check) and ServerName the MX host name.
// With no usable record it returns ErrNoUsableTLSA.
func VerifyDANE(records []*dns.TLSA, state tls.ConnectionState) error {
	usable := UsableTLSA(records)
	if len(usable) == 0 {
		return ErrNoUsableTLSA
	}
	certs := state.PeerCertificates
	if len(certs) == 0 {
		return errors.New("dane: the server presented no certificate")
	}
	var taErr error
	for _, t := range usable {
		switch t.Usage {
		case usageDANEEE:
			if tlsaMatches(t, certs[0]) {
				return nil
			}
		case usageDANETA:
			for _, ta := range certs[1:] {
				if !tlsaMatches(t, ta) {
					continue
				}
				err := verifyChainTo(certs, ta, state.ServerName)
				if err == nil {
					return nil
				}
				taErr = err
			}
		}
	}
	if taErr != nil {
		return fmt.Errorf("dane: %s: a DANE-TA record matches, but: %w", state.ServerName, taErr)
	}
	return fmt.Errorf("dane: %s: no TLSA record matches the certificate chain", state.ServerName)
}

// tlsaMatches reports whether the record matches cert.
func tlsaMatches(t *dns.TLSA, cert *x509.Certificate) bool {
	want, err := dns.CertificateToDANE(t.Selector, t.MatchingType, cert)
	return err == nil && strings.EqualFold(want, t.Certificate)
}

// verifyChainTo verifies the leaf against the trust anchor ta, with the
// other presented certificates as intermediates, for name.
func verifyChainTo(certs []*x509.Certificate, ta *x509.Certificate, name string) error {
	if name == "" {
		return errors.New("no server name to check the certificate against")
	}
	roots := x509.NewCertPool()
	roots.AddCert(ta)
	inter := x509.NewCertPool()
	for _, c := range certs[1:] {
		if c != ta {
			inter.AddCert(c)
		}
	}
	_, err := certs[0].Verify(x509.VerifyOptions{
		DNSName:       strings.TrimSuffix(name, "."),
		Roots:         roots,
		Intermediates: inter,
		KeyUsages:     []x509.ExtKeyUsage{x509.ExtKeyUsageAny},
	})
	return err
}
