package tlsrpt

import (
	"strings"
	"testing"
)

// FuzzParseTLSRPT: a _smtp._tls TXT record (from any domain mail goes to)
// never panics the parser; a mailto rua it keeps is an address fit for an
// envelope and a To field (no space, bracket or line end), an https rua
// has a host, and there are at most maxRUA.
func FuzzParseTLSRPT(f *testing.F) {
	f.Add("v=TLSRPTv1; rua=mailto:tls@example.com,https://r.example.com/x", "v=other")
	f.Add("v=TLSRPTv1;rua=mailto:a%0D%0Ab@x", "")
	f.Add("v=TLSRPTv1; rua=https://u:p@h/,mailto:%3Ca%3E@b", "v=TLSRPTv1")
	f.Add("v=TLSRPTv1; rua=mailto:tlsrpt@b%C3%BCcher.example", "")
	f.Fuzz(func(t *testing.T, a, b string) {
		urls, err := ParseRecord([]string{a, b})
		if err != nil {
			return
		}
		if len(urls) == 0 || len(urls) > maxRUA {
			t.Fatalf("%d rua", len(urls))
		}
		for _, u := range urls {
			switch u.Scheme {
			case "mailto":
				if !reportAddress(u.Opaque) || strings.ContainsAny(u.Opaque, " \t\r\n<>") {
					t.Fatalf("mailto %q", u.Opaque)
				}
			case "https":
				if u.Host == "" || u.User != nil || strings.ContainsAny(u.String(), " \r\n") {
					t.Fatalf("https %q", u)
				}
			default:
				t.Fatalf("scheme %q", u.Scheme)
			}
		}
	})
}
