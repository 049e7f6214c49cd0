package inbound

import (
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"golang.org/x/crypto/bcrypt"

	"github.com/mailhop/mailhop/relay/config"
)

// An unknown user's password must be compared at the cost of the real
// hashes: with a fixed dummy cost (bcrypt.DefaultCost, 10) and users hashed
// at cost 4, an unknown name answered about 64 times slower than a known
// one with a wrong password.
func TestUnknownUser_ComparedAtTheUsersCost(t *testing.T) {
	hash := func(cost int) string {
		h, err := bcrypt.GenerateFromPassword([]byte("pw"), cost)
		if err != nil {
			t.Fatal(err)
		}
		return string(h)
	}
	h4, h5 := hash(4), hash(5)
	users := func(hashes ...string) []config.User {
		var us []config.User
		for _, h := range hashes {
			us = append(us, config.User{Name: "u", PasswordHash: h})
		}
		return us
	}
	for _, c := range []struct {
		name  string
		users []config.User
		want  int
	}{
		{"no users", nil, bcrypt.DefaultCost},
		{"one user", users(h4), 4},
		{"most common cost", users(h4, h5, h4), 4},
		{"tie: the higher cost", users(h4, h5), 5},
		{"unparsable hash ignored", users("not a hash", h5), 5},
	} {
		if got := usualCost(c.users); got != c.want {
			t.Errorf("%s: usualCost = %d, want %d", c.name, got, c.want)
		}
	}
	for _, cost := range []int{4, 5} {
		if got, err := bcrypt.Cost(dummyHash(cost)); err != nil || got != cost {
			t.Errorf("dummyHash(%d) has cost %d (%v)", cost, got, err)
		}
	}
	// The unknown user's compare costs what a known user's does (the
	// difference without this is 2^(10-5) = 32 times).
	timeOf := func(hash string) time.Duration {
		var ds []time.Duration
		for i := 0; i < 5; i++ {
			t0 := time.Now()
			checkPassword(hash, "wrong", 5)
			ds = append(ds, time.Since(t0))
		}
		slices.Sort(ds)
		return ds[len(ds)/2]
	}
	checkPassword("", "warm up the dummy hash", 5)
	known, unknown := timeOf(h5), timeOf("")
	if unknown > 4*known || known > 4*unknown {
		t.Errorf("median compare: unknown user %v, known user %v", unknown, known)
	}
	if checkPassword("", "mailhop dummy password", 4) {
		t.Errorf("an unknown user authenticated with the dummy password")
	}
	if !checkPassword(h4, "pw", 4) || checkPassword(h4, "wrong", 4) {
		t.Errorf("checkPassword with a real hash is wrong")
	}
}

// A connection opened before its address was blocked must not go on
// guessing: its AUTH is refused with 421 without the password being
// checked, the right password included. Before, every connection the
// client held open (up to max_connections_per_ip) got one more guess
// checked after the block, and a right guess was answered 235.
func TestAuth_BlockedAddressRefusedOnOpenConnections(t *testing.T) {
	ts := startServer(t, func(c *config.Config) { c.Limits.MaxAuthFailures = 3 })
	addr := ts.addr[config.ModeSubmissions]
	open := func() *dialog {
		d := dialTLS(t, addr)
		d.script("S: 220 ", "C: EHLO client.test", "S: 250 ")
		return d
	}
	guesser, waiting := open(), open()
	wrong := "AUTH PLAIN " + plainIR("alice", "wrong")
	guesser.script("C: "+wrong, "S: 535 5.7.8 ", "C: "+wrong, "S: 535 5.7.8 ", "C: "+wrong, "S: 421 4.7.0 ")
	waiting.script("C: AUTH PLAIN "+plainIR("alice", testPassword), "S: 421 4.7.0 ")
	if !waiting.closed() {
		t.Error("the connection is still open after its AUTH was refused")
	}
	if n := strings.Count(ts.logs.String(), `msg="auth failed"`); n != 4 {
		t.Errorf("%d auth failed lines, want 3 failures and 1 refusal:\n%s", n, ts.logs.String())
	}
	if !strings.Contains(ts.logs.String(), `reason="address blocked"`) {
		t.Errorf("the refusal is not logged with its reason:\n%s", ts.logs.String())
	}
}

// The password checks under way count toward the limit: with 3 allowed
// failures, a 4th check is not started while 3 are running (each could
// fail), so guesses sent at once on many connections cannot outrun the
// counter. A successful check frees its place.
func TestAuthFailures_ChecksUnderWayCount(t *testing.T) {
	var f authFailures
	a := netip.MustParseAddr("192.0.2.1")
	now := time.Now()
	for i := range 3 {
		if !f.begin(a, now, time.Minute, 3) {
			t.Fatalf("check %d refused", i+1)
		}
	}
	if f.begin(a, now, time.Minute, 3) {
		t.Fatal("a 4th check started while 3 were under way, with 3 failures allowed")
	}
	if n := f.end(a, now, time.Minute, 3, false); n != 0 {
		t.Errorf("a successful check counted: %d failures", n)
	}
	if !f.begin(a, now, time.Minute, 3) {
		t.Fatal("no check started after one ended well")
	}
	for i := range 3 {
		if n := f.end(a, now, time.Minute, 3, true); n != i+1 {
			t.Errorf("failure %d counted as %d", i+1, n)
		}
	}
	if !f.blocked(a, now) || f.begin(a, now, time.Minute, 3) {
		t.Error("the address is not blocked after 3 failures")
	}
}
