package msglimit

import (
	"errors"
	"io"
	"strings"
	"testing"
	"testing/iotest"
)

// TestHeaderLimit: the header-size limit as SMTP applies it, on CRLF data
// read whole or one byte at a time.
func TestHeaderLimit(t *testing.T) {
	big := "X-Big: " + strings.Repeat("a", 300) + "\r\n"
	for _, tc := range []struct {
		name string
		msg  string
		ok   bool
	}{
		{"small", "Subject: x\r\n\r\n" + strings.Repeat("body\r\n", 500), true},
		{"no header", "\r\n" + strings.Repeat("b", 5000), true},
		{"at the limit", strings.Repeat(big, 3) + "\r\nbody", true},
		{"over", strings.Repeat(big, 4) + "\r\nbody", false},
		{"never ends", strings.Repeat(big, 10), false},
		// Without the empty line the whole message is header.
		{"no empty line, at the limit", strings.Repeat(big, 3), true},
		{"no empty line, one over", strings.Repeat(big, 3) + "X", false},
		{"no empty line, two over", strings.Repeat(big, 3) + "X:", false},
		// Data that does not start with a header field is all body: the
		// relay queues it behind an empty line.
		{"text without header", strings.Repeat("plain text line\r\n", 500), true},
		{"text with a colon", strings.Repeat("hello world: no field\r\n", 500), true},
		{"continuation first", strings.Repeat(" folded\r\n", 500), true},
		{"field then text", "Subject: x\r\n" + strings.Repeat("plain text line\r\n", 500), false},
		{"long field name", strings.Repeat("a", 2000) + ": x\r\n" + strings.Repeat(big, 4), true},
	} {
		for _, oneByte := range []bool{false, true} {
			var r io.Reader = strings.NewReader(tc.msg)
			if oneByte {
				r = iotest.OneByteReader(r)
			}
			_, err := io.ReadAll(NewReader(r, Limits{MaxHeaderSize: 3 * len(big)}))
			var le *Error
			if tc.ok != (err == nil) || err != nil && !(errors.As(err, &le) && le.Key == KeyMaxHeaderSize) {
				t.Errorf("%s (one byte at a time: %v): %v", tc.name, oneByte, err)
			}
		}
	}
}
