package dnsmx

import (
	"errors"
	"net/netip"
	"sync"
	"testing"
	"time"

	"github.com/mailhop/mailhop/dnsmx/dnstest"
)

// testTimeout bounds one query to one server in tests. It is generous
// because a loopback answer can take hundreds of milliseconds on a loaded
// machine under -race; tests of the timeout itself set their own.
const testTimeout = 5 * time.Second

// newResolver returns a resolver that asks only srv.
func newResolver(t testing.TB, srv *dnstest.Server) *Resolver {
	t.Helper()
	r, err := NewResolver([]string{srv.Addr}, testTimeout)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// fakeClock is a clock tests move by hand.
type fakeClock struct {
	mu  sync.Mutex
	now time.Time
}

func newFakeClock() *fakeClock {
	return &fakeClock{now: time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC)}
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
}

// wantError checks that err is a *Error with the given classification.
func wantError(t *testing.T, err error, temporary bool, enhanced string) *Error {
	t.Helper()
	if err == nil {
		t.Fatalf("got no error, want %s (temporary=%v)", enhanced, temporary)
	}
	var e *Error
	if !errors.As(err, &e) {
		t.Fatalf("error %v (%T) is not a *dnsmx.Error", err, err)
	}
	if e.Temporary != temporary || e.Enhanced != enhanced {
		t.Fatalf("error %q: temporary=%v enhanced=%s, want temporary=%v enhanced=%s",
			err, e.Temporary, e.Enhanced, temporary, enhanced)
	}
	if IsTemporary(err) != temporary {
		t.Fatalf("IsTemporary(%v) = %v, want %v", err, !temporary, temporary)
	}
	return e
}

// hosts lists the Host of each MX.
func hosts(mxs []MX) []string {
	var out []string
	for _, m := range mxs {
		out = append(out, m.Host)
	}
	return out
}

func addrs(ss ...string) []netip.Addr {
	var out []netip.Addr
	for _, s := range ss {
		out = append(out, netip.MustParseAddr(s))
	}
	return out
}
