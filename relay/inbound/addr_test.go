package inbound

import (
	"strings"
	"testing"
)

func TestParseAddress(t *testing.T) {
	good := []struct {
		in   string
		utf8 bool
	}{
		{"user@example.com", false},
		{"first.last+tag@sub.example.org", false},
		{"user%remote@relay.example", false}, // percent hack: just a local part
		{"remote!user@relay.example", false}, // bang path: just a local part
		{`"quoted local"@example.com`, false},
		{`"a@b"@example.com`, false},
		{`"a\"b"@example.com`, false},
		{"user@[192.0.2.1]", false},
		{"user@[IPv6:2001:db8::1]", false},
		{"MiXeD@ExAmPle.COM", false},
		{"usér@exämple.com", true},
	}
	for _, tc := range good {
		if _, err := ParseAddress(tc.in, tc.utf8); err != nil {
			t.Errorf("ParseAddress(%q, %v): %v", tc.in, tc.utf8, err)
		}
	}
	bad := []struct {
		in   string
		utf8 bool
	}{
		{"", false},
		{"user", false},
		{"user@", false},
		{"@example.com", false},
		{"a@b@c.example", false},
		{"user@example.com.", false}, // trailing dot
		{"user@.example.com", false},
		{"user@exa..mple.com", false},
		{".user@example.com", false},
		{"us..er@example.com", false},
		{"user.@example.com", false},
		{"us er@example.com", false},
		{"user@exam_ple.com", false},
		{"user@-example.com", false},
		{"@relay:user@remote.example", false}, // source route
		{`"unterminated@example.com`, false},
		{`"a"b@example.com`, false},
		{"user@[300.1.1.1]", false},
		{"user@[IPv6:192.0.2.1]", false},
		{"user@[tag:foo]", false},
		{"user@[192.0.2.1", false},
		{"usér@exämple.com", false}, // UTF-8 without SMTPUTF8
		{"user@exämple.com", false},
		{"user\r@example.com", false},
		{"user@example.com\x00", false},
		{"\xff@example.com", true}, // invalid UTF-8
	}
	for _, tc := range bad {
		if a, err := ParseAddress(tc.in, tc.utf8); err == nil {
			t.Errorf("ParseAddress(%q, %v) = %+v, want an error", tc.in, tc.utf8, a)
		}
	}
	// A path over RFC 5321's 256 octets is refused; a local part over its
	// 64 (an SRS or VERP sender) is taken, as Postfix takes it.
	if a, err := ParseAddress(strings.Repeat("a", 243)+"@example.com", false); err == nil {
		t.Errorf("a path of 255 octets: %+v, want an error", a)
	}
	if _, err := ParseAddress("SRS0="+strings.Repeat("a", 60)+"=forwarded.example=user@forwarder.example", false); err != nil {
		t.Errorf("a local part over 64 octets: %v, want it taken", err)
	}
}

func FuzzParseAddress(f *testing.F) {
	for _, s := range []string{"user@example.com", `"a b"@[IPv6:::1]`, "x@[1.2.3.4]", "usér@exämple.com", "a@b@c"} {
		f.Add(s, true)
		f.Add(s, false)
	}
	f.Fuzz(func(t *testing.T, s string, utf8OK bool) {
		a, err := ParseAddress(s, utf8OK)
		if err != nil {
			return
		}
		if a.String() != s {
			t.Fatalf("round trip: %q -> %q", s, a.String())
		}
		// A parsed address never holds what could end or split a line or a
		// header, and has exactly one unquoted "@".
		for i := 0; i < len(s); i++ {
			if s[i] < 32 || s[i] == 127 {
				t.Fatalf("control character in %q", s)
			}
		}
		if b, err := ParseAddress(a.String(), utf8OK); err != nil || b != a {
			t.Fatalf("reparse of %q: %+v %v", s, b, err)
		}
	})
}
