package sendmail

import (
	"bufio"
	"bytes"
	"io"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/mailhop/mailhop/relay/mailhdr"
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

// FuzzRewriteHeaders: sendmail reads a message's header as the relay
// reads it once queued (mailhdr): the fields the relay sees in the output
// are those it would have seen in the input (line ends as the relay makes
// them, an mbox "From " line dropped), without Bcc and Resent-Bcc, then
// the From, Date and Message-ID (or their Resent- forms) sendmail adds,
// each only when missing; the body is the input's; and with -t a To, Cc
// or Bcc field the relay sees with a plain address in it gives recipients.
// A field sendmail read otherwise was kept in the body (a Bcc shown to
// every recipient) or not sent to.
func FuzzRewriteHeaders(f *testing.F) {
	for _, s := range []string{
		"From: root\nTo: ops@example.com, root\nBcc: hidden@example.org,\n secret@example.org\nSubject: s\n\nbody\n",
		"To: a@x.test\nBcc : secret@y.test\n\nbody\n",
		"To : a@x.test\nSubject: s\n\nbody\n",
		"Resent-To: r@x.test\nResent-Bcc: h@x.test\nTo: a@x.test\n\nb\n",
		"From someone Mon Jan  1 00:00:00 2024\nSubject: mbox\n\nb\n",
		"just text\nTo: a@x.test\n",
		"Subject: x\rBcc: hidden@example.org\r\nTo: b@example.net\r\n\r\nbody\r\n",
		" folded first\nTo: a@x.test\n\n",
		"\nbody\n",
		"To: a@x.test",
	} {
		f.Add([]byte(s), true)
	}
	hf := headerFields{from: "me@h.test", hostname: "h.test", now: time.Unix(1700000000, 0)}
	// fields returns the names (lower case) of the header fields the
	// relay finds at the start of msg, and the body after them (and after
	// the empty line that ends them).
	fields := func(msg []byte) ([]string, []byte) {
		end := mailhdr.HeaderEnd(msg)
		var names []string
		mailhdr.Fields(msg[:end], func(name, _ []byte) bool {
			names = append(names, strings.ToLower(string(name)))
			return true
		})
		return names, bytes.TrimPrefix(msg[end:], []byte("\n"))
	}
	f.Fuzz(func(t *testing.T, msg []byte, extract bool) {
		out, rcpts, err := rewriteHeaders(msg, extract, hf)
		if err != nil {
			return
		}
		in := lfLineEnds(msg)
		if bytes.HasPrefix(in, []byte("From ")) {
			_, in, _ = bytes.Cut(in, []byte("\n"))
		}
		inNames, inBody := fields(in)
		outNames, outBody := fields(out)
		prefix := ""
		if slices.ContainsFunc(inNames, func(n string) bool { return strings.HasPrefix(n, "resent-") }) {
			prefix = "resent-"
		}
		want := slices.DeleteFunc(slices.Clone(inNames), func(n string) bool { return n == "bcc" || n == "resent-bcc" })
		for _, n := range []string{"from", "date", "message-id"} {
			if !slices.Contains(inNames, prefix+n) {
				want = append(want, prefix+n)
			}
		}
		if !slices.Equal(outNames, want) {
			t.Fatalf("%q: the relay reads the fields %q of the input, %q of the output %q; want %q", msg, inNames, outNames, out, want)
		}
		if !bytes.Equal(outBody, inBody) {
			t.Fatalf("%q: body %q became %q (output %q)", msg, inBody, outBody, out)
		}
		if extract && len(rcpts) == 0 {
			to := 0
			mailhdr.Fields(in[:mailhdr.HeaderEnd(in)], func(name, value []byte) bool {
				n := strings.ToLower(string(name))
				// A plain address (no group, comment or quotes,
				// which can make a list of none).
				if v := mailhdr.Unfold(value); (n == prefix+"to" || n == prefix+"cc" || n == prefix+"bcc") && strings.Contains(v, "@") && !strings.ContainsAny(v, ":;()\"\\") {
					to++
				}
				return true
			})
			if to > 0 {
				t.Fatalf("%q: -t found no recipient in %d address fields", msg, to)
			}
		}
	})
}
