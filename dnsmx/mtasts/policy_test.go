package mtasts

import (
	"slices"
	"strings"
	"testing"
	"time"
)

func TestParse(t *testing.T) {
	t.Parallel()
	p, err := Parse([]byte("version: STSv1\nmode:testing\nmx: MX.example.com.\nmx:*.example.net\nmax_age: 9999999999\nextension: ignored\n\n"))
	if err != nil {
		t.Fatal(err)
	}
	if p.Mode != Testing || p.MaxAge != MaxMaxAge || !slices.Equal(p.MX, []string{"mx.example.com", "*.example.net"}) {
		t.Errorf("%+v", p)
	}
	if p, err := Parse([]byte("version: STSv1\r\nmode: none\r\nmax_age: 0\r\n")); err != nil || p.Mode != None {
		t.Errorf("mode none without mx: %+v, %v", p, err)
	}
	bad := map[string]string{
		"no version":   "mode: enforce\nmx: a.example\nmax_age: 1\n",
		"version 2":    "version: STSv2\nmode: enforce\nmx: a.example\nmax_age: 1\n",
		"bad mode":     "version: STSv1\nmode: strict\nmx: a.example\nmax_age: 1\n",
		"no mode":      "version: STSv1\nmx: a.example\nmax_age: 1\n",
		"no max_age":   "version: STSv1\nmode: enforce\nmx: a.example\n",
		"neg max_age":  "version: STSv1\nmode: enforce\nmx: a.example\nmax_age: -1\n",
		"no mx":        "version: STSv1\nmode: enforce\nmax_age: 1\n",
		"bad mx":       "version: STSv1\nmode: enforce\nmx: a..example\nmax_age: 1\n",
		"mid wildcard": "version: STSv1\nmode: enforce\nmx: a.*.example\nmax_age: 1\n",
		"not key":      "version: STSv1\nmode enforce\nmx: a.example\nmax_age: 1\n",
		"empty":        "",
	}
	for name, text := range bad {
		if _, err := Parse([]byte(text)); err == nil {
			t.Errorf("%s: parsed", name)
		}
	}
}

func TestPolicyMatch(t *testing.T) {
	t.Parallel()
	p := &Policy{MX: []string{"mx.example.com", "*.mail.example.com"}, MaxAge: time.Hour}
	cases := map[string]bool{
		"mx.example.com":         true,
		"MX.Example.COM.":        true,
		"a.mail.example.com":     true,
		"A.MAIL.example.com.":    true,
		"mail.example.com":       false, // "*" is one label, not none
		"a.b.mail.example.com":   false, // nor two
		"amail.example.com":      false,
		"mx.example.com.evil":    false,
		"other.example.com":      false,
		"":                       false,
		".mail.example.com":      false,
		"mx.example.com.example": false,
	}
	for host, want := range cases {
		if got := p.Match(host); got != want {
			t.Errorf("Match(%q) = %v, want %v", host, got, want)
		}
	}
}

func TestParseTXT(t *testing.T) {
	t.Parallel()
	good := map[string]string{
		"v=STSv1; id=20160831085700Z;":              "20160831085700Z",
		"v=STSv1;id=abc":                            "abc",
		"v=STSv1; id=1; ext=whatever":               "1",
		"v=STSv1 ; id = " + strings.Repeat("9", 32): strings.Repeat("9", 32),
	}
	for rec, want := range good {
		if id, ok := parseTXT(rec); !ok || id != want {
			t.Errorf("parseTXT(%q) = %q, %v; want %q", rec, id, ok, want)
		}
	}
	for _, rec := range []string{"v=STSv2; id=1", "v=STSv1", "v=STSv1; id=", "v=STSv1; id=a_b", "id=1; v=STSv1", "v=STSv1; junk"} {
		if id, ok := parseTXT(rec); ok {
			t.Errorf("parseTXT(%q) = %q, accepted", rec, id)
		}
	}
}
