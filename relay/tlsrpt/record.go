package tlsrpt

import (
	"errors"
	"fmt"
	"net/url"
	"strings"
)

// maxRUA bounds the destinations of one domain's report: a record
// listing many would make us a cannon aimed at third parties.
const maxRUA = 5

// ParseRecord returns the usable rua URIs of the TLSRPT record among recs
// (RFC 8460 §3): records not starting with "v=TLSRPTv1" are ignored, and
// unless exactly one remains there is no policy. Only mailto: and https:
// URIs are kept, at most maxRUA (five).
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
				if err != nil || !reportAddress(addr) {
					continue
				}
				out = append(out, &url.URL{Scheme: "mailto", Opaque: addr})
			case "https":
				if u.Host == "" || u.User != nil {
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

// reportAddress accepts a plain local@domain address that can go into an
// envelope and a header unquoted.
func reportAddress(addr string) bool {
	at := strings.LastIndexByte(addr, '@')
	if at <= 0 || at == len(addr)-1 || len(addr) > 254 {
		return false
	}
	for _, c := range addr {
		if c <= ' ' || c >= 0x7f || strings.ContainsRune("<>()[]\\,;:\"", c) {
			return false
		}
	}
	return true
}
