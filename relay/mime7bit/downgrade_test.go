package mime7bit

import (
	"bytes"
	"errors"
	"io"
	"mime"
	"mime/multipart"
	"mime/quotedprintable"
	"net/mail"
	"net/textproto"
	"slices"
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

// leaves walks msg as a receiver's MIME parser (Go's) reads it and returns
// each leaf's media type and decoded content; an error where that parser
// refuses it.
func leaves(msg []byte) ([][2]string, error) {
	m, err := mail.ReadMessage(bytes.NewReader(msg))
	if err != nil {
		return nil, err
	}
	var walk func(h textproto.MIMEHeader, body io.Reader, defType string, depth int) ([][2]string, error)
	walk = func(h textproto.MIMEHeader, body io.Reader, defType string, depth int) ([][2]string, error) {
		mt, params := defType, map[string]string(nil)
		if ct := h.Get("Content-Type"); ct != "" {
			var err error
			if mt, params, err = mime.ParseMediaType(ct); err != nil {
				mt = "text/plain"
			}
		}
		if strings.HasPrefix(mt, "multipart/") && depth < maxMIMEDepth {
			partType := "text/plain"
			if mt == "multipart/digest" {
				partType = "message/rfc822"
			}
			var out [][2]string
			mr := multipart.NewReader(body, params["boundary"])
			for {
				p, err := mr.NextRawPart()
				if err == io.EOF {
					return out, nil
				}
				if err != nil {
					return nil, err
				}
				l, err := walk(p.Header, p, partType, depth+1)
				if err != nil {
					return nil, err
				}
				out = append(out, l...)
			}
		}
		if strings.EqualFold(strings.TrimSpace(h.Get("Content-Transfer-Encoding")), "quoted-printable") {
			body = quotedprintable.NewReader(body)
		}
		b, err := io.ReadAll(body)
		return [][2]string{{mt, string(b)}}, err
	}
	return walk(textproto.MIMEHeader(m.Header), m.Body, "text/plain", 0)
}

// FuzzTo7bit: whatever the message, Convert does not panic, and a
// conversion it returns is 7-bit, as long as it says, and the same each
// time it is written. Of a message as queued (CRLF line ends), a receiver's
// MIME parser reads the same body parts in the conversion as in the
// original, each with the same content once decoded.
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
		// The same message with its line ends as the queue keeps them.
		queued := strings.NewReplacer("\r\n", "\r\n", "\r", "\r\n", "\n", "\r\n").Replace(in)
		b = newMemBody(queued)
		if c, err = Convert(b, b.Size()); err != nil || c == nil {
			return
		}
		var out bytes.Buffer
		c.WriteTo(&out)
		want, err := leaves([]byte(queued))
		if err != nil {
			return
		}
		got, err := leaves(out.Bytes())
		if err != nil {
			t.Fatalf("%q converted to %q, which does not parse: %v", queued, out.Bytes(), err)
		}
		if !slices.Equal(got, want) {
			t.Fatalf("%q converted to %q: parts %q, want %q", queued, out.Bytes(), got, want)
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
