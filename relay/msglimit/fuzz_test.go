package msglimit

import (
	"bytes"
	"io"
	"testing"

	"github.com/mailhop/mailhop/relay/mailhdr"
)

// crlf makes every line end of b CRLF, as the Reader expects.
func crlf(b []byte) []byte {
	b = bytes.ReplaceAll(b, []byte("\r\n"), []byte("\n"))
	b = bytes.ReplaceAll(b, []byte("\r"), []byte("\n"))
	return bytes.ReplaceAll(b, []byte("\n"), []byte("\r\n"))
}

// chunkReader returns its data n bytes (at least 1) per Read.
type chunkReader struct {
	b []byte
	n int
}

func (r *chunkReader) Read(p []byte) (int, error) {
	if len(r.b) == 0 {
		return 0, io.EOF
	}
	n := min(len(p), r.n, len(r.b))
	copy(p, r.b[:n])
	r.b = r.b[n:]
	return n, nil
}

// FuzzReader: whether a message passes does not depend on how its data
// arrives (whole, or split anywhere, a CRLF included), the size limit is
// exact, and a message passed has no line over the line limit.
func FuzzReader(f *testing.F) {
	f.Add([]byte("Subject: x\r\n\r\nbody\r\n"), uint16(0), uint8(0), uint16(0), uint8(1))
	f.Add([]byte("X-Big: aaaaaaaaaaaaaaa\r\n continued\r\nno colon\r\nY: z\r\n"), uint16(30), uint8(10), uint16(40), uint8(3))
	f.Add([]byte("X :\r\n\r\n"), uint16(4), uint8(3), uint16(5), uint8(2))
	f.Fuzz(func(t *testing.T, msg []byte, size uint16, line uint8, header uint16, chunk uint8) {
		msg = crlf(msg)
		lim := Limits{MaxMessageSize: int64(size), MaxLineLength: int(line), MaxHeaderSize: int(header)}
		run := func(n int) *Error {
			r := NewReader(&chunkReader{msg, n}, lim)
			if _, err := io.Copy(io.Discard, r); err != nil && r.Err() == nil {
				t.Fatalf("error %v without Err", err)
			}
			return r.Err()
		}
		whole, split := run(len(msg)+1), run(int(chunk)%7+1)
		// Which of two broken limits is met first may differ.
		if (whole == nil) != (split == nil) {
			t.Fatalf("limits %+v, %q: whole %v, in chunks of %d %v", lim, msg, whole, int(chunk)%7+1, split)
		}
		if size > 0 && int64(len(msg)) > int64(size) && whole == nil {
			t.Fatalf("%d octets passed %+v", len(msg), lim)
		}
		if split != nil && split.Key == KeyMaxMessageSize && (size == 0 || int64(len(msg)) <= int64(size)) {
			t.Fatalf("%d octets refused by %+v", len(msg), lim)
		}
		if whole == nil && line > 0 {
			for _, l := range bytes.Split(msg, []byte("\r\n")) {
				if len(l) > int(line) {
					t.Fatalf("line of %d octets passed %+v", len(l), lim)
				}
			}
		}
	})
}

// FuzzHeaderSize: the header the Reader measures is the one
// mailhdr.HeaderEnd finds (what the relay queues as the header): a limit of
// exactly its size passes, one octet less is refused.
func FuzzHeaderSize(f *testing.F) {
	f.Add([]byte("Subject: x\r\n continued\r\nX :y\r\n\r\nbody\r\n"))
	f.Add([]byte("A: 1\r\nno colon\r\nB: 2\r\n"))
	f.Add([]byte(" x: y\r\n"))
	f.Fuzz(func(t *testing.T, msg []byte) {
		msg = crlf(msg)
		end := mailhdr.HeaderEnd(msg)
		if end == 0 {
			return
		}
		check := func(max int) *Error {
			r := NewReader(bytes.NewReader(msg), Limits{MaxHeaderSize: max})
			io.Copy(io.Discard, r)
			return r.Err()
		}
		if err := check(end); err != nil {
			t.Fatalf("%q: header of %d octets refused at %d: %v", msg, end, end, err)
		}
		if err := check(end - 1); err == nil {
			t.Fatalf("%q: header of %d octets passed at %d", msg, end, end-1)
		}
	})
}
