package mime7bit

import (
	"bytes"
	"errors"
	"net/mail"
	"strings"
	"testing"

	"github.com/mailhop/mailhop/internal/testmime"
)

// newMemBody is a stored message over s.
func newMemBody(s string) *strings.Reader { return strings.NewReader(s) }

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
	got := testmime.Parts(t, msg.Header, msg.Body)
	if len(got) != 1 || got[0][2] != long {
		t.Errorf("long line not kept")
	}
}

// FuzzTo7bit: whatever the message, Convert does not panic, and a
// conversion it returns is 7-bit, as long as it says, and the same each
// time it is written.
func FuzzTo7bit(f *testing.F) {
	f.Add(testmime.Mixed8bit)
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
		if !testmime.Is7bit(out1.Bytes()) {
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
