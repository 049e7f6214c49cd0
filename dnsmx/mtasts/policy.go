// Package mtasts discovers, fetches, caches and applies MTA-STS policies
// (RFC 8461): a domain's statement that its MX hosts must be reached over
// TLS with a certificate valid for their names.
//
// Discovery and fetch (Fetcher.Get), per RFC 8461 §3 and §5:
//
//  1. A cached policy that has not expired (fetched + max_age) is the
//     starting point; the cache lives in memory and, when Fetcher.Dir is
//     set, in one JSON file per domain there, so it survives restarts.
//  2. The TXT record at _mta-sts.DOMAIN is looked up. Exactly one record
//     starting "v=STSv1" with a valid id must be there; otherwise the
//     domain publishes no (usable) policy (§3.1).
//  3. If its id is that of the cached policy, the cached policy is used.
//     Otherwise the policy is fetched from
//     https://mta-sts.DOMAIN/.well-known/mta-sts.txt with a verified
//     certificate, no redirects, status 200, text/plain, at most 64 KiB
//     (§3.3), parsed, cached under the new id, and used.
//  4. When the TXT lookup fails, the record is missing or invalid, or the
//     fetch fails, a cached unexpired policy is still used (§5.1, §10.2:
//     an attacker who blocks discovery must not downgrade delivery).
//     Without one the domain is treated as having no policy and the error
//     is returned for logging and TLS reporting.
//
// Applying a policy is the caller's: in "enforce" mode deliver only to MX
// hosts that Policy.Match accepts, over TLS with a certificate valid for
// the MX name, else defer; in "testing" mode deliver anyway and report;
// "none" means no policy (§5).
package mtasts

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"
)

// Mode is a policy's mode (RFC 8461 §3.2).
type Mode string

// The modes of RFC 8461 §5.
const (
	Enforce Mode = "enforce" // deliver only to matching MX hosts with valid TLS
	Testing Mode = "testing" // deliver regardless; report failures
	None    Mode = "none"    // the domain has withdrawn its policy
)

// MaxMaxAge is the largest max_age (RFC 8461 §3.2: 31557600 s, a year).
const MaxMaxAge = 31557600 * time.Second

// Policy is one domain's MTA-STS policy.
type Policy struct {
	Domain  string        `json:"domain"`  // the policy domain, lower case
	ID      string        `json:"id"`      // the id of the TXT record it was fetched under
	Mode    Mode          `json:"mode"`    // enforce, testing or none
	MX      []string      `json:"mx"`      // MX patterns: "mx.example.com" or "*.example.com"
	MaxAge  time.Duration `json:"max_age"` // how long the policy may be cached
	Fetched time.Time     `json:"fetched"` // when it was fetched
}

// Expires returns when the policy stops being valid as a cached policy.
func (p *Policy) Expires() time.Time { return p.Fetched.Add(p.MaxAge) }

// Match reports whether mxHost is an MX host the policy allows (RFC 8461
// §4.1): equal to a pattern, ignoring case and a trailing dot, or matching
// a "*.domain" pattern in which "*" stands for exactly one leftmost label.
func (p *Policy) Match(mxHost string) bool {
	h := strings.ToLower(strings.TrimSuffix(mxHost, "."))
	if h == "" {
		return false
	}
	for _, pat := range p.MX {
		pat = strings.ToLower(strings.TrimSuffix(pat, "."))
		if rest, ok := strings.CutPrefix(pat, "*."); ok {
			i := strings.IndexByte(h, '.')
			if i > 0 && h[i+1:] == rest {
				return true
			}
			continue
		}
		if h == pat {
			return true
		}
	}
	return false
}

// Parse reads a policy file (RFC 8461 §3.2): "key: value" lines ending in
// CRLF or LF; version must be STSv1, mode one of enforce, testing, none,
// max_age a number of seconds (capped at a year), mx one line per pattern
// (at least one unless the mode is none). Unknown keys are ignored.
// Domain, ID and Fetched are left for the caller.
func Parse(text []byte) (*Policy, error) {
	p := &Policy{}
	var version, mode, maxAge bool
	sc := bufio.NewScanner(bytes.NewReader(text))
	sc.Buffer(nil, maxPolicySize)
	for sc.Scan() {
		line := strings.TrimRight(sc.Text(), "\r")
		if strings.TrimSpace(line) == "" {
			continue
		}
		k, v, ok := strings.Cut(line, ":")
		if !ok {
			return nil, fmt.Errorf("mta-sts policy: line %q is not key: value", line)
		}
		k, v = strings.TrimSpace(k), strings.TrimSpace(v)
		switch k {
		case "version":
			if v != "STSv1" {
				return nil, fmt.Errorf("mta-sts policy: version %q, want STSv1", v)
			}
			version = true
		case "mode":
			switch Mode(v) {
			case Enforce, Testing, None:
				p.Mode, mode = Mode(v), true
			default:
				return nil, fmt.Errorf("mta-sts policy: unknown mode %q", v)
			}
		case "max_age":
			n, err := strconv.ParseUint(v, 10, 64)
			if err != nil || len(v) > 10 {
				return nil, fmt.Errorf("mta-sts policy: bad max_age %q", v)
			}
			p.MaxAge = time.Duration(min(n, uint64(MaxMaxAge/time.Second))) * time.Second
			maxAge = true
		case "mx":
			if !validPattern(v) {
				return nil, fmt.Errorf("mta-sts policy: bad mx pattern %q", v)
			}
			p.MX = append(p.MX, strings.ToLower(strings.TrimSuffix(v, ".")))
		}
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("mta-sts policy: %v", err)
	}
	switch {
	case !version:
		return nil, errors.New("mta-sts policy: no version")
	case !mode:
		return nil, errors.New("mta-sts policy: no mode")
	case !maxAge:
		return nil, errors.New("mta-sts policy: no max_age")
	case len(p.MX) == 0 && p.Mode != None:
		return nil, errors.New("mta-sts policy: no mx")
	}
	return p, nil
}

// validPattern accepts a host name, optionally with a leading "*." label.
func validPattern(s string) bool {
	s = strings.TrimPrefix(strings.TrimSuffix(s, "."), "*.")
	if s == "" || len(s) > 253 {
		return false
	}
	for _, label := range strings.Split(s, ".") {
		if label == "" || len(label) > 63 {
			return false
		}
		for _, c := range label {
			if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_') {
				return false
			}
		}
	}
	return true
}

// parseTXT reads an MTA-STS TXT record (RFC 8461 §3.1): "v=STSv1; id=...;"
// and possibly extension fields. It returns the id; ok is false when the
// record is not an STSv1 record or is invalid.
func parseTXT(rec string) (id string, ok bool) {
	fields := strings.Split(rec, ";")
	if strings.TrimSpace(fields[0]) != "v=STSv1" {
		return "", false
	}
	for _, f := range fields[1:] {
		k, v, found := strings.Cut(strings.TrimSpace(f), "=")
		if !found {
			if strings.TrimSpace(f) == "" {
				continue
			}
			return "", false
		}
		if strings.TrimSpace(k) == "id" {
			id = strings.TrimSpace(v)
		}
	}
	// sts-id = 1*32(ALPHA / DIGIT)
	if id == "" || len(id) > 32 {
		return "", false
	}
	for _, c := range id {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9') {
			return "", false
		}
	}
	return id, true
}
