package inbound

import (
	"net/netip"
	"testing"
	"time"
)

// One IPv6 client owns a whole /64: the per-address limits must count it
// as one, or it could open 2^64 times the connections and AUTH guesses.
func TestLimits_IPv6CountedPer64(t *testing.T) {
	a := netip.MustParseAddr("2001:db8:1:2::1")
	sameSite := netip.MustParseAddr("2001:db8:1:2:ffff:ffff:ffff:fffe")
	otherSite := netip.MustParseAddr("2001:db8:1:3::1")
	v4a, v4b := netip.MustParseAddr("192.0.2.1"), netip.MustParseAddr("192.0.2.2")

	var l connLimits
	if !l.acquire(a, 0, 1) {
		t.Fatal("first connection refused")
	}
	if l.acquire(sameSite, 0, 1) {
		t.Errorf("a second connection from the same /64 was allowed over a limit of 1 per client")
	}
	if !l.acquire(otherSite, 0, 1) {
		t.Errorf("a connection from another /64 was refused")
	}
	if !l.acquire(v4a, 0, 1) || !l.acquire(v4b, 0, 1) {
		t.Errorf("IPv4 addresses are separate clients")
	}
	l.release(sameSite) // frees the slot a took: same client
	if !l.acquire(a, 0, 1) {
		t.Errorf("slot not freed by a release from the same /64")
	}
	if n := len(l.perIP); n != 4 {
		t.Errorf("%d clients counted, want 4", n)
	}

	var f authFailures
	now := time.Now()
	for i := 0; i < 3; i++ {
		f.fail(a, now, time.Minute, 3)
	}
	if !f.blocked(sameSite, now) {
		t.Errorf("another address of the blocked /64 is not blocked")
	}
	if f.blocked(otherSite, now) || f.blocked(v4a, now) {
		t.Errorf("a different client is blocked")
	}
	f.fail(v4a, now, time.Minute, 3)
	if n := f.fail(v4b, now, time.Minute, 3); n != 1 {
		t.Errorf("IPv4 failures shared between addresses: %d", n)
	}
}

// A connection counted without an address (a trusted client) takes a slot
// of the total only: its /64's neighbours keep their own limit.
func TestLimits_TrustedNotCountedPerAddress(t *testing.T) {
	var l connLimits
	for range 3 {
		if !l.acquire(netip.Addr{}, 10, 1) {
			t.Fatal("an uncounted connection was refused")
		}
	}
	if !l.acquire(netip.MustParseAddr("2001:db8:1:2::1"), 10, 1) {
		t.Error("a neighbour was refused because of uncounted connections")
	}
	if l.open() != 4 || len(l.perIP) != 1 {
		t.Errorf("total %d, per-address entries %d; want 4 and 1", l.open(), len(l.perIP))
	}
	l.release(netip.Addr{})
	if l.open() != 3 || len(l.perIP) != 1 {
		t.Errorf("after a release: total %d, per-address entries %d", l.open(), len(l.perIP))
	}
}

// A client whose last failure is older than the block time starts
// counting again, whether or not its record was swept meanwhile.
func TestAuthFailures_StaleRecordStartsAgain(t *testing.T) {
	var f authFailures
	a := netip.MustParseAddr("192.0.2.1")
	now := time.Now()
	f.fail(a, now, time.Minute, 3)
	f.fail(a, now, time.Minute, 3)
	if n := f.fail(a, now.Add(2*time.Minute), time.Minute, 3); n != 1 {
		t.Errorf("failure after the block time counted as %d, want 1", n)
	}
	if f.blocked(a, now.Add(2*time.Minute)) {
		t.Error("blocked by failures older than the block time")
	}
}

// BenchmarkAuthFailures_ManyClients: failed logins from ever new
// addresses (IPv4, or IPv6 /64s) cost the same however many records
// there are; each failure swept the whole map before.
func BenchmarkAuthFailures_ManyClients(b *testing.B) {
	var f authFailures
	now := time.Now()
	for i := 0; b.Loop(); i++ {
		ip := netip.AddrFrom4([4]byte{10, byte(i >> 16), byte(i >> 8), byte(i)})
		f.fail(ip, now, time.Hour, 10)
	}
}
