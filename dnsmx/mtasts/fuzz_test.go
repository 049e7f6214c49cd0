package mtasts

import (
	"strings"
	"testing"
)

// FuzzParse: a policy file from a web server never panics Parse; a policy
// it accepts has a known mode, a capped max_age and valid mx patterns, each
// of which matches a host of its form.
func FuzzParse(f *testing.F) {
	f.Add([]byte("version: STSv1\r\nmode: enforce\r\nmx: *.example.com\r\nmx: mx.example.net.\r\nmax_age: 86400\r\n"))
	f.Add([]byte("version: STSv1\nmode: none\nmax_age: 99999999999\n"))
	f.Add([]byte("version:STSv1\nmode:testing\nmax_age:0\nmx:a_b\nx"))
	f.Fuzz(func(t *testing.T, text []byte) {
		p, err := Parse(text)
		if err != nil {
			return
		}
		if p.Mode != Enforce && p.Mode != Testing && p.Mode != None {
			t.Fatalf("mode %q", p.Mode)
		}
		if p.MaxAge < 0 || p.MaxAge > MaxMaxAge {
			t.Fatalf("max_age %v", p.MaxAge)
		}
		for _, mx := range p.MX {
			if !validPattern(mx) {
				t.Fatalf("invalid pattern %q kept", mx)
			}
			host := strings.Replace(mx, "*", "mx", 1)
			if !p.Match(host) || !p.Match(strings.ToUpper(host)+".") {
				t.Fatalf("pattern %q does not match %q", mx, host)
			}
		}
	})
}

// FuzzParseTXT: the id of an accepted _mta-sts record is 1 to 32 letters
// and digits (RFC 8461 §3.1); it names a cache entry and goes into logs.
func FuzzParseTXT(f *testing.F) {
	f.Add("v=STSv1; id=20160831085700Z;")
	f.Add("v=STSv1;id=a;ext=b")
	f.Add("v=STSv1; id=;")
	f.Fuzz(func(t *testing.T, rec string) {
		id, ok := parseTXT(rec)
		if !ok {
			return
		}
		if id == "" || len(id) > 32 || strings.IndexFunc(id, func(r rune) bool {
			return !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9')
		}) >= 0 {
			t.Fatalf("parseTXT(%q) = %q", rec, id)
		}
	})
}
