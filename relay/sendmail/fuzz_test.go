package sendmail

import (
	"bufio"
	"bytes"
	"io"
	"strings"
	"testing"
)

// FuzzQualifyAddrs: any header field value, however broken, is qualified
// without a panic, and only by inserting "@hostname": nothing of the
// field is lost or changed.
func FuzzQualifyAddrs(f *testing.F) {
	for _, s := range []string{"root", "root (Cron Daemon)", "A <root>, b@x, \"q, r\" <s>", "g: a, b;", "(\\", "\"\\", "<a:b>", "a,,b"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, v string) {
		raw := []byte("To: " + v)
		out := qualifyAddrs(raw, 3, "h.test")
		if got := bytes.ReplaceAll(out, []byte("@h.test"), nil); !bytes.Equal(got, bytes.ReplaceAll(raw, []byte("@h.test"), nil)) {
			t.Errorf("qualifyAddrs(%q) = %q: more than @h.test added", raw, out)
		}
	})
}

// FuzzReadBSData: the text of sendmail -bs's DATA, dot-stuffed and ended by
// ".", reads back as it was, whatever its line ends and however the lines
// fall across the reader's buffer; what follows the end is left unread.
func FuzzReadBSData(f *testing.F) {
	for _, s := range []string{"a\r\n.b\r\n", ".\r\n..\r\n", "x\n.\ny\n", "", "\r\n", "." + string(bytes.Repeat([]byte("y"), 40)) + "\r\n"} {
		f.Add(s, uint8(0))
	}
	f.Fuzz(func(t *testing.T, text string, size uint8) {
		var lines [][]byte
		for _, l := range bytes.SplitAfter([]byte(text), []byte("\n")) {
			if len(l) > 0 {
				lines = append(lines, l)
			}
		}
		var in, want bytes.Buffer
		for i, l := range lines {
			if i == len(lines)-1 && l[len(l)-1] != '\n' {
				l = append(l, '\r', '\n')
			}
			want.Write(l)
			if l[0] == '.' {
				in.WriteByte('.')
			}
			in.Write(l)
		}
		in.WriteString(".\r\nQUIT\r\n")
		br := bufio.NewReaderSize(bytes.NewReader(in.Bytes()), 16+int(size))
		got, err := readBSData(br, 1<<20)
		if err != nil || !bytes.Equal(got, want.Bytes()) {
			t.Fatalf("readBSData(%q) = %q, %v; want %q", in.Bytes(), got, err, want.Bytes())
		}
		if rest, _ := io.ReadAll(br); string(rest) != "QUIT\r\n" {
			t.Fatalf("readBSData(%q) left %q", in.Bytes(), rest)
		}
	})
}

// FuzzBSPath: sendmail -bs's MAIL and RCPT argument never panics and the
// address it finds is part of the argument (CheckEnvelope judges it).
func FuzzBSPath(f *testing.F) {
	for _, s := range []string{"FROM:<a@b> SIZE=1", "TO:<>", "to: x@y", "FROM:<", "FROM:"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, arg string) {
		for _, kw := range []string{"FROM:", "TO:"} {
			addr, _, ok := bsPath(arg, kw)
			if ok && !strings.Contains(arg, addr) {
				t.Fatalf("bsPath(%q, %q) = %q", arg, kw, addr)
			}
		}
	})
}
