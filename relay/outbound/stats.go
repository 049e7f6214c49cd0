package outbound

import (
	"bytes"
	"io"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/mailhop/mailhop/relay/mailhdr"
)

// Stats is a snapshot of the agent's counters since New, for metrics.
type Stats struct {
	Delivered    uint64        // recipients delivered
	Deferred     uint64        // recipient attempts left pending
	Bounced      uint64        // recipients failed (including expired)
	TLSConns     uint64        // outbound connections that used TLS
	Attempts     uint64        // domain-group attempts
	AttemptTotal time.Duration // summed duration of those attempts
	IdleConns    int           // connections kept for reuse now
}

type counters struct {
	delivered, deferred, bounced, tlsConns, attempts atomic.Uint64
	attemptNanos                                     atomic.Int64
}

// Stats returns the current counters.
func (a *Agent) Stats() Stats {
	return Stats{
		Delivered:    a.stats.delivered.Load(),
		Deferred:     a.stats.deferred.Load(),
		Bounced:      a.stats.bounced.Load(),
		TLSConns:     a.stats.tlsConns.Load(),
		Attempts:     a.stats.attempts.Load(),
		AttemptTotal: time.Duration(a.stats.attemptNanos.Load()),
		IdleConns:    a.pool.size(),
	}
}

// storedHeader is what delivery reads from a stored message's header.
type storedHeader struct {
	received    int    // Received fields, for loop detection
	messageID   string // for the log
	tlsOptional bool   // TLS-Required: No (RFC 8689 §5)
}

// storedHeaderBlock is mailhdr.Block for a message as the queue stores it
// (CRLF line ends): usually one read of the first 8 KiB, no allocation for
// a buffered reader.
func storedHeaderBlock(b interface {
	io.ReaderAt
	Size() int64
}, buf []byte) []byte {
	buf = buf[:min(b.Size(), int64(len(buf)))]
	n, _ := b.ReadAt(buf, 0)
	buf = buf[:n]
	switch i := bytes.Index(buf, []byte("\r\n\r\n")); {
	case bytes.HasPrefix(buf, []byte("\r\n")):
		return nil
	case i >= 0:
		return buf[:i+2]
	case int64(n) == b.Size():
		return buf // the whole message is header
	}
	return mailhdr.Block(b, b.Size())
}

// headBufs are the buffers stored headers are read into.
var headBufs = sync.Pool{New: func() any { b := make([]byte, 8<<10); return &b }}

// scanStored reads a stored message's header once.
func scanStored(b interface {
	io.ReaderAt
	Size() int64
}) storedHeader {
	var h storedHeader
	bp := headBufs.Get().(*[]byte)
	defer headBufs.Put(bp)
	mailhdr.Fields(storedHeaderBlock(b, *bp), func(name, value []byte) bool {
		switch {
		case mailhdr.Is(name, "Received"):
			h.received++
		case h.messageID == "" && mailhdr.Is(name, "Message-ID"):
			h.messageID = mailhdr.Unfold(value)
			if len(h.messageID) > 200 {
				h.messageID = h.messageID[:200]
			}
		case mailhdr.Is(name, "TLS-Required"):
			h.tlsOptional = strings.EqualFold(mailhdr.Unfold(value), "no")
		}
		return true
	})
	return h
}
