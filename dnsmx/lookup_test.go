package dnsmx

import (
	"context"
	"errors"
	"fmt"
	"net"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/mailhop/mailhop/dnsmx/dnstest"
)

func TestLookupMX_SortedByPreference(t *testing.T) {
	t.Parallel()
	srv := dnstest.New(t, dnstest.Zone{
		"example.com.": {
			dnstest.MX("example.com", 20, "B.example.com"),
			dnstest.MX("example.com", 10, "a.example.com"),
			dnstest.MX("example.com", 30, "c.example.net"),
		},
		"a.example.com.": {dnstest.A("a.example.com", "192.0.2.1"), dnstest.AAAA("a.example.com", "2001:db8::1")},
		"b.example.com.": {dnstest.A("b.example.com", "192.0.2.2")},
		"c.example.net.": {dnstest.A("c.example.net", "192.0.2.3")},
	})
	r := newResolver(t, srv)
	mxs, err := r.LookupMX(context.Background(), "example.com")
	if err != nil {
		t.Fatal(err)
	}
	if got, want := hosts(mxs), []string{"a.example.com", "b.example.com", "c.example.net"}; !slices.Equal(got, want) {
		t.Fatalf("hosts %v, want %v", got, want)
	}
	if mxs[0].Pref != 10 || mxs[1].Pref != 20 || mxs[2].Pref != 30 {
		t.Errorf("prefs %d %d %d", mxs[0].Pref, mxs[1].Pref, mxs[2].Pref)
	}
	if want := addrs("192.0.2.1", "2001:db8::1"); !slices.Equal(mxs[0].Addrs, want) {
		t.Errorf("addrs %v, want %v (IPv4 first)", mxs[0].Addrs, want)
	}
	for _, m := range mxs {
		if m.Implicit {
			t.Errorf("%s marked implicit", m.Host)
		}
	}
}

func TestLookupMX_EqualPreferenceShuffled(t *testing.T) {
	t.Parallel()
	srv := dnstest.New(t, dnstest.Zone{
		"example.com.": {
			dnstest.MX("example.com", 5, "first.example.com"),
			dnstest.MX("example.com", 10, "x.example.com"),
			dnstest.MX("example.com", 10, "y.example.com"),
		},
		"first.example.com.": {dnstest.A("first.example.com", "192.0.2.9")},
		"x.example.com.":     {dnstest.A("x.example.com", "192.0.2.1")},
		"y.example.com.":     {dnstest.A("y.example.com", "192.0.2.2")},
	})
	r := newResolver(t, srv)
	r.SetCacheSize(0) // every lookup asks the server and shuffles anew
	seen := map[string]int{}
	for range 200 {
		mxs, err := r.LookupMX(context.Background(), "example.com")
		if err != nil {
			t.Fatal(err)
		}
		if len(mxs) != 3 || mxs[0].Host != "first.example.com" {
			t.Fatalf("hosts %v: preference 5 must come first", hosts(mxs))
		}
		seen[strings.Join(hosts(mxs[1:]), ",")]++
	}
	if len(seen) != 2 || seen["x.example.com,y.example.com"] == 0 || seen["y.example.com,x.example.com"] == 0 {
		t.Fatalf("orders seen in 200 lookups: %v; want both", seen)
	}
}

func TestLookupMX_ImplicitMX(t *testing.T) {
	t.Parallel()
	srv := dnstest.New(t, dnstest.Zone{
		"example.org.": {
			dnstest.TXT("example.org", "v=spf1 -all"),
			dnstest.AAAA("example.org", "2001:db8::25"),
			dnstest.A("example.org", "192.0.2.25"),
		},
	})
	r := newResolver(t, srv)
	mxs, err := r.LookupMX(context.Background(), "Example.ORG.")
	if err != nil {
		t.Fatal(err)
	}
	if len(mxs) != 1 {
		t.Fatalf("got %d hosts, want 1", len(mxs))
	}
	m := mxs[0]
	if m.Host != "example.org" || !m.Implicit || m.Pref != 0 {
		t.Errorf("got %+v, want implicit MX example.org", m)
	}
	if want := addrs("192.0.2.25", "2001:db8::25"); !slices.Equal(m.Addrs, want) {
		t.Errorf("addrs %v, want %v", m.Addrs, want)
	}
}

func TestLookupMX_ImplicitMXWithoutAddressIsPermanent(t *testing.T) {
	t.Parallel()
	srv := dnstest.New(t, dnstest.Zone{
		"example.org.": {dnstest.TXT("example.org", "no mail here")},
	})
	_, err := newResolver(t, srv).LookupMX(context.Background(), "example.org")
	wantError(t, err, false, "5.1.2")
}

func TestLookupMX_NullMXIsPermanent(t *testing.T) {
	t.Parallel()
	srv := dnstest.New(t, dnstest.Zone{
		"nomail.example.": {dnstest.MX("nomail.example", 0, "."), dnstest.A("nomail.example", "192.0.2.1")},
	})
	_, err := newResolver(t, srv).LookupMX(context.Background(), "nomail.example")
	e := wantError(t, err, false, "5.1.10")
	if e.Domain != "nomail.example" {
		t.Errorf("Domain %q", e.Domain)
	}
}

func TestLookupMX_NullMXAmongOthersIsIgnored(t *testing.T) {
	t.Parallel()
	srv := dnstest.New(t, dnstest.Zone{
		"example.com.": {
			dnstest.MX("example.com", 0, "."),
			dnstest.MX("example.com", 10, "mx.example.com"),
		},
		"mx.example.com.": {dnstest.A("mx.example.com", "192.0.2.1")},
	})
	mxs, err := newResolver(t, srv).LookupMX(context.Background(), "example.com")
	if err != nil {
		t.Fatal(err)
	}
	if got := hosts(mxs); !slices.Equal(got, []string{"mx.example.com"}) {
		t.Fatalf("hosts %v", got)
	}
}

func TestLookupMX_NXDOMAINIsPermanent(t *testing.T) {
	t.Parallel()
	srv := dnstest.New(t, dnstest.Zone{})
	_, err := newResolver(t, srv).LookupMX(context.Background(), "no-such-domain.example")
	wantError(t, err, false, "5.1.2")
}

func TestLookupMX_ServerFailuresAreTemporary(t *testing.T) {
	t.Parallel()
	for _, rc := range []int{dns.RcodeServerFailure, dns.RcodeRefused, dns.RcodeNotImplemented} {
		t.Run(dns.RcodeToString[rc], func(t *testing.T) {
			t.Parallel()
			srv := dnstest.New(t, dnstest.Zone{
				"example.com.": {dnstest.MX("example.com", 10, "mx.example.com")},
			})
			srv.SetRcode("example.com", rc)
			_, err := newResolver(t, srv).LookupMX(context.Background(), "example.com")
			e := wantError(t, err, true, "4.4.3")
			if !strings.Contains(e.Msg, dns.RcodeToString[rc]) {
				t.Errorf("message %q does not name %s", e.Msg, dns.RcodeToString[rc])
			}
		})
	}
}

func TestLookupMX_TimeoutIsTemporary(t *testing.T) {
	t.Parallel()
	srv := dnstest.New(t, dnstest.Zone{
		"example.com.": {dnstest.MX("example.com", 10, "mx.example.com")},
	})
	srv.Drop("example.com")
	r, err := NewResolver([]string{srv.Addr}, 200*time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	_, err = r.LookupMX(context.Background(), "example.com")
	wantError(t, err, true, "4.4.3")
	if d := time.Since(start); d > 2*time.Second {
		t.Errorf("lookup took %v with a 200ms timeout", d)
	}
	// The text goes into delay notices: no Go network error in it.
	if msg := err.Error(); !strings.Contains(msg, "no answer within 200ms") || strings.Contains(msg, "i/o timeout") || strings.Contains(msg, "deadline") {
		t.Errorf("error %q, want one saying no answer came within 200ms", msg)
	}
}

func TestLookupMX_ContextCancelled(t *testing.T) {
	t.Parallel()
	srv := dnstest.New(t, dnstest.Zone{})
	srv.Drop("example.com")
	r, err := NewResolver([]string{srv.Addr}, time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	time.AfterFunc(50*time.Millisecond, cancel)
	start := time.Now()
	_, err = r.LookupMX(ctx, "example.com")
	wantError(t, err, true, "4.4.3")
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("cancelled lookup took %v", d)
	}
}

func TestLookupMX_HostFailures(t *testing.T) {
	t.Parallel()
	zone := func() dnstest.Zone {
		return dnstest.Zone{
			"example.com.": {
				dnstest.MX("example.com", 5, "192.0.2.7"), // IP literal: not allowed
				dnstest.MX("example.com", 10, "gone.example.com"),
				dnstest.MX("example.com", 20, "noaddr.example.com"),
				dnstest.MX("example.com", 30, "broken.example.com"),
				dnstest.MX("example.com", 40, "ok.example.com"),
			},
			"noaddr.example.com.": {dnstest.TXT("noaddr.example.com", "x")},
			"broken.example.com.": {dnstest.A("broken.example.com", "192.0.2.3")},
			"ok.example.com.":     {dnstest.A("ok.example.com", "192.0.2.4")},
		}
	}
	t.Run("bad hosts skipped", func(t *testing.T) {
		t.Parallel()
		srv := dnstest.New(t, zone())
		srv.SetRcode("broken.example.com", dns.RcodeServerFailure)
		mxs, err := newResolver(t, srv).LookupMX(context.Background(), "example.com")
		if err != nil {
			t.Fatal(err)
		}
		if got := hosts(mxs); !slices.Equal(got, []string{"ok.example.com"}) {
			t.Fatalf("hosts %v, want only ok.example.com", got)
		}
	})
	t.Run("all permanent", func(t *testing.T) {
		t.Parallel()
		srv := dnstest.New(t, zone())
		srv.Set("ok.example.com")
		srv.Set("broken.example.com")
		_, err := newResolver(t, srv).LookupMX(context.Background(), "example.com")
		e := wantError(t, err, false, "5.4.4")
		if !strings.Contains(e.Msg, "gone.example.com") {
			t.Errorf("message %q does not name the hosts", e.Msg)
		}
	})
	t.Run("one temporary", func(t *testing.T) {
		t.Parallel()
		srv := dnstest.New(t, zone())
		srv.Set("ok.example.com")
		srv.SetRcode("broken.example.com", dns.RcodeServerFailure)
		_, err := newResolver(t, srv).LookupMX(context.Background(), "example.com")
		e := wantError(t, err, true, "4.4.3")
		// Each host is named once with its reason, as the permanent ones
		// are: the message goes into queue list, logs and delay notices.
		want := "no MX host has an address: broken.example.com: A lookup via " + srv.Addr +
			": server answered SERVFAIL; gone.example.com: no such host (NXDOMAIN); " +
			"noaddr.example.com: host has no A or AAAA records; ok.example.com: no such host (NXDOMAIN)"
		if e.Msg != want {
			t.Errorf("message\n%q\nwant\n%q", e.Msg, want)
		}
	})
	t.Run("only IP literal", func(t *testing.T) {
		t.Parallel()
		srv := dnstest.New(t, dnstest.Zone{
			"example.com.": {dnstest.MX("example.com", 5, "192.0.2.7")},
		})
		_, err := newResolver(t, srv).LookupMX(context.Background(), "example.com")
		wantError(t, err, false, "5.4.4")
	})
}

// An MX target that is no host name — a label holding an octet other than
// a letter, digit, '-' or '_', which miekg/dns gives escaped — is skipped
// like an IP literal, even when an address answers for it: such a name
// would go into TLS server names, logs and reports.
func TestLookupMX_TargetNotAHostName(t *testing.T) {
	t.Parallel()
	srv := dnstest.New(t, dnstest.Zone{
		"example.com.": {
			dnstest.MX("example.com", 5, `mx\ odd.example.com`),
			dnstest.MX("example.com", 6, `mx\.dot.example.com`),
			dnstest.MX("example.com", 10, "mx_1.example.com"),
		},
		`mx\ odd.example.com.`: {dnstest.A(`mx\ odd.example.com`, "192.0.2.5")},
		`mx\.dot.example.com.`: {dnstest.A(`mx\.dot.example.com`, "192.0.2.6")},
		"mx_1.example.com.":    {dnstest.A("mx_1.example.com", "192.0.2.7")},
		"only.example.":        {dnstest.MX("only.example", 10, `a\000b.only.example`)},
		`a\000b.only.example.`: {dnstest.A(`a\000b.only.example`, "192.0.2.8")},
	})
	r := newResolver(t, srv)
	mxs, err := r.LookupMX(context.Background(), "example.com")
	if err != nil {
		t.Fatal(err)
	}
	if got := hosts(mxs); !slices.Equal(got, []string{"mx_1.example.com"}) {
		t.Fatalf("hosts %q, want only mx_1.example.com", got)
	}
	_, err = r.LookupMX(context.Background(), "only.example")
	wantError(t, err, false, "5.4.4")
}

// An MX host's address where no server can be (0.0.0.0 would reach this
// host) is left out, as the address literal [0.0.0.0] is refused.
func TestLookupMX_NotUnicastAddressesLeftOut(t *testing.T) {
	t.Parallel()
	srv := dnstest.New(t, dnstest.Zone{
		"example.com.": {
			dnstest.MX("example.com", 10, "zero.example.com"),
			dnstest.MX("example.com", 20, "mixed.example.com"),
		},
		"zero.example.com.": {dnstest.A("zero.example.com", "0.0.0.0"), dnstest.AAAA("zero.example.com", "::")},
		"mixed.example.com.": {
			dnstest.A("mixed.example.com", "0.0.0.0"), dnstest.A("mixed.example.com", "224.0.0.1"),
			dnstest.A("mixed.example.com", "255.255.255.255"), dnstest.A("mixed.example.com", "192.0.2.5"),
		},
		"nomail.example.":      {dnstest.MX("nomail.example", 10, "zero.nomail.example")},
		"zero.nomail.example.": {dnstest.A("zero.nomail.example", "0.0.0.0")},
	})
	r := newResolver(t, srv)
	mxs, err := r.LookupMX(context.Background(), "example.com")
	if err != nil {
		t.Fatal(err)
	}
	if len(mxs) != 1 || mxs[0].Host != "mixed.example.com" || !slices.Equal(mxs[0].Addrs, addrs("192.0.2.5")) {
		t.Fatalf("got %+v, want mixed.example.com with 192.0.2.5 only", mxs)
	}
	_, err = r.LookupMX(context.Background(), "nomail.example")
	if e := wantError(t, err, false, "5.4.4"); !strings.Contains(e.Msg, "0.0.0.0") {
		t.Errorf("message %q does not name the address", e.Msg)
	}
	_, err = r.LookupHost(context.Background(), "zero.example.com")
	wantError(t, err, false, "5.1.2")
}

func TestLookupMX_CNAMEChain(t *testing.T) {
	t.Parallel()
	zone := dnstest.Zone{
		// The domain is an alias of another that has the MX.
		"alias.example.":   {dnstest.CNAME("alias.example", "real.example")},
		"real.example.":    {dnstest.MX("real.example", 10, "mx.real.example")},
		"mx.real.example.": {dnstest.CNAME("mx.real.example", "c1.hosting.example")},
		// The MX host is a chain of aliases.
		"c1.hosting.example.": {dnstest.CNAME("c1.hosting.example", "c2.hosting.example")},
		"c2.hosting.example.": {dnstest.CNAME("c2.hosting.example", "box.hosting.example")},
		"box.hosting.example.": {
			dnstest.A("box.hosting.example", "192.0.2.80"),
			dnstest.AAAA("box.hosting.example", "2001:db8::80"),
		},
	}
	for _, chase := range []bool{true, false} {
		t.Run(fmt.Sprintf("chase=%v", chase), func(t *testing.T) {
			t.Parallel()
			srv := dnstest.New(t, zone)
			srv.ChaseCNAME(chase) // false: the client must ask for each target
			mxs, err := newResolver(t, srv).LookupMX(context.Background(), "alias.example")
			if err != nil {
				t.Fatal(err)
			}
			if len(mxs) != 1 || mxs[0].Host != "mx.real.example" {
				t.Fatalf("got %+v", mxs)
			}
			if want := addrs("192.0.2.80", "2001:db8::80"); !slices.Equal(mxs[0].Addrs, want) {
				t.Errorf("addrs %v, want %v", mxs[0].Addrs, want)
			}
		})
	}
}

func TestLookupMX_CNAMEToNowhere(t *testing.T) {
	t.Parallel()
	srv := dnstest.New(t, dnstest.Zone{
		"alias.example.": {dnstest.CNAME("alias.example", "missing.example")},
	})
	_, err := newResolver(t, srv).LookupMX(context.Background(), "alias.example")
	wantError(t, err, false, "5.1.2")
}

func TestLookupMX_CNAMELoopIsTemporary(t *testing.T) {
	t.Parallel()
	srv := dnstest.New(t, dnstest.Zone{
		"a.example.": {dnstest.CNAME("a.example", "b.example")},
		"b.example.": {dnstest.CNAME("b.example", "a.example")},
	})
	for _, chase := range []bool{true, false} {
		srv.ChaseCNAME(chase)
		r := newResolver(t, srv)
		_, err := r.LookupMX(context.Background(), "a.example")
		e := wantError(t, err, true, "4.4.3")
		if !strings.Contains(e.Msg, "CNAME") {
			t.Errorf("message %q", e.Msg)
		}
	}
}

func TestLookupMX_TruncatedAnswerRetriedOverTCP(t *testing.T) {
	t.Parallel()
	srv := dnstest.New(t, dnstest.Zone{
		"example.com.":    {dnstest.MX("example.com", 10, "mx.example.com")},
		"mx.example.com.": {dnstest.A("mx.example.com", "192.0.2.1")},
	})
	srv.Truncate("example.com")
	srv.Truncate("mx.example.com")
	mxs, err := newResolver(t, srv).LookupMX(context.Background(), "example.com")
	if err != nil {
		t.Fatal(err)
	}
	if len(mxs) != 1 || !slices.Equal(mxs[0].Addrs, addrs("192.0.2.1")) {
		t.Fatalf("got %+v", mxs)
	}
	// MX, A, AAAA: each once over UDP (truncated), once over TCP.
	if n := srv.Queries(); n != 6 {
		t.Errorf("server saw %d queries, want 6", n)
	}
}

func TestLookupMX_LargeAnswerOverTCP(t *testing.T) {
	t.Parallel()
	// 40 MX records with long names do not fit in 1232 bytes; the server
	// truncates them like a real one would.
	zone := dnstest.Zone{}
	var mxs []dns.RR
	for i := range 40 {
		h := fmt.Sprintf("mail-exchanger-with-a-long-name-%02d.hosting-provider.example", i)
		mxs = append(mxs, dnstest.MX("example.com", uint16(i), h))
		zone[h+"."] = []dns.RR{dnstest.A(h, fmt.Sprintf("192.0.2.%d", i+1))}
	}
	zone["example.com."] = mxs
	srv := dnstest.New(t, zone)
	got, err := newResolver(t, srv).LookupMX(context.Background(), "example.com")
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 10 || got[0].Pref != 0 || got[9].Pref != 9 {
		t.Fatalf("got %d hosts %v", len(got), hosts(got))
	}
}

func TestLookupMX_AAAAOnlyHost(t *testing.T) {
	t.Parallel()
	srv := dnstest.New(t, dnstest.Zone{
		"example.com.":    {dnstest.MX("example.com", 10, "mx.example.com")},
		"mx.example.com.": {dnstest.AAAA("mx.example.com", "2001:db8::25")},
	})
	mxs, err := newResolver(t, srv).LookupMX(context.Background(), "example.com")
	if err != nil {
		t.Fatal(err)
	}
	if len(mxs) != 1 || !slices.Equal(mxs[0].Addrs, addrs("2001:db8::25")) {
		t.Fatalf("got %+v", mxs)
	}
}

func TestLookupMX_AtMostTenHosts(t *testing.T) {
	t.Parallel()
	zone := dnstest.Zone{}
	var recs []dns.RR
	for i := 15; i > 0; i-- {
		h := fmt.Sprintf("mx%02d.example.com", i)
		recs = append(recs, dnstest.MX("example.com", uint16(i*10), h))
		zone[h+"."] = []dns.RR{dnstest.A(h, fmt.Sprintf("192.0.2.%d", i))}
	}
	recs = append(recs, dnstest.MX("example.com", 10, "MX01.example.com")) // a duplicate
	zone["example.com."] = recs
	srv := dnstest.New(t, zone)
	mxs, err := newResolver(t, srv).LookupMX(context.Background(), "example.com")
	if err != nil {
		t.Fatal(err)
	}
	var want []string
	for i := 1; i <= 10; i++ {
		want = append(want, fmt.Sprintf("mx%02d.example.com", i))
	}
	if got := hosts(mxs); !slices.Equal(got, want) {
		t.Fatalf("hosts %v, want %v", got, want)
	}
}

func TestLookupMX_AddressLiteral(t *testing.T) {
	t.Parallel()
	srv := dnstest.New(t, dnstest.Zone{})
	r := newResolver(t, srv)
	for lit, want := range map[string]string{
		"[192.0.2.1]":         "192.0.2.1",
		"[IPv6:2001:db8::1]":  "2001:db8::1",
		"[ipv6:2001:DB8::25]": "2001:db8::25",
	} {
		mxs, err := r.LookupMX(context.Background(), lit)
		if err != nil {
			t.Fatalf("%s: %v", lit, err)
		}
		if len(mxs) != 1 || !slices.Equal(mxs[0].Addrs, addrs(want)) || !mxs[0].Implicit || mxs[0].Host != want {
			t.Errorf("%s: got %+v", lit, mxs)
		}
	}
	for _, bad := range []string{"[192.0.2]", "[IPv6:192.0.2.1]", "[2001:db8::1]", "", "a..b", "bad domain.example"} {
		_, err := r.LookupMX(context.Background(), bad)
		wantError(t, err, false, "5.1.2")
	}
	if n := srv.Queries(); n != 0 {
		t.Errorf("literals and bad names caused %d queries", n)
	}
}

func TestLookupMX_InternationalizedDomain(t *testing.T) {
	t.Parallel()
	srv := dnstest.New(t, dnstest.Zone{
		"xn--bcher-kva.example.":    {dnstest.MX("xn--bcher-kva.example", 10, "mx.xn--bcher-kva.example")},
		"mx.xn--bcher-kva.example.": {dnstest.A("mx.xn--bcher-kva.example", "192.0.2.1")},
	})
	r := newResolver(t, srv)
	for _, d := range []string{"bücher.example", "BÜCHER.example", "xn--bcher-kva.example", "XN--BCHER-KVA.EXAMPLE."} {
		mxs, err := r.LookupMX(context.Background(), d)
		if err != nil {
			t.Fatalf("%s: %v", d, err)
		}
		if len(mxs) != 1 || mxs[0].Host != "mx.xn--bcher-kva.example" {
			t.Errorf("%s: got %+v", d, mxs)
		}
	}
}

func TestLookupHost(t *testing.T) {
	t.Parallel()
	srv := dnstest.New(t, dnstest.Zone{
		"smtp.provider.example.": {
			dnstest.A("smtp.provider.example", "192.0.2.1"),
			dnstest.A("smtp.provider.example", "192.0.2.2"),
			dnstest.AAAA("smtp.provider.example", "2001:db8::1"),
		},
		"v6.provider.example.": {dnstest.AAAA("v6.provider.example", "2001:db8::6")},
	})
	r := newResolver(t, srv)
	ctx := context.Background()
	cases := map[string][]string{
		"smtp.provider.example":  {"192.0.2.1", "192.0.2.2", "2001:db8::1"},
		"SMTP.Provider.Example.": {"192.0.2.1", "192.0.2.2", "2001:db8::1"},
		"v6.provider.example":    {"2001:db8::6"},
		"192.0.2.9":              {"192.0.2.9"},
		"2001:db8::9":            {"2001:db8::9"},
		"[192.0.2.10]":           {"192.0.2.10"},
		"[IPv6:2001:db8::a]":     {"2001:db8::a"},
	}
	for host, want := range cases {
		got, err := r.LookupHost(ctx, host)
		if err != nil {
			t.Fatalf("%s: %v", host, err)
		}
		if !slices.Equal(got, addrs(want...)) {
			t.Errorf("%s: got %v, want %v", host, got, want)
		}
	}
	_, err := r.LookupHost(ctx, "nope.provider.example")
	wantError(t, err, false, "5.1.2")

	srv.SetRcode("down.provider.example", dns.RcodeServerFailure)
	_, err = r.LookupHost(ctx, "down.provider.example")
	wantError(t, err, true, "4.4.3")
}

func TestResolver_FailoverFromDeadServer(t *testing.T) {
	t.Parallel()
	// A UDP port nobody listens on: the kernel answers "port unreachable".
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	dead := pc.LocalAddr().String()
	pc.Close()

	srv := dnstest.New(t, dnstest.Zone{
		"example.com.":    {dnstest.MX("example.com", 10, "mx.example.com")},
		"mx.example.com.": {dnstest.A("mx.example.com", "192.0.2.1")},
	})
	r, err := NewResolver([]string{dead, srv.Addr}, testTimeout)
	if err != nil {
		t.Fatal(err)
	}
	mxs, err := r.LookupMX(context.Background(), "example.com")
	if err != nil {
		t.Fatal(err)
	}
	if len(mxs) != 1 || mxs[0].Host != "mx.example.com" {
		t.Fatalf("got %+v", mxs)
	}

	// Only dead servers: temporary.
	r, err = NewResolver([]string{dead}, testTimeout)
	if err != nil {
		t.Fatal(err)
	}
	_, err = r.LookupMX(context.Background(), "example.com")
	wantError(t, err, true, "4.4.3")
}

func TestResolver_FailoverFromFailingServer(t *testing.T) {
	t.Parallel()
	zone := dnstest.Zone{
		"example.com.":    {dnstest.MX("example.com", 10, "mx.example.com")},
		"mx.example.com.": {dnstest.A("mx.example.com", "192.0.2.1")},
	}
	bad := dnstest.New(t, zone)
	bad.SetRcode("example.com", dns.RcodeServerFailure)
	good := dnstest.New(t, zone)
	r, err := NewResolver([]string{bad.Addr, good.Addr}, testTimeout)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := r.LookupMX(context.Background(), "example.com"); err != nil {
		t.Fatal(err)
	}
}

// A server that knows no EDNS0 answers FORMERR to a query with an OPT
// record (RFC 6891 §7): the query is sent again without it, and a large
// answer then comes truncated at 512 octets and again over TCP. Every
// lookup through such a resolver (an older forwarder) failed as a
// temporary error, so all mail waited until it expired. A TLSA query asks
// for DNSSEC (DO): it is not retried without EDNS, and stays a failure.
func TestResolver_ServerWithoutEDNS(t *testing.T) {
	t.Parallel()
	zone := dnstest.Zone{
		"example.com.":     {dnstest.MX("example.com", 10, "mx.example.com")},
		"mx.example.com.":  {dnstest.A("mx.example.com", "192.0.2.1")},
		"big.example.com.": nil,
	}
	for i := range 40 {
		h := fmt.Sprintf("host-with-a-long-name-%02d.big.example.com", i)
		zone["big.example.com."] = append(zone["big.example.com."], dnstest.MX("big.example.com", 10, h))
		zone[h+"."] = []dns.RR{dnstest.A(h, "192.0.2.2")}
	}
	srv := dnstest.New(t, zone)
	srv.RefuseEDNS(true)
	r := newResolver(t, srv)
	mxs, err := r.LookupMX(context.Background(), "example.com")
	if err != nil || len(mxs) != 1 || mxs[0].Host != "mx.example.com" {
		t.Fatalf("LookupMX through a server without EDNS: %v, %v", mxs, err)
	}
	if mxs, err := r.LookupMX(context.Background(), "big.example.com"); err != nil || len(mxs) != maxMXHosts {
		t.Fatalf("a large answer through a server without EDNS: %d hosts, %v", len(mxs), err)
	}
	if _, _, err := r.LookupTLSA(context.Background(), "mx.example.com", 25); err == nil {
		t.Error("a TLSA lookup (DNSSEC asked for) was answered through a server without EDNS")
	}
}

func TestError_As(t *testing.T) {
	t.Parallel()
	srv := dnstest.New(t, dnstest.Zone{})
	_, err := newResolver(t, srv).LookupMX(context.Background(), "missing.example")
	wrapped := fmt.Errorf("delivery to missing.example: %w", err)
	var e *Error
	if !errors.As(wrapped, &e) {
		t.Fatalf("errors.As failed on %v", wrapped)
	}
	if e.Domain != "missing.example" || e.Temporary || e.Enhanced != "5.1.2" || e.Msg == "" {
		t.Errorf("got %+v", e)
	}
	if IsTemporary(wrapped) {
		t.Error("wrapped permanent error reported temporary")
	}
	if !strings.Contains(e.Error(), "missing.example") || !strings.Contains(e.Error(), "5.1.2") {
		t.Errorf("Error() = %q", e.Error())
	}
	if IsTemporary(nil) {
		t.Error("IsTemporary(nil) = true")
	}
	if !IsTemporary(errors.New("something unknown")) {
		t.Error("an unknown error must be temporary")
	}
}

// TestResolver_Stats: the counts are of queries sent (the metrics'
// mailhop_dns_lookups_total, "cache misses") and of those no server answered
// (mailhop_dns_failures_total, "failed temporarily"): an answer from the
// cache is no query, and NXDOMAIN is an answer, not a failure (it counted
// every LookupMX and LookupHost call, and every error, so a mistyped
// recipient domain set off the documented failures alert).
func TestResolver_Stats(t *testing.T) {
	t.Parallel()
	srv := dnstest.New(t, dnstest.Zone{
		"example.com.": {dnstest.A("example.com", "192.0.2.1")},
	})
	srv.SetRcode("broken.example.", dns.RcodeServerFailure)
	r := newResolver(t, srv)
	ctx := context.Background()
	r.LookupMX(ctx, "example.com")
	r.LookupMX(ctx, "example.com") // from the cache
	r.LookupHost(ctx, "example.com")
	if _, err := r.LookupMX(ctx, "missing.example"); err == nil || IsTemporary(err) {
		t.Fatalf("missing.example: %v, want NXDOMAIN", err)
	}
	l, f := r.Stats()
	if want := uint64(srv.Queries()); l != want || f != 0 {
		t.Errorf("Stats() = %d, %d; want %d (the server's queries), 0", l, f, want)
	}
	if _, err := r.LookupMX(ctx, "broken.example"); !IsTemporary(err) {
		t.Fatalf("broken.example: %v, want a temporary failure", err)
	}
	if l2, f := r.Stats(); l2 != l+1 || f != 1 {
		t.Errorf("after SERVFAIL: Stats() = %d, %d; want %d, 1", l2, f, l+1)
	}
}

func TestNewResolver_Servers(t *testing.T) {
	t.Parallel()
	r, err := NewResolver([]string{"192.0.2.53", "[2001:db8::53]", "127.0.0.1:5353", "::1"}, 0)
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"192.0.2.53:53", "[2001:db8::53]:53", "127.0.0.1:5353", "[::1]:53"}
	if got := r.Servers(); !slices.Equal(got, want) {
		t.Errorf("servers %v, want %v", got, want)
	}
	if r.timeout != DefaultTimeout {
		t.Errorf("timeout %v", r.timeout)
	}
	if _, err := NewResolver([]string{" "}, 0); err == nil {
		t.Error("empty server accepted")
	}
}

func TestIsDomainSyntax(t *testing.T) {
	t.Parallel()
	long := strings.Repeat("a", 63)
	for _, c := range []struct {
		s          string
		utf8, want bool
	}{
		{"example.com", false, true},
		{"a-b.c1.EXAMPLE", false, true},
		{"xn--bcher-kva.example", false, true},
		{"bücher.example", false, false},
		{"bücher.example", true, true},
		{"", false, false},
		{"example.com.", false, false},
		{"a..b", false, false},
		{"-a.b", false, false},
		{"a-.b", false, false},
		{"a_b.c", false, false},
		{long + ".x", false, true},
		{long + "a.x", false, false},
		{strings.Repeat(long+".", 4)[:255], false, true},
		{strings.Repeat(long+".", 4) + "x", false, false},
	} {
		if got := IsDomainSyntax(c.s, c.utf8); got != c.want {
			t.Errorf("IsDomainSyntax(%q, %v) = %v, want %v", c.s, c.utf8, got, c.want)
		}
	}
}

// TestSetServers: after SetServers the queries go to the new servers, and
// the cache holds nothing the old ones said.
func TestSetServers(t *testing.T) {
	t.Parallel()
	old := dnstest.New(t, dnstest.Zone{
		"example.com.":    {dnstest.MX("example.com", 10, "mx.old.example")},
		"mx.old.example.": {dnstest.A("mx.old.example", "192.0.2.1")},
	})
	fresh := dnstest.New(t, dnstest.Zone{
		"example.com.":    {dnstest.MX("example.com", 10, "mx.new.example")},
		"mx.new.example.": {dnstest.A("mx.new.example", "192.0.2.2")},
	})
	r, err := NewResolver([]string{old.Addr}, time.Second)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	if mxs, err := r.LookupMX(ctx, "example.com"); err != nil || len(mxs) != 1 || mxs[0].Host != "mx.old.example" {
		t.Fatalf("before: %+v, %v", mxs, err)
	}
	if err := r.SetServers([]string{fresh.Addr}); err != nil {
		t.Fatal(err)
	}
	if got := r.Servers(); len(got) != 1 || got[0] != fresh.Addr {
		t.Errorf("Servers() = %v", got)
	}
	if mxs, err := r.LookupMX(ctx, "example.com"); err != nil || len(mxs) != 1 || mxs[0].Host != "mx.new.example" {
		t.Errorf("after: %+v, %v (cached from the old server?)", mxs, err)
	}
	if err := r.SetServers([]string{" "}); err == nil || r.Servers()[0] != fresh.Addr {
		t.Errorf("a bad server list: err %v, servers %v", err, r.Servers())
	}
}

// MX.Secure: the MX answer and the host's address answers all carried the
// AD bit (RFC 7672 §2.2); one answer without it makes the host insecure.
func TestLookupMX_Secure(t *testing.T) {
	t.Parallel()
	srv := dnstest.New(t, dnstest.Zone{
		"example.com.":     {dnstest.MX("example.com", 10, "mx1.example.com"), dnstest.MX("example.com", 20, "mx2.example.com")},
		"mx1.example.com.": {dnstest.A("mx1.example.com", "192.0.2.1")},
		"mx2.example.com.": {dnstest.A("mx2.example.com", "192.0.2.2")},
		"implicit.test.":   {dnstest.A("implicit.test", "192.0.2.3")},
	})
	srv.SetAD(true)
	srv.SetInsecure("mx2.example.com")
	r, err := NewResolver([]string{srv.Addr}, time.Second)
	if err != nil {
		t.Fatal(err)
	}
	mxs, err := r.LookupMX(context.Background(), "example.com")
	if err != nil || len(mxs) != 2 {
		t.Fatalf("LookupMX: %+v, %v", mxs, err)
	}
	if !mxs[0].Secure || mxs[1].Secure {
		t.Errorf("secure: %s %v, %s %v; want true, false", mxs[0].Host, mxs[0].Secure, mxs[1].Host, mxs[1].Secure)
	}
	if mxs, err := r.LookupMX(context.Background(), "implicit.test"); err != nil || !mxs[0].Secure || !mxs[0].Implicit {
		t.Errorf("implicit MX: %+v, %v", mxs, err)
	}
	srv.SetInsecure("example.com")
	r2, _ := NewResolver([]string{srv.Addr}, time.Second)
	if mxs, err := r2.LookupMX(context.Background(), "example.com"); err != nil || mxs[0].Secure {
		t.Errorf("an insecure MX answer: %+v, %v", mxs, err)
	}
}
