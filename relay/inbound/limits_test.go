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

// The AUTH failure records are bounded: failures from ever new clients
// (malformed AUTHs cost no password check; an IPv6 /32 holds four billion
// /64s) cannot grow them past maxAuthRecords. What is evicted is never a
// record with a check under way or waiting (end must find the reservation
// and wake the waiter), and blocked addresses are kept over the flood's
// single failures. Before, the records grew by one per new client for as
// long as the failures came faster than auth_block_time.
func TestAuthFailures_Bounded(t *testing.T) {
	var f authFailures
	now := time.Now()
	const block, maxFails = 10 * time.Minute, 3
	blocked := netip.MustParseAddr("192.0.2.1")
	checking := netip.MustParseAddr("192.0.2.2")
	waiting := netip.MustParseAddr("192.0.2.3")
	for range maxFails {
		f.fail(blocked, now, block, maxFails)
	}
	if ok, _ := f.begin(checking, now, block, maxFails); !ok {
		t.Fatal("no check reserved")
	}
	for range maxFails {
		if ok, _ := f.begin(waiting, now, block, maxFails); !ok {
			t.Fatal("no check reserved")
		}
	}
	_, wake := f.begin(waiting, now, block, maxFails)
	if wake == nil {
		t.Fatal("a check past the limit was not told to wait")
	}

	flood := maxAuthRecords + maxAuthRecords/2
	for i := range flood {
		// Each a /64 of its own in 2001:db8::/32, one malformed AUTH
		// each, later than the block.
		ip := netip.AddrFrom16([16]byte{0x20, 0x01, 0x0d, 0xb8, byte(i >> 24), byte(i >> 16), byte(i >> 8), byte(i), 15: 1})
		later := now.Add(time.Duration(i+1) * time.Millisecond)
		if n := f.fail(ip, later, block, maxFails); n != 1 {
			t.Fatalf("a new client's failure counted as %d", n)
		}
		if len(f.m) > maxAuthRecords {
			t.Fatalf("%d records after %d clients failed, limit %d", len(f.m), i+1, maxAuthRecords)
		}
	}
	end := now.Add(time.Duration(flood) * time.Millisecond)
	if !f.blocked(blocked, end) {
		t.Error("an address blocked before the flood is no longer blocked")
	}
	if r := f.m[clientKey(checking)]; r == nil || r.checking != 1 {
		t.Errorf("the record of a check under way was evicted: %+v", r)
	}
	for range maxFails {
		f.end(waiting, end, block, maxFails, true)
	}
	select {
	case <-wake:
	default:
		t.Fatal("the check waiting before the flood was not woken when the checks it waited for ended")
	}
	if !f.blocked(waiting, end) {
		t.Error("the failures of checks under way during the flood were not counted")
	}
}

// What the bound evicts first: addresses not blocked, fewest failures
// first, then the soonest expiring; blocked addresses last.
func TestAuthFailures_EvictionOrder(t *testing.T) {
	f := authFailures{limit: 10}
	now := time.Now()
	const block, maxFails = time.Hour, 5
	ip := func(i int) netip.Addr { return netip.AddrFrom4([4]byte{198, 51, 100, byte(i)}) }
	at := func(i int) time.Time { return now.Add(time.Duration(i) * time.Second) }
	// 1: blocked first of all (expires soonest); 2: four failures, early;
	// 3..10: one failure each, in order.
	for range maxFails {
		f.fail(ip(1), at(0), block, maxFails)
	}
	for range 4 {
		f.fail(ip(2), at(1), block, maxFails)
	}
	for i := 3; i <= 10; i++ {
		f.fail(ip(i), at(i), block, maxFails)
	}
	// Each new record past 10 makes room: down to nine tenths (one goes),
	// then it is added.
	for i := 11; i <= 13; i++ {
		f.fail(ip(i), at(i), block, maxFails)
		if len(f.m) != 10 {
			t.Fatalf("%d records, want 10", len(f.m))
		}
	}
	for i, want := range map[int]bool{1: true, 2: true, 3: false, 4: false, 5: false, 6: true, 13: true} {
		if _, kept := f.m[ip(i)]; kept != want {
			t.Errorf("record %d kept = %v, want %v", i, kept, want)
		}
	}
	// Only blocked ones left to evict: the soonest unblocked goes first.
	g := authFailures{limit: 10}
	for i := 1; i <= 12; i++ {
		for range maxFails {
			g.fail(ip(i), at(i), block, maxFails)
		}
	}
	for i, want := range map[int]bool{1: false, 2: false, 3: true, 10: true, 12: true} {
		if _, kept := g.m[ip(i)]; kept != want {
			t.Errorf("blocked record %d kept = %v, want %v", i, kept, want)
		}
	}
}
