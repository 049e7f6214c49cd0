package tlsrpt

import (
	"strings"
	"testing"
)

func TestParseTLSRPT(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		recs []string
		want string // the URIs joined by " ", or "error"
	}{
		{[]string{"v=TLSRPTv1; rua=mailto:a@example.com"}, "mailto:a@example.com"},
		{[]string{"v=TLSRPTv1;rua=mailto:a@example.com,https://r.example/x;"}, "mailto:a@example.com https://r.example/x"},
		{[]string{"v=spf1 -all", "v=TLSRPTv1; rua=https://r.example/x"}, "https://r.example/x"},
		{[]string{"v=TLSRPTv1; rua=mailto:tls%2Breports@example.com"}, "mailto:tls+reports@example.com"},
		{[]string{"v=TLSRPTv1; rua=mailto:a@example.com?subject=x"}, "mailto:a@example.com"},
		{[]string{"v=TLSRPTv1; rua=http://r.example/x,ftp://r.example,mailto:a@example.com"}, "mailto:a@example.com"},
		{[]string{"v=TLSRPTv1; rua=mailto:bad address@example.com"}, "error"},
		// Only an address an SMTP server takes: a dot-atom local part and
		// a host name. These were queued before, each bouncing to
		// tls_report_from after a DNS query for a name that cannot exist.
		{[]string{"v=TLSRPTv1; rua=mailto:a@example.com!5m"}, "error"},
		{[]string{"v=TLSRPTv1; rua=mailto:a@b@example.com"}, "error"},
		{[]string{"v=TLSRPTv1; rua=mailto:a@example..com"}, "error"},
		{[]string{"v=TLSRPTv1; rua=mailto:a@-x.example.com"}, "error"},
		{[]string{"v=TLSRPTv1; rua=mailto:a@x_y.example.com"}, "error"},
		{[]string{"v=TLSRPTv1; rua=mailto:a.@example.com"}, "error"},
		{[]string{"v=TLSRPTv1; rua=mailto:.a@example.com"}, "error"},
		{[]string{"v=TLSRPTv1; rua=mailto:a..b@example.com"}, "error"},
		{[]string{"v=TLSRPTv1; rua=mailto:a@example.com."}, "error"},
		{[]string{"v=TLSRPTv1; rua=mailto:a@" + strings.Repeat("x", 64) + ".example"}, "error"},
		{[]string{"v=TLSRPTv1; rua=mailto:tls.rpt+x=y/z@Mail-1.xn--bcher-kva.example"}, "mailto:tls.rpt+x=y/z@Mail-1.xn--bcher-kva.example"},
		// A percent-encoded UTF-8 domain (RFC 6068 §2) is sent to as its
		// A-label; it was refused before. A local part stays ASCII (no
		// SMTPUTF8 for reports), and a name IDNA refuses is refused.
		{[]string{"v=TLSRPTv1; rua=mailto:tlsrpt@b%C3%BCcher.example"}, "mailto:tlsrpt@xn--bcher-kva.example"},
		{[]string{"v=TLSRPTv1; rua=mailto:tlsrpt@B%C3%9CCHER.Example"}, "mailto:tlsrpt@xn--bcher-kva.example"},
		{[]string{"v=TLSRPTv1; rua=mailto:tlsrpt@mail.b%C3%BCcher.example,mailto:a@example.com"}, "mailto:tlsrpt@mail.xn--bcher-kva.example mailto:a@example.com"},
		{[]string{"v=TLSRPTv1; rua=mailto:j%C3%B6rg@example.com"}, "error"},
		{[]string{"v=TLSRPTv1; rua=mailto:tlsrpt@b%FFcher.example"}, "error"},
		{[]string{"v=TLSRPTv1; rua=mailto:tlsrpt@b%C3%BCcher..example"}, "error"},
		{[]string{"v=TLSRPTv1; rua=mailto:tlsrpt@b%C3%BCcher.example!5m"}, "error"},
		{[]string{"v=TLSRPTv1; rua=mailto:tlsrpt@%E2%80%AEcher.example"}, "error"}, // U+202E, not allowed in IDNA
		{[]string{"v=TLSRPTv1; rua=https://user:pw@r.example/x"}, "error"},
		// A space in the query was kept (found by FuzzParseTLSRPT).
		{[]string{"v=TLSRPTv1; rua=https://r.example/x? a"}, "error"},
		{[]string{"v=TLSRPTv1; rua=https://r.example/x?a=%20"}, "https://r.example/x?a=%20"},
		{[]string{"v=TLSRPTv1; ext=1"}, "error"},
		{[]string{"v=TLSRPTv1"}, "error"},
		{[]string{"v=TLSRPTv10; rua=mailto:a@example.com"}, "error"},
		{[]string{"v=TLSRPTv1; rua=mailto:a@example.com", "v=TLSRPTv1; rua=mailto:b@example.com"}, "error"},
		{nil, "error"},
		{[]string{"v=TLSRPTv1; rua=mailto:1@x.example,mailto:2@x.example,mailto:3@x.example,mailto:4@x.example,mailto:5@x.example,mailto:6@x.example"},
			"mailto:1@x.example mailto:2@x.example mailto:3@x.example mailto:4@x.example mailto:5@x.example"},
	} {
		us, err := ParseRecord(tc.recs)
		got := "error"
		if err == nil {
			var s []string
			for _, u := range us {
				s = append(s, u.String())
			}
			got = strings.Join(s, " ")
		}
		if got != tc.want {
			t.Errorf("ParseRecord(%q) = %q, want %q", tc.recs, got, tc.want)
		}
	}
}
