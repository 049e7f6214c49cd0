package admin

import (
	"bufio"
	"bytes"
	"io"
	"strings"
	"testing"
)

// FuzzEnvelopeLine: an injection's envelope line (from a local user, or a
// pickup file) never panics the reader; an envelope CheckEnvelope accepts
// has addresses, ORCPTs and an ENVID that hold no line end to put into a
// queue record, a Received field or an SMTP command, an ENVID of printable ASCII
// (RFC 3461 §4.4: spaces too, as the listeners take it), and the message
// after the line is left unread.
func FuzzEnvelopeLine(f *testing.F) {
	f.Add([]byte(`{"from":"a@b.test","recipients":["c@d.test"],"uid":1000,"notify":"SUCCESS,FAILURE","ret":"HDRS","envid":"x1"}` + "\nbody\r\n"))
	f.Add([]byte(`{"from":"","recipients":["\"a b\"@d.test","jörg@exämple.test"],"uid":0}` + "\n"))
	f.Add([]byte(`{"recipients":["a@[192.0.2.1]"],"x":1}` + "\n"))
	f.Add([]byte(`{"recipients":["a\r\n@d.test"]}` + "\n"))
	f.Add([]byte(`{"recipients":["a@d.test","b@d.test"],"orcpt":["rfc822;a@d.test","x\r\ny"],"rcpt_notify":["NEVER","SUCCESS\n"]}` + "\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		br := bufio.NewReaderSize(bytes.NewReader(data), 16)
		env, err := readEnvelopeLine(br)
		if err != nil {
			return
		}
		if i := bytes.IndexByte(data, '\n'); i >= 0 {
			if rest, _ := io.ReadAll(br); !bytes.Equal(rest, data[i+1:]) {
				t.Fatalf("read into the message: %q left of %q", rest, data)
			}
		}
		if CheckEnvelope(env) != nil {
			return
		}
		// (NOTIFY, also per recipient, is kept as flags, not as written:
		// " SUCCESS\n" is SUCCESS.)
		for _, a := range append(append([]string{env.From, env.EnvID, env.Ret}, env.Recipients...), env.ORCPT...) {
			if strings.ContainsAny(a, "\r\n\x00") {
				t.Fatalf("accepted %q in %+v", a, env)
			}
		}
		if strings.ContainsFunc(env.EnvID, func(r rune) bool { return r < ' ' || r > '~' }) {
			t.Fatalf("accepted ENVID %q", env.EnvID)
		}
	})
}

// FuzzCRLFReader: the message of an injection (sendmail, the pickup
// directory) is queued with every line end — CRLF, LF, or a CR alone —
// made CRLF, and a CRLF at the end when its last line has none, whatever
// the sizes of the reads, and however the lines fall across the buffer.
func FuzzCRLFReader(f *testing.F) {
	for _, s := range []string{"", "a", "a\r\n", "a\rb\r\n\n", "\r", "\r\r\n\n\r", "Subject: x\n\nbody\n.\n"} {
		f.Add([]byte(s), uint8(0))
	}
	f.Fuzz(func(t *testing.T, in []byte, chunk uint8) {
		var want []byte
		for i := 0; i < len(in); i++ {
			switch c := in[i]; c {
			case '\r':
				if i+1 < len(in) && in[i+1] == '\n' {
					i++
				}
				want = append(want, '\r', '\n')
			case '\n':
				want = append(want, '\r', '\n')
			default:
				want = append(want, c)
			}
		}
		if len(want) > 0 && !bytes.HasSuffix(want, []byte("\r\n")) {
			want = append(want, '\r', '\n')
		}
		r := &crlfReader{r: bufio.NewReaderSize(bytes.NewReader(in), 16)}
		var got []byte
		buf := make([]byte, int(chunk)%20+1)
		for {
			n, err := r.Read(buf)
			got = append(got, buf[:n]...)
			if err == io.EOF {
				break
			}
			if err != nil {
				t.Fatal(err)
			}
			if n == 0 {
				t.Fatalf("%q: a read of nothing before the end", in)
			}
		}
		if !bytes.Equal(got, want) {
			t.Fatalf("%q read in %d-byte reads: %q, want %q", in, len(buf), got, want)
		}
	})
}
