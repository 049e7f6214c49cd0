package mime7bit

import (
	"io"
	"strings"
	"testing"
)

// benchMessage is a message of about 130 KiB: a header, then a multipart
// with a 64 KiB 8-bit text part and a 64 KiB ASCII one.
func benchMessage() string {
	var b strings.Builder
	b.WriteString("From: a@sender.test\r\nTo: b@example.test\r\nSubject: bench\r\nMIME-Version: 1.0\r\n")
	b.WriteString("Content-Type: multipart/mixed; boundary=\"b\"\r\n\r\n--b\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n")
	for b.Len() < 64<<10 {
		b.WriteString("Grüße aus Köln, = and a line of text that goes on for a while.\r\n")
	}
	b.WriteString("--b\r\nContent-Type: text/plain\r\n\r\n")
	for b.Len() < 128<<10 {
		b.WriteString("plain ascii text, seventy-odd octets long, as mail usually is.\r\n")
	}
	b.WriteString("--b--\r\n")
	return b.String()
}

// BenchmarkHas8bit scans a 128 KiB ASCII message to its end.
func BenchmarkHas8bit(b *testing.B) {
	r := strings.NewReader(strings.Repeat("plain ascii text, seventy-odd octets long, as mail usually is.\r\n", 2048))
	b.SetBytes(r.Size())
	for b.Loop() {
		if eight, err := Has8bit(r, r.Size()); eight || err != nil {
			b.Fatal(eight, err)
		}
	}
}

// BenchmarkConvert converts benchMessage and writes its 7-bit form.
func BenchmarkConvert(b *testing.B) {
	r := strings.NewReader(benchMessage())
	b.SetBytes(r.Size())
	for b.Loop() {
		c, err := Convert(r, r.Size())
		if err != nil || c == nil {
			b.Fatal(c, err)
		}
		if _, err := c.WriteTo(io.Discard); err != nil {
			b.Fatal(err)
		}
	}
}
