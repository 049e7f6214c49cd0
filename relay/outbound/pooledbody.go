package outbound

import (
	"bytes"
	"sync"

	"github.com/mailhop/mailhop/queue"
)

// smallBody is the largest message an attempt reads into memory at its
// start. Most mail is smaller; one read then serves the header scan, the
// 8-bit scan and every transaction of the attempt, where each of those read
// the queue's file again (three reads of a 10 KiB message), and the
// queue's segment is free of this reader (for recycling) at once.
const smallBody = 64 << 10

var bodyBufs = sync.Pool{New: func() any { b := make([]byte, smallBody); return &b }}

// pooledBody is a stored message read into a pooled buffer; Close returns the
// buffer, so nothing may read it after.
type pooledBody struct {
	*bytes.Reader
	buf *[]byte
}

// Close returns the buffer to its pool.
func (b *pooledBody) Close() error {
	if b.buf != nil {
		bodyBufs.Put(b.buf)
		b.buf = nil
		b.Reader = bytes.NewReader(nil)
	}
	return nil
}

// inMemory returns body read into memory and closes body, when it is at
// most smallBody bytes and reads whole; otherwise body itself.
func inMemory(body queue.Body) queue.Body {
	size := body.Size()
	if size > smallBody {
		return body
	}
	bp := bodyBufs.Get().(*[]byte)
	buf := (*bp)[:size]
	if n, _ := body.ReadAt(buf, 0); int64(n) != size {
		bodyBufs.Put(bp)
		return body // read as before, to its error
	}
	body.Close()
	return &pooledBody{Reader: bytes.NewReader(buf), buf: bp}
}
