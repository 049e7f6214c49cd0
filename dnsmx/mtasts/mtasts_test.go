package mtasts

import (
	"context"
	"errors"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/mailhop/mailhop/dnsmx/dnstest"
	"github.com/mailhop/mailhop/internal/testpki"
)

const policyV1 = "version: STSv1\r\nmode: enforce\r\nmx: mx1.example.com\r\nmx: *.mx.example.com\r\nmax_age: 86400\r\n"

func stsZone(id string) dnstest.Zone {
	return dnstest.Zone{"_mta-sts.example.com.": {
		dnstest.TXT("_mta-sts.example.com", "v=STSv1; id="+id+";"),
		dnstest.TXT("_mta-sts.example.com", "some other record"),
	}}
}

type fixture struct {
	dns   *dnstest.Server
	https *stsServer
	ca    *testpki.CA
	clock *clock
	dir   string
}

func newFixture(t *testing.T, policy string) *fixture {
	t.Helper()
	ca := testpki.NewCA(t)
	return &fixture{
		dns:   dnstest.New(t, stsZone("1")),
		https: newSTSServer(t, ca, policy, "mta-sts.example.com"),
		ca:    ca,
		clock: &clock{now: time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC)},
		dir:   filepath.Join(t.TempDir(), "mta-sts"),
	}
}

// fetcher returns a new Fetcher sharing the fixture's cache directory, as
// after a restart.
func (fx *fixture) fetcher(t *testing.T) *Fetcher {
	return &Fetcher{
		LookupTXT:  lookupTXT(t, fx.dns),
		HTTPClient: fx.https.client(fx.ca.Pool),
		Dir:        fx.dir,
		Now:        fx.clock.Now,
	}
}

func TestGet_FetchesVerifiedPolicyAndCachesByID(t *testing.T) {
	t.Parallel()
	fx := newFixture(t, policyV1)
	f := fx.fetcher(t)
	ctx := context.Background()

	p, err := f.Get(ctx, "Example.COM.")
	if err != nil || p == nil {
		t.Fatalf("Get: %v, %v", p, err)
	}
	if p.Domain != "example.com" || p.ID != "1" || p.Mode != Enforce || p.MaxAge != 24*time.Hour ||
		!slices.Equal(p.MX, []string{"mx1.example.com", "*.mx.example.com"}) {
		t.Errorf("policy: %+v", p)
	}
	if !p.Match("MX1.example.com.") || !p.Match("a.mx.example.com") || p.Match("mx2.example.com") {
		t.Error("Match does not apply the fetched patterns")
	}

	// Same id: the cached policy, no fetch.
	if _, err := f.Get(ctx, "example.com"); err != nil {
		t.Fatal(err)
	}
	if n := fx.https.fetches.Load(); n != 1 {
		t.Errorf("%d fetches for an unchanged id, want 1", n)
	}

	// A new id: fetched again.
	fx.dns.Set("_mta-sts.example.com", dnstest.TXT("_mta-sts.example.com", "v=STSv1; id=2"))
	fx.https.setPolicy("version: STSv1\nmode: testing\nmx: mx9.example.com\nmax_age: 600\n")
	p, err = f.Get(ctx, "example.com")
	if err != nil || p.ID != "2" || p.Mode != Testing || !p.Match("mx9.example.com") {
		t.Fatalf("after id change: %+v, %v", p, err)
	}
	if n := fx.https.fetches.Load(); n != 2 {
		t.Errorf("%d fetches after an id change, want 2", n)
	}
}

func TestGet_CacheSurvivesRestartAndOutlivesOutages(t *testing.T) {
	t.Parallel()
	fx := newFixture(t, policyV1)
	ctx := context.Background()
	if _, err := fx.fetcher(t).Get(ctx, "example.com"); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(fx.dir, "example.com.json")); err != nil {
		t.Fatalf("no cache file: %v", err)
	}

	// "Restart": a new Fetcher, the HTTPS server broken. Same id: the
	// policy comes from the file.
	fx.https.setHandler(func(w http.ResponseWriter, r *http.Request) { http.Error(w, "down", 500) })
	f := fx.fetcher(t)
	p, err := f.Get(ctx, "example.com")
	if err != nil || p == nil || p.Mode != Enforce || !p.Match("mx1.example.com") {
		t.Fatalf("after restart: %+v, %v", p, err)
	}
	if n := fx.https.fetches.Load(); n != 1 {
		t.Errorf("%d fetches, want 1 (the cached policy has the current id)", n)
	}

	// The id changes but the fetch fails: the cached policy stands, and
	// the failure is reported.
	fx.dns.Set("_mta-sts.example.com", dnstest.TXT("_mta-sts.example.com", "v=STSv1; id=3"))
	p, err = f.Get(ctx, "example.com")
	if p == nil || p.ID != "1" || err == nil || !strings.Contains(err.Error(), "500") {
		t.Errorf("failed refresh: %+v, %v; want the cached policy and the error", p, err)
	}

	// The TXT record disappears (an attacker blocking discovery): still
	// the cached policy (RFC 8461 §10.2).
	fx.dns.Set("_mta-sts.example.com")
	if p, err := f.Get(ctx, "example.com"); p == nil || err != nil {
		t.Errorf("TXT gone: %+v, %v; want the cached policy", p, err)
	}
	// DNS failing: the same.
	fx.dns.SetRcode("_mta-sts.example.com", 2)
	if p, err := f.Get(ctx, "example.com"); p == nil || err == nil {
		t.Errorf("SERVFAIL: %+v, %v; want the cached policy and the error", p, err)
	}
	fx.dns.Reset("_mta-sts.example.com")

	// After max_age the cache is gone: no record, no policy.
	fx.clock.Advance(24*time.Hour + time.Second)
	if p, err := f.Get(ctx, "example.com"); p != nil || !errors.Is(err, ErrNoPolicy) {
		t.Errorf("expired: %+v, %v; want no policy", p, err)
	}
}

func TestGet_NoPolicyWithoutValidRecord(t *testing.T) {
	t.Parallel()
	fx := newFixture(t, policyV1)
	ctx := context.Background()
	cases := map[string][]string{
		"two records": {"v=STSv1; id=1", "v=STSv1; id=2"},
		"bad id":      {"v=STSv1; id=no-dashes"},
		"no id":       {"v=STSv1;"},
		"long id":     {"v=STSv1; id=" + strings.Repeat("a", 33)},
	}
	for name, recs := range cases {
		fx.dns.Set("_mta-sts.example.com")
		for _, r := range recs {
			fx.dns.Add("_mta-sts.example.com", dnstest.TXT("_mta-sts.example.com", r))
		}
		p, err := fx.fetcher(t).Get(ctx, "example.com")
		if p != nil || err == nil {
			t.Errorf("%s: %+v, %v; want no policy and an error", name, p, err)
		}
	}
	fx.dns.Set("_mta-sts.example.com")
	if p, err := fx.fetcher(t).Get(ctx, "example.com"); p != nil || !errors.Is(err, ErrNoPolicy) {
		t.Errorf("no record: %+v, %v", p, err)
	}
	if n := fx.https.fetches.Load(); n != 0 {
		t.Errorf("%d fetches without a valid record", n)
	}
}

func TestGet_FetchFailuresGiveNoPolicy(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	cases := []struct {
		name    string
		names   []string // certificate names
		trusted bool
		handler http.HandlerFunc
		want    string
	}{
		{"untrusted CA", []string{"mta-sts.example.com"}, false, nil, "certificate"},
		{"wrong name", []string{"mta-sts.example.net"}, true, nil, "certificate"},
		{"redirect", []string{"mta-sts.example.com"}, true, func(w http.ResponseWriter, r *http.Request) {
			http.Redirect(w, r, "https://mta-sts.example.com/other", http.StatusFound)
		}, "redirect"},
		{"404", []string{"mta-sts.example.com"}, true, http.NotFound, "404"},
		{"html", []string{"mta-sts.example.com"}, true, func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Type", "text/html")
			w.Write([]byte(policyV1))
		}, "Content-Type"},
		{"too big", []string{"mta-sts.example.com"}, true, func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Type", "text/plain")
			w.Write([]byte(policyV1 + strings.Repeat("x: y\n", 20000)))
		}, "larger"},
		{"bad policy", []string{"mta-sts.example.com"}, true, func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Type", "text/plain")
			w.Write([]byte("version: STSv1\nmode: enforce\nmax_age: 10\n"))
		}, "no mx"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			fx := newFixture(t, policyV1)
			fx.https = newSTSServer(t, fx.ca, policyV1, c.names...)
			if c.handler != nil {
				fx.https.setHandler(c.handler)
			}
			f := fx.fetcher(t)
			if !c.trusted {
				f.HTTPClient = fx.https.client(testpki.NewCA(t).Pool)
			}
			p, err := f.Get(ctx, "example.com")
			if p != nil || err == nil || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("%+v, %v; want no policy and an error containing %q", p, err, c.want)
			}
			if _, err := os.Stat(filepath.Join(fx.dir, "example.com.json")); err == nil {
				t.Error("a failed fetch was cached")
			}
		})
	}
}

func TestGet_ConcurrentCallersShareOneFetch(t *testing.T) {
	t.Parallel()
	fx := newFixture(t, policyV1)
	release := make(chan struct{})
	arrived := make(chan struct{}, 1)
	fx.https.setHandler(func(w http.ResponseWriter, r *http.Request) {
		select {
		case arrived <- struct{}{}:
		default:
		}
		<-release
		w.Header().Set("Content-Type", "text/plain")
		w.Write([]byte(policyV1))
	})
	f := fx.fetcher(t)
	errs := make(chan error, 5)
	for range 5 {
		go func() {
			p, err := f.Get(context.Background(), "example.com")
			if err == nil && p == nil {
				err = errors.New("no policy")
			}
			errs <- err
		}()
	}
	// The fetch has reached the server: let it finish. Callers that come
	// later find the fetch in flight or its result cached.
	<-arrived
	close(release)
	for range 5 {
		if err := <-errs; err != nil {
			t.Error(err)
		}
	}
	if n := fx.https.fetches.Load(); n != 1 {
		t.Errorf("%d fetches for 5 concurrent callers, want 1", n)
	}
}

// Every domain mail goes to is looked up, and most have no policy: the
// domains held in memory are bounded (a relay writing to a million
// domains kept an entry for each, for good), and a policy dropped from
// memory is read again from Dir.
func TestGet_MemoryBounded(t *testing.T) {
	t.Parallel()
	fx := newFixture(t, policyV1)
	f := fx.fetcher(t)
	ctx := context.Background()
	if p, err := f.Get(ctx, "example.com"); p == nil || err != nil {
		t.Fatalf("example.com: %+v, %v", p, err)
	}
	noTXT := func(context.Context, string) ([]string, error) { return nil, nil }
	g := &Fetcher{LookupTXT: noTXT, Dir: f.Dir, Now: f.Now}
	if p, _ := g.Get(ctx, "example.com"); p == nil {
		t.Fatal("the policy was not stored in Dir")
	}
	for i := range 2*maxCached + 10 {
		g.Get(ctx, "d"+strconv.Itoa(i)+".test")
	}
	g.mu.Lock()
	n := len(g.policies)
	g.mu.Unlock()
	if n > maxCached {
		t.Errorf("%d domains in memory, want at most %d", n, maxCached)
	}
	if p, _ := g.Get(ctx, "example.com"); p == nil || p.Mode != Enforce {
		t.Errorf("example.com after the others: %+v, want its policy from Dir", p)
	}
}

// Prune deletes the cached policies whose max_age has passed, and stale
// temporary files, from Dir: nothing did, and a file stayed for every
// domain that ever published a policy (found by the leak black-box check:
// twenty domains with max_age 5 left twenty files for good). A valid
// policy stays, and a pruned domain's policy is fetched again.
func TestPrune_DeletesExpiredPolicies(t *testing.T) {
	t.Parallel()
	fx := newFixture(t, policyV1) // max_age 86400
	fx.clock.now = time.Now()     // the temporary files' times are the real clock's
	f := fx.fetcher(t)
	ctx := context.Background()
	if p, err := f.Get(ctx, "example.com"); p == nil || err != nil {
		t.Fatalf("example.com: %+v, %v", p, err)
	}
	f.store(&Policy{Domain: "old.example", ID: "1", Mode: Testing, MX: []string{"mx.old.example"},
		MaxAge: time.Hour, Fetched: fx.clock.Now().Add(-2 * time.Hour)})
	old := time.Now().Add(-2 * time.Hour)
	for name, mtime := range map[string]time.Time{".tmp-123": old, ".tmp-456": time.Now()} { // .tmp-456: being written
		p := filepath.Join(fx.dir, name)
		if err := os.WriteFile(p, []byte("{"), 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.Chtimes(p, mtime, mtime); err != nil {
			t.Fatal(err)
		}
	}

	if n := f.Prune(); n != 2 {
		t.Errorf("Prune deleted %d files, want 2", n)
	}
	for name, want := range map[string]bool{"example.com.json": true, "old.example.json": false, ".tmp-123": false, ".tmp-456": true} {
		_, err := os.Stat(filepath.Join(fx.dir, name))
		if there := err == nil; there != want {
			t.Errorf("%s: there = %v, want %v", name, there, want)
		}
	}
	if p, err := fx.fetcher(t).Get(ctx, "example.com"); p == nil || p.Mode != Enforce || err != nil {
		t.Errorf("example.com after Prune, from Dir: %+v, %v", p, err)
	}
	if n := f.Prune(); n != 0 {
		t.Errorf("second Prune deleted %d files", n)
	}
}
