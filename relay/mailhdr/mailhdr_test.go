package mailhdr

import (
	"bufio"
	"fmt"
	"io"
	"strings"
	"testing"
	"testing/iotest"
)

func collect(h string) []string {
	var out []string
	Fields([]byte(h), func(name, value []byte) bool {
		out = append(out, fmt.Sprintf("%s=%q", name, Unfold(value)))
		return true
	})
	return out
}

func TestFields(t *testing.T) {
	cases := []struct {
		name, in string
		want     []string
	}{
		{"crlf", "From: a@b.test\r\nSubject: hi\r\n\r\nbody: not a field\r\n",
			[]string{`From="a@b.test"`, `Subject="hi"`}},
		{"lf", "From: a@b.test\nSubject: hi\n\nbody: x\n", []string{`From="a@b.test"`, `Subject="hi"`}},
		{"folded", "Subject: one\r\n two\r\n\tthree\r\nTo: x\r\n\r\n",
			[]string{`Subject="one two\tthree"`, `To="x"`}},
		{"name white space", "Received : x\r\n\r\n", []string{`Received="x"`}},
		// A line that is no field starts the body, as HeaderEnd and
		// Postfix's cleanup have it: fields after it are body text.
		{"no colon ends the header", "garbage\r\nTo: x\r\n\r\n", nil},
		{"leading continuation ends the header", " stray\r\nTo: x\r\n\r\n", nil},
		{"body without the empty line", "To: x\r\nHello there\r\nReceived: y\r\n", []string{`To="x"`}},
		{"no end of header", "To: x\r\nCc: y", []string{`To="x"`, `Cc="y"`}},
		{"empty header", "\r\nTo: x\r\n", nil},
		{"empty value", "X-Empty:\r\n\r\n", []string{`X-Empty=""`}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			got := collect(tc.in)
			if strings.Join(got, "|") != strings.Join(tc.want, "|") {
				t.Errorf("got %v, want %v", got, tc.want)
			}
		})
	}
}

func TestFieldsStops(t *testing.T) {
	n := 0
	Fields([]byte("A: 1\r\nB: 2\r\nC: 3\r\n\r\n"), func(name, _ []byte) bool {
		n++
		return !Is(name, "b")
	})
	if n != 2 {
		t.Fatalf("fn called %d times after returning false at the second field", n)
	}
}

func FuzzFields(f *testing.F) {
	f.Add([]byte("From: a\r\n b\r\n\r\n"))
	f.Add([]byte(":\n\t\r\n"))
	f.Fuzz(func(t *testing.T, h []byte) {
		end := HeaderEnd(h)
		Fields(h, func(name, value []byte) bool {
			if bytes := Unfold(value); strings.ContainsAny(bytes, "\r\n") {
				t.Fatalf("unfolded value has a line end: %q", bytes)
			}
			// Every field lies in the header HeaderEnd finds.
			if off := cap(h) - cap(value); off > end {
				t.Fatalf("field %q at %d, after the header's end %d", name, off, end)
			}
			return true
		})
	})
}

func TestReadAndTrimEnd(t *testing.T) {
	cases := []struct{ in, header, trimmed string }{
		{"A: 1\r\nB: 2\r\n\r\nbody\r\n", "A: 1\r\nB: 2\r\n\r\n", "A: 1\r\nB: 2\r\n"},
		{"A: 1\n\nbody\n", "A: 1\n\n", "A: 1\n"},
		{"\r\nbody", "\r\n", ""},
		{"\nbody", "\n", ""},
	}
	for _, tc := range cases {
		h, err := Read(bufio.NewReader(strings.NewReader(tc.in)), 1000)
		if err != nil || string(h) != tc.header {
			t.Errorf("Read(%q) = %q, %v; want %q", tc.in, h, err, tc.header)
			continue
		}
		if got := string(TrimEnd(h)); got != tc.trimmed {
			t.Errorf("TrimEnd(%q) = %q, want %q", h, got, tc.trimmed)
		}
	}
	if _, err := Read(bufio.NewReader(strings.NewReader("A: 1\r\nB: 2\r\n")), 1000); err != ErrIncomplete {
		t.Errorf("header without its end: %v", err)
	}
	if _, err := Read(bufio.NewReader(strings.NewReader("A: "+strings.Repeat("x", 100)+"\r\n\r\n")), 50); err != ErrIncomplete {
		t.Errorf("header over the limit: %v", err)
	}
}

func TestStartsWithField(t *testing.T) {
	for _, tc := range []struct {
		msg  string
		want bool
	}{
		{"Subject: x\r\n", true},
		{"X-Long-Name-1.2_3: v", true},
		{"\r\nbody", true},
		{"", true},
		{" folded\r\nSubject: x\r\n", false},
		{"\tfolded", false},
		{"just text\r\n", false},
		{"From someone Mon Jan 1\r\n", false},
		{": no name\r\n", false},
		{"Sub ject: x\r\n", false},
		{"Subject : obsolete white space\r\n", true},
		{"Subject\t: x\r\n", true},
		{"Subject \r\n", false},
		{"Subj\xc3\xa9ct: x\r\n", false},
		{"NoColonInTheFirstBytes", false},
	} {
		if got := StartsWithField([]byte(tc.msg)); got != tc.want {
			t.Errorf("StartsWithField(%q) = %v, want %v", tc.msg, got, tc.want)
		}
	}
}

func TestHeaderEnd(t *testing.T) {
	cases := []struct {
		in   string
		want int
	}{
		{"From: a\r\nTo: b\r\n\r\nbody\r\n", 16},
		{"From: a\r\nTo: b\r\n", 16},
		{"From: a\r\nTo: b\r\ntext\r\n\r\nmore\r\n", 16},
		{"Subject: one\r\n two\r\nX : y\nplain text\n", 26},
		{"text first\r\nFrom: a\r\n", 0},
		{" continuation first\r\n", 0},
		{"From: a\r\nTo: b", 14},
		{"", 0},
	}
	for _, c := range cases {
		if got := HeaderEnd([]byte(c.in)); got != c.want {
			t.Errorf("HeaderEnd(%q) = %d, want %d", c.in, got, c.want)
		}
	}
}

// HeadKeeper keeps the header alone (not the body after it, read in the
// same Read), also when the empty line that ends it comes over several
// reads, and gives the first Message-ID of the header.
func TestHeadKeeper(t *testing.T) {
	const header = "Subject: x\r\nMessage-Id:\r\n <first@x>\r\nMessage-ID: <second@x>\r\n\r\n"
	msg := header + "Message-ID: <in-body@x>\r\n" + strings.Repeat("b", 100<<10)
	for name, r := range map[string]io.Reader{
		"one read":        strings.NewReader(msg),
		"a byte per read": iotest.OneByteReader(strings.NewReader(msg)),
	} {
		h := &HeadKeeper{R: r}
		data, err := io.ReadAll(h)
		if err != nil || string(data) != msg {
			t.Fatalf("%s: the data changed (%v)", name, err)
		}
		if string(h.Head()) != header || h.MessageID() != "<first@x>" {
			t.Errorf("%s: kept %q, Message-ID %q", name, h.Head(), h.MessageID())
		}
	}
}
