package mailhdr

import (
	"crypto/rand"
	"encoding/hex"
)

// Token returns n (at most 32) random bytes in hex: the unique part of a
// Message-ID or a MIME boundary the relay writes.
func Token(n int) string {
	var b [32]byte
	p := b[:min(n, len(b))]
	rand.Read(p)
	return hex.EncodeToString(p)
}
