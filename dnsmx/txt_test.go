package dnsmx

import (
	"context"
	"slices"
	"testing"

	"github.com/miekg/dns"

	"github.com/mailhop/mailhop/dnsmx/dnstest"
)

func TestLookupTXT_JoinsStringsFollowsCNAMEAndCaches(t *testing.T) {
	t.Parallel()
	srv := dnstest.New(t, dnstest.Zone{
		"_mta-sts.example.com.": {dnstest.TXT("_mta-sts.example.com", "v=STSv1; ", "id=1")},
		"multi.example.com.": {
			dnstest.TXT("multi.example.com", "one"),
			dnstest.TXT("multi.example.com", "two"),
		},
		"alias.example.com.": {dnstest.CNAME("alias.example.com", "_mta-sts.example.com")},
		"a.example.com.":     {dnstest.A("a.example.com", "192.0.2.1")},
	})
	r := newResolver(t, srv)
	ctx := context.Background()

	got, err := r.LookupTXT(ctx, "_MTA-STS.example.com.")
	if err != nil || !slices.Equal(got, []string{"v=STSv1; id=1"}) {
		t.Fatalf("LookupTXT = %q, %v", got, err)
	}
	got, err = r.LookupTXT(ctx, "multi.example.com")
	slices.Sort(got)
	if err != nil || !slices.Equal(got, []string{"one", "two"}) {
		t.Errorf("two records: %q, %v", got, err)
	}
	got, err = r.LookupTXT(ctx, "alias.example.com")
	if err != nil || !slices.Equal(got, []string{"v=STSv1; id=1"}) {
		t.Errorf("through a CNAME: %q, %v", got, err)
	}
	for _, name := range []string{"a.example.com", "missing.example.com"} {
		if got, err := r.LookupTXT(ctx, name); err != nil || len(got) != 0 {
			t.Errorf("%s (NODATA/NXDOMAIN): %q, %v", name, got, err)
		}
	}

	n := srv.Queries()
	if _, err := r.LookupTXT(ctx, "_mta-sts.example.com"); err != nil {
		t.Fatal(err)
	}
	if srv.Queries() != n {
		t.Errorf("second lookup was not answered from the cache")
	}
}

func TestLookupTXT_Failures(t *testing.T) {
	t.Parallel()
	srv := dnstest.New(t, dnstest.Zone{})
	srv.SetRcode("broken.example.com", dns.RcodeServerFailure)
	r := newResolver(t, srv)
	_, err := r.LookupTXT(context.Background(), "broken.example.com")
	wantError(t, err, true, CodeTemporary)
	_, err = r.LookupTXT(context.Background(), "[192.0.2.1]")
	wantError(t, err, false, CodeNoSuchDomain)
	_, err = r.LookupTXT(context.Background(), "bad..name")
	wantError(t, err, false, CodeNoSuchDomain)
}
