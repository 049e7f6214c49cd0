// Package testmime is what the tests of the 7-bit downgrade share, those of
// the conversion (relay/mime7bit) and those of delivery to a server without
// 8BITMIME (relay/outbound): an 8-bit MIME message, and a walker that
// decodes the parts of what the conversion made of it.
package testmime

import (
	"io"
	"mime"
	"mime/multipart"
	"mime/quotedprintable"
	"net/mail"
	"strings"
	"testing"
)

// Mixed8bit is a multipart/mixed message: an 8-bit text part without a
// transfer encoding, a 7-bit part, and a nested multipart/alternative whose parts
// are labelled 8bit (one 8-bit, one not).
const Mixed8bit = "From: a@sender.test\r\n" +
	"To: b@example.test\r\n" +
	"Subject: =?utf-8?q?gr=C3=BC=C3=9Fe?=\r\n" +
	"MIME-Version: 1.0\r\n" +
	"Content-Type: multipart/mixed; boundary=\"outer\"\r\n" +
	"Content-Transfer-Encoding: 8bit\r\n" +
	"\r\n" +
	"This is a MIME message.\r\n" +
	"--outer\r\n" +
	"Content-Type: text/plain; charset=utf-8\r\n" +
	"\r\n" +
	"Grüße aus Köln, = and a trailing space \r\n" +
	".a line with a dot\r\n" +
	"--outer\r\n" +
	"Content-Type: text/plain\r\n" +
	"\r\n" +
	"plain ascii = stays as it is\r\n" +
	"--outer\r\n" +
	"Content-Type: multipart/alternative; boundary=inner\r\n" +
	"\r\n" +
	"--inner\r\n" +
	"Content-Type: text/plain; charset=iso-8859-1\r\n" +
	"Content-Transfer-Encoding: 8bit\r\n" +
	"\r\n" +
	"caf\xe9\r\n" +
	"--inner\r\n" +
	"Content-Type: text/html\r\n" +
	"Content-Transfer-Encoding: 8BIT\r\n" +
	"\r\n" +
	"<p>ascii only</p>\r\n" +
	"--inner--\r\n" +
	"\r\n" +
	"--outer--\r\n" +
	"epilogue\r\n"

// Parts walks a MIME entity and returns every leaf's content type,
// transfer encoding and decoded content, in order.
func Parts(t *testing.T, h mail.Header, body io.Reader) [][3]string {
	t.Helper()
	mt, params, err := mime.ParseMediaType(h.Get("Content-Type"))
	if err != nil {
		mt = "text/plain"
	}
	if strings.HasPrefix(mt, "multipart/") {
		var out [][3]string
		mr := multipart.NewReader(body, params["boundary"])
		for {
			p, err := mr.NextRawPart()
			if err == io.EOF {
				return out
			}
			if err != nil {
				t.Fatalf("multipart: %v", err)
			}
			out = append(out, Parts(t, mail.Header(p.Header), p)...)
		}
	}
	cte := strings.ToLower(h.Get("Content-Transfer-Encoding"))
	var r io.Reader = body
	if cte == "quoted-printable" {
		r = quotedprintable.NewReader(body)
	}
	b, err := io.ReadAll(r)
	if err != nil {
		t.Fatalf("reading a %s part: %v", mt, err)
	}
	return [][3]string{{mt, cte, string(b)}}
}

// Is7bit reports whether b holds no octet above 127, byte by byte: the
// tests' own check, apart from mime7bit.IsASCII.
func Is7bit(b []byte) bool {
	for _, c := range b {
		if c >= 0x80 {
			return false
		}
	}
	return true
}
