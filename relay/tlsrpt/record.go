package tlsrpt

import (
	"errors"
	"fmt"
	"net/url"
	"strings"

	"github.com/mailhop/mailhop/internal/idn"
)

// maxRUA bounds the destinations of one domain's report: a record
// listing many would make us a cannon aimed at third parties.
const maxRUA = 5

// ParseRecord returns the usable rua URIs of the TLSRPT record among recs
// (RFC 8460 §3): records not starting with "v=TLSRPTv1" are ignored, and
// unless exactly one remains there is no policy. Only mailto: and https:
// URIs are kept, at most maxRUA (five); a mailto: address's Unicode domain
// is given as its A-label.
func ParseRecord(recs []string) ([]*url.URL, error) {
	var rec string
	n := 0
	for _, r := range recs {
		if v, rest, _ := strings.Cut(r, ";"); strings.TrimSpace(v) == "v=TLSRPTv1" {
			rec = rest
			n++
		}
	}
	switch {
	case n == 0:
		return nil, errors.New("no TLSRPT record")
	case n > 1:
		return nil, fmt.Errorf("%d TLSRPT records (RFC 8460 §3: exactly one)", n)
	}
	var out []*url.URL
	for _, field := range strings.Split(rec, ";") {
		k, v, ok := strings.Cut(strings.TrimSpace(field), "=")
		if !ok || k != "rua" {
			continue // an extension, or empty after the last ";"
		}
		for _, raw := range strings.Split(v, ",") {
			u, err := url.Parse(strings.TrimSpace(raw))
			if err != nil {
				continue
			}
			switch strings.ToLower(u.Scheme) {
			case "mailto":
				addr, err := url.PathUnescape(u.Opaque)
				if err != nil {
					continue
				}
				if addr, err = aLabelDomain(addr); err != nil || !reportAddress(addr) {
					continue
				}
				out = append(out, &url.URL{Scheme: "mailto", Opaque: addr})
			case "https":
				// url.Parse leaves a space in a query as it is: POSTed,
				// it would split the request line.
				if u.Host == "" || u.User != nil || strings.ContainsFunc(u.String(), isSpaceOrCtl) {
					continue
				}
				u.Scheme = "https"
				out = append(out, u)
			}
			if len(out) == maxRUA {
				return out, nil
			}
		}
	}
	if len(out) == 0 {
		return nil, errors.New("TLSRPT record without a usable rua")
	}
	return out, nil
}

// aLabelDomain returns addr with its domain, when that is not ASCII (a
// percent-encoded UTF-8 domain, as RFC 6068 §2 allows), as its A-label
// ("tlsrpt@bücher.example" → "tlsrpt@xn--bcher-kva.example"), the form
// the relay looks up and sends to; an ASCII domain is left as it is. An
// error when the domain is no valid internationalized domain name.
func aLabelDomain(addr string) (string, error) {
	at := strings.LastIndexByte(addr, '@')
	if at < 0 {
		return addr, nil // reportAddress refuses it
	}
	domain := addr[at+1:]
	for i := 0; i < len(domain); i++ {
		if domain[i] >= 0x80 {
			a, err := idn.ALabel(domain)
			if err != nil {
				return "", fmt.Errorf("rua domain %q: %w", domain, err)
			}
			return addr[:at+1] + a, nil
		}
	}
	return addr, nil
}

// reportAddress accepts an address an SMTP server takes as it is, in an
// envelope and a header: a Dot-string local part (RFC 5321 §4.1.2) at a
// host name of letters, digits and hyphens. Anything else in a record (a
// DMARC-style size suffix "!5m", a second "@", an empty label) would be
// queued only to bounce, after a DNS query for a name that cannot exist.
func reportAddress(addr string) bool {
	local, domain, ok := strings.Cut(addr, "@")
	return ok && len(addr) <= 254 && len(local) <= 64 && dotString(local) && hostName(domain)
}

// dotString reports whether s is a Dot-string: atoms of atext joined by
// single dots.
func dotString(s string) bool {
	for _, atom := range strings.Split(s, ".") {
		if atom == "" {
			return false
		}
		for _, c := range atom {
			if !(c < 0x7f && (isLetDig(c) || strings.ContainsRune("!#$%&'*+-/=?^_`{|}~", c))) {
				return false
			}
		}
	}
	return true
}

// hostName reports whether s is a domain of LDH labels (RFC 5321 §4.1.2
// sub-domain: a letter or digit first and last), without a final dot.
func hostName(s string) bool {
	if len(s) > 253 {
		return false
	}
	for _, label := range strings.Split(s, ".") {
		if label == "" || len(label) > 63 || label[0] == '-' || label[len(label)-1] == '-' {
			return false
		}
		for _, c := range label {
			if !(c < 0x7f && (isLetDig(c) || c == '-')) {
				return false
			}
		}
	}
	return true
}

// isSpaceOrCtl reports whether c is a space or a control character,
// which a URI never holds as it is (RFC 3986 §2).
func isSpaceOrCtl(c rune) bool { return c <= ' ' || c == 0x7f }

func isLetDig(c rune) bool {
	return 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9'
}
