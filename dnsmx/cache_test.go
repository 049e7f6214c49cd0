package dnsmx

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/mailhop/mailhop/dnsmx/dnstest"
)

func TestCache_HonoursTTL(t *testing.T) {
	t.Parallel()
	srv := dnstest.New(t, dnstest.Zone{
		"example.com.": {dnstest.WithTTL(dnstest.MX("example.com", 10, "mx.example.com"), 600)},
		"mx.example.com.": {
			dnstest.WithTTL(dnstest.A("mx.example.com", "192.0.2.1"), 60),
			dnstest.WithTTL(dnstest.A("mx.example.com", "192.0.2.2"), 30), // the answer lives 30 s
		},
	})
	clk := newFakeClock()
	r := newResolver(t, srv)
	r.Now = clk.Now
	ctx := context.Background()
	lookup := func() {
		t.Helper()
		if _, err := r.LookupMX(ctx, "example.com"); err != nil {
			t.Fatal(err)
		}
	}

	lookup()
	if n := srv.Queries(); n != 3 { // MX, A, AAAA (NODATA)
		t.Fatalf("first lookup: %d queries, want 3", n)
	}
	clk.Advance(29 * time.Second)
	lookup()
	if n := srv.Queries(); n != 3 {
		t.Fatalf("within TTL: %d queries, want still 3", n)
	}
	clk.Advance(2 * time.Second) // A expired (min TTL 30); MX and AAAA (SOA minimum 60) live
	lookup()
	if n := srv.Queries(); n != 4 {
		t.Fatalf("after A TTL: %d queries, want 4", n)
	}
	clk.Advance(29 * time.Second) // t=60: AAAA NODATA expired (60 s); A (since t=31) lives
	lookup()
	if n := srv.Queries(); n != 5 {
		t.Fatalf("after AAAA NODATA TTL: %d queries, want 5", n)
	}
	clk.Advance(600 * time.Second) // everything expired
	lookup()
	if n := srv.Queries(); n != 8 {
		t.Fatalf("after MX TTL: %d queries, want 8", n)
	}
}

func TestCache_NegativeAnswers(t *testing.T) {
	t.Parallel()
	srv := dnstest.New(t, dnstest.Zone{
		"short.example.": {dnstest.SOA("short.example", 10)},
		"long.example.":  {dnstest.SOA("long.example", 86400)},
	})
	clk := newFakeClock()
	r := newResolver(t, srv)
	r.Now = clk.Now
	ctx := context.Background()
	missing := func(name string) {
		t.Helper()
		_, err := r.LookupHost(ctx, name)
		wantError(t, err, false, "5.1.2")
	}

	missing("gone.short.example") // NXDOMAIN, SOA minimum 10 s
	missing("gone.long.example")  // NXDOMAIN, SOA minimum 1 day: capped at 1 h
	if n := srv.Queries(); n != 4 {
		t.Fatalf("%d queries, want 4", n)
	}
	clk.Advance(9 * time.Second)
	missing("gone.short.example")
	if n := srv.Queries(); n != 4 {
		t.Fatalf("negative answer not cached: %d queries", n)
	}
	clk.Advance(2 * time.Second)
	missing("gone.short.example")
	missing("gone.long.example")
	if n := srv.Queries(); n != 6 {
		t.Fatalf("after 11 s: %d queries, want 6", n)
	}
	clk.Advance(time.Hour)
	missing("gone.long.example")
	if n := srv.Queries(); n != 8 {
		t.Fatalf("negative TTL not capped at 1h: %d queries, want 8", n)
	}
}

func TestCache_TemporaryFailuresNotCached(t *testing.T) {
	t.Parallel()
	srv := dnstest.New(t, dnstest.Zone{
		"example.com.": {dnstest.A("example.com", "192.0.2.1")},
	})
	srv.SetRcode("example.com", dns.RcodeServerFailure)
	r := newResolver(t, srv)
	ctx := context.Background()
	_, err := r.LookupMX(ctx, "example.com")
	wantError(t, err, true, "4.4.3")
	srv.Reset("example.com")
	mxs, err := r.LookupMX(ctx, "example.com")
	if err != nil {
		t.Fatalf("after the server recovered: %v", err)
	}
	if len(mxs) != 1 || !mxs[0].Implicit {
		t.Fatalf("got %+v", mxs)
	}
}

func TestCache_ZeroTTLNotCached(t *testing.T) {
	t.Parallel()
	srv := dnstest.New(t, dnstest.Zone{
		"h.example.": {dnstest.WithTTL(dnstest.A("h.example", "192.0.2.1"), 0)},
	})
	r := newResolver(t, srv)
	for range 3 {
		if _, err := r.LookupHost(context.Background(), "h.example"); err != nil {
			t.Fatal(err)
		}
	}
	// A is never cached; AAAA (NODATA) is.
	if n := srv.Queries(); n != 4 {
		t.Errorf("%d queries, want 4", n)
	}
}

func TestCache_Bounded(t *testing.T) {
	t.Parallel()
	zone := dnstest.Zone{}
	for i := range 20 {
		h := fmt.Sprintf("h%d.example", i)
		zone[h+"."] = []dns.RR{dnstest.A(h, "192.0.2.1")}
	}
	srv := dnstest.New(t, zone)
	r := newResolver(t, srv)
	r.SetCacheSize(6)
	for i := range 20 {
		if _, err := r.LookupHost(context.Background(), fmt.Sprintf("h%d.example", i)); err != nil {
			t.Fatal(err)
		}
	}
	if n := r.CacheLen(); n != 6 {
		t.Errorf("cache holds %d entries, want 6", n)
	}
	// The most recent host is still cached; the first is not.
	before := srv.Queries()
	r.LookupHost(context.Background(), "h19.example")
	if n := srv.Queries(); n != before {
		t.Errorf("recent entry evicted: %d new queries", n-before)
	}
	r.LookupHost(context.Background(), "h0.example")
	if n := srv.Queries(); n != before+2 {
		t.Errorf("oldest entry not evicted: %d new queries, want 2", n-before)
	}
	r.SetCacheSize(2)
	if n := r.CacheLen(); n != 2 {
		t.Errorf("after shrinking, cache holds %d", n)
	}
	r.SetCacheSize(0)
	if n := r.CacheLen(); n != 0 {
		t.Errorf("disabled cache holds %d", n)
	}
}

func TestCache_LRU(t *testing.T) {
	t.Parallel()
	c := newCache(2)
	now := time.Unix(0, 0)
	exp := now.Add(time.Minute)
	k := func(n string) cacheKey { return cacheKey{n, dns.TypeA} }
	c.put(k("a"), &answer{}, exp)
	c.put(k("b"), &answer{}, exp)
	if c.get(k("a"), now) == nil { // a is now the most recently used
		t.Fatal("a missing")
	}
	c.put(k("c"), &answer{}, exp) // evicts b
	if c.get(k("b"), now) != nil {
		t.Error("b should have been evicted")
	}
	if c.get(k("a"), now) == nil || c.get(k("c"), now) == nil {
		t.Error("a and c should be cached")
	}
	if c.get(k("a"), exp) != nil {
		t.Error("entry returned at its expiry time")
	}
	if c.len() != 1 {
		t.Errorf("expired entry kept: len %d", c.len())
	}
}

func BenchmarkLookupMXCached(b *testing.B) {
	srv := dnstest.New(b, dnstest.Zone{
		"example.com.": {
			dnstest.MX("example.com", 10, "mx1.example.com"),
			dnstest.MX("example.com", 10, "mx2.example.com"),
			dnstest.MX("example.com", 20, "mx3.example.com"),
		},
		"mx1.example.com.": {dnstest.A("mx1.example.com", "192.0.2.1"), dnstest.AAAA("mx1.example.com", "2001:db8::1")},
		"mx2.example.com.": {dnstest.A("mx2.example.com", "192.0.2.2")},
		"mx3.example.com.": {dnstest.A("mx3.example.com", "192.0.2.3")},
	})
	r := newResolver(b, srv)
	ctx := context.Background()
	if _, err := r.LookupMX(ctx, "example.com"); err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if _, err := r.LookupMX(ctx, "example.com"); err != nil {
				b.Fatal(err)
			}
		}
	})
}
