package inbound

import (
	"slices"
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
