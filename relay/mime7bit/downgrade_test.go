package mime7bit

import (
	"bytes"
	"errors"
	"io"
	"mime"
	"mime/multipart"
	"mime/quotedprintable"
	"net/mail"
	"strings"
	"testing"
)

// newMemBody is a stored message over s.
func newMemBody(s string) *bytes.Reader { return bytes.NewReader([]byte(s)) }

// A multipart/mixed message: an 8-bit text part without a transfer
// encoding, a 7-bit part, and a nested multipart/alternative whose parts
// are labelled 8bit (one 8-bit, one not).
const mixed8bit = "From: a@sender.test\r\n" +
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

// parts walks a MIME entity and returns every leaf's content type,
// transfer encoding and decoded content, in order.
func parts(t *testing.T, h mail.Header, body io.Reader) [][3]string {
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
			out = append(out, parts(t, mail.Header(p.Header), p)...)
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

func is7bit(b []byte) bool {
	for _, c := range b {
		if c >= 0x80 {
			return false
		}
	}
	return true
}

// TestTo7bit checks conversions of bodies that need no server.
func TestTo7bit(t *testing.T) {
	for _, tc := range []struct {
		name, in, want string
		unconvertible  bool
	}{
		{name: "7-bit: nothing to do", in: "Subject: x\r\n\r\nhello\r\n", want: ""},
		{name: "digest part defaults to message/rfc822", unconvertible: true,
			in: "Content-Type: multipart/digest; boundary=d\r\n\r\n--d\r\n\r\nSubject: x\r\n\r\nGrüße\r\n--d--\r\n"},
		{name: "8-bit preamble", unconvertible: true,
			in: "Content-Type: multipart/mixed; boundary=d\r\n\r\nGrüße\r\n--d\r\n\r\nx\r\n--d--\r\n"},
		{name: "multipart without boundary", unconvertible: true,
			in: "Content-Type: multipart/mixed\r\n\r\nGrüße\r\n"},
		{name: "delimiter with padding, part without header",
			in:   "MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=d\r\n\r\n--d \t\r\n\r\n\xe9\r\n--d-- \r\n",
			want: "MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=d\r\n\r\n--d \t\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\n=E9\r\n--d-- \r\n"},
		{name: "message/global-headers may be encoded (RFC 6533 §6.3)",
			in:   "MIME-Version: 1.0\r\nContent-Type: multipart/report; boundary=d\r\n\r\n--d\r\nContent-Type: message/global-headers\r\n\r\nSubject: \xc3\xa9\r\n--d--\r\n",
			want: "MIME-Version: 1.0\r\nContent-Type: multipart/report; boundary=d\r\n\r\n--d\r\nContent-Type: message/global-headers\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\nSubject: =C3=A9\r\n--d--\r\n"},
		{name: "message/rfc822 may not", unconvertible: true,
			in: "MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=d\r\n\r\n--d\r\nContent-Type: message/rfc822\r\n\r\nSubject: \xc3\xa9\r\n--d--\r\n"},
		{name: "unclosed multipart",
			in:   "MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=d\r\n\r\n--d\r\nContent-Type: text/plain\r\n\r\n\xe9",
			want: "MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=d\r\n\r\n--d\r\nContent-Type: text/plain\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\n=E9"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b := newMemBody(tc.in)
			c, err := Convert(b, b.Size())
			var ue *UnconvertibleError
			if tc.unconvertible {
				if !errors.As(err, &ue) {
					t.Fatalf("Convert = %v, %v; want unconvertible", c, err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if tc.want == "" {
				if c != nil {
					t.Errorf("a 7-bit message was converted")
				}
				return
			}
			var out bytes.Buffer
			if n, err := c.WriteTo(&out); err != nil || n != c.size {
				t.Fatalf("WriteTo = %d, %v; size %d", n, err, c.size)
			}
			if out.String() != tc.want {
				t.Errorf("got\n%q\nwant\n%q", out.String(), tc.want)
			}
		})
	}
}

// TestTo7bit_LongLines: a line longer than the reader's buffer is read in
// pieces, its 8-bit octets found anywhere in it.
func TestTo7bit_LongLines(t *testing.T) {
	long := strings.Repeat("a", 100<<10) + "\xe9" + strings.Repeat("b", 1000)
	in := "MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=d\r\n\r\n--d\r\n\r\n" + long + "\r\n--d--\r\n"
	b := newMemBody(in)
	c, err := Convert(b, b.Size())
	if err != nil || c == nil {
		t.Fatalf("Convert = %v, %v", c, err)
	}
	var out bytes.Buffer
	c.WriteTo(&out)
	msg, err := mail.ReadMessage(&out)
	if err != nil {
		t.Fatal(err)
	}
	got := parts(t, msg.Header, msg.Body)
	if len(got) != 1 || got[0][2] != long {
		t.Errorf("long line not kept")
	}
}

// FuzzTo7bit: whatever the message, Convert does not panic, and a
// conversion it returns is 7-bit, as long as it says, and the same each
// time it is written.
func FuzzTo7bit(f *testing.F) {
	f.Add(mixed8bit)
	f.Add("Subject: x\r\n\r\nGrüße\r\n")
	f.Add("Content-Type: multipart/mixed; boundary=a\r\n\r\n--a\r\nContent-Type: multipart/alternative; boundary=b\r\n\r\n--b\r\n\r\n\xe9\r\n--a--\r\n")
	f.Add("Content-Type: multipart/digest; boundary=d\r\n\r\n--d\r\n\r\nx\r\n--d--\r\n\xff")
	f.Fuzz(func(t *testing.T, in string) {
		b := newMemBody(in)
		c, err := Convert(b, b.Size())
		if err != nil || c == nil {
			return
		}
		var out1, out2 bytes.Buffer
		if _, err := c.WriteTo(&out1); err != nil {
			t.Fatal(err)
		}
		c.WriteTo(&out2)
		if int64(out1.Len()) != c.size || !bytes.Equal(out1.Bytes(), out2.Bytes()) {
			t.Fatalf("size %d, wrote %d and %d bytes", c.size, out1.Len(), out2.Len())
		}
		if !is7bit(out1.Bytes()) {
			t.Fatalf("8-bit output:\n%q", out1.Bytes())
		}
	})
}

// IsASCII finds an 8-bit octet wherever it is, in the words it reads
// eight at a time and in the tail.
func TestIsASCII(t *testing.T) {
	for n := 0; n <= 20; n++ {
		b := bytes.Repeat([]byte{'a'}, n)
		if !IsASCII(b) {
			t.Fatalf("%d ASCII octets: not ASCII", n)
		}
		for i := 0; i < n; i++ {
			c := bytes.Clone(b)
			c[i] = 0x80
			if IsASCII(c) {
				t.Errorf("0x80 at %d of %d: ASCII", i, n)
			}
		}
	}
}
