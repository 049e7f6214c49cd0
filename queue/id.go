package queue

import (
	"encoding/base32"
	"encoding/binary"
	"math/rand/v2"
	"sync"
	"time"
)

// Queue IDs are 16 characters of base32hex ("0"–"9", "A"–"V"): 13 for a
// microsecond timestamp that never repeats within a process and never goes
// below an ID already queued, then 3 random ones. They sort by arrival and
// are safe as file names.
var idEncoding = base32.HexEncoding.WithPadding(base32.NoPadding)

const idLen = 16

// idGen makes queue IDs.
type idGen struct {
	mu   sync.Mutex
	last uint64 // microseconds of the last ID
	now  func() time.Time
}

// observe makes later IDs sort after id.
func (g *idGen) observe(id string) {
	if t, ok := idTime(id); ok {
		g.mu.Lock()
		if t > g.last {
			g.last = t
		}
		g.mu.Unlock()
	}
}

func (g *idGen) next() string {
	g.mu.Lock()
	t := uint64(g.now().UnixMicro())
	if t <= g.last {
		t = g.last + 1
	}
	g.last = t
	g.mu.Unlock()
	var b [10]byte
	binary.BigEndian.PutUint64(b[:8], t)
	r := rand.Uint32()
	b[8], b[9] = byte(r), byte(r>>8)
	// 8 bytes of time are 12.8 characters: the 13th carries the time's last
	// bit and random bits; the ID is cut to 16.
	return idEncoding.EncodeToString(b[:])[:idLen]
}

// idTime returns the timestamp inside an ID.
func idTime(id string) (uint64, bool) {
	if !validID(id) {
		return 0, false
	}
	b, err := idEncoding.DecodeString(id)
	if err != nil || len(b) < 8 {
		return 0, false
	}
	return binary.BigEndian.Uint64(b[:8]), true
}

// validID reports whether id has the shape of a queue ID (and so is safe as
// a file name).
func validID(id string) bool {
	if len(id) != idLen {
		return false
	}
	for i := 0; i < len(id); i++ {
		c := id[i]
		if !(c >= '0' && c <= '9' || c >= 'A' && c <= 'V') {
			return false
		}
	}
	return true
}
