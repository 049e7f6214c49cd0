package dnsmx

import (
	"strings"
	"testing"
)

// FuzzName: a domain or address from a message never panics normalize,
// ALabelAddress or ParseAddressLiteral; what goes to DNS is a lower-case
// ASCII name without spaces or line ends, and an address made ASCII keeps
// its local part and is ASCII.
func FuzzName(f *testing.F) {
	for _, s := range []string{"Example.COM.", "bücher.de", "[192.0.2.1]", "[IPv6:2001:db8::1]", "xn--bcher-kva.de", "a..b", "ß.de", "a@bücher.de", "ü@x", "a@\u3002"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		fqdn, _, err := normalize(s)
		if err == nil && fqdn != "" {
			if !isASCII(fqdn) || fqdn != strings.ToLower(fqdn) || strings.ContainsAny(fqdn, " \t\r\n") || !strings.HasSuffix(fqdn, ".") {
				t.Fatalf("normalize(%q) = %q", s, fqdn)
			}
		}
		if a, ok := ALabelAddress(s); ok {
			at := strings.LastIndexByte(s, '@')
			if !isASCII(a) || at >= 0 && !strings.HasPrefix(a, s[:at+1]) {
				t.Fatalf("ALabelAddress(%q) = %q", s, a)
			}
		}
		ParseAddressLiteral(s)
		IsDomainSyntax(s, true)
	})
}
