package smtp

import (
	"bufio"
	"errors"
	"io"
	"os"
	"strings"
	"testing"
	"testing/iotest"
)

// TestDataReaderEndMarker checks that only <CRLF>.<CRLF> ends DATA and that
// every bare CR or LF refuses the message (mailhop patch).
func TestDataReaderEndMarker(t *testing.T) {
	cases := []struct {
		name, in, rest string
		err            *SMTPError
		body           string
	}{
		{"clean", "a\r\n..b\r\n.\r\nNEXT", "NEXT", nil, "a\r\n.b\r\n"},
		{"empty", ".\r\nNEXT", "NEXT", nil, ""},
		{"LF.CRLF", "a\n.\r\nb\r\n.\r\nNEXT", "NEXT", ErrBareLineEnding, ""},
		{"CR.CRLF", "a\r.\r\nb\r\n.\r\nNEXT", "NEXT", ErrBareLineEnding, ""},
		{"LF.LF", "a\n.\nb\r\n.\r\nNEXT", "NEXT", ErrBareLineEnding, ""},
		{"CR.CR", "a\r.\rb\r\n.\r\nNEXT", "NEXT", ErrBareLineEnding, ""},
		{"CRLF.CR", "a\r\n.\rb\r\n.\r\nNEXT", "NEXT", ErrBareLineEnding, ""},
		{"LF.CR", "a\n.\rb\r\n.\r\nNEXT", "NEXT", ErrBareLineEnding, ""},
		{"CRLF.LF", "a\r\n.\nb\r\n.\r\nNEXT", "NEXT", ErrBareLineEnding, ""},
		{"CRCRLF", "a\r\r\n.\r\nNEXT", "NEXT", ErrBareLineEnding, ""},
		{"long", "aaaaaaaaaa\r\n.\r\nNEXT", "NEXT", ErrDataLineTooLong, ""},
		// The transparency dot is not part of the line (RFC 5321 §4.5.3.1.6).
		{"stuffed, at the limit", "..aaaaaaaa\r\n.\r\nNEXT", "NEXT", nil, ".aaaaaaaa\r\n"},
		{"stuffed, over", "..aaaaaaaaa\r\n.\r\nNEXT", "NEXT", ErrDataLineTooLong, ""},
		{"size", "123456789\r\n123456789\r\n.\r\nNEXT", "NEXT", ErrDataTooLarge, ""},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			br := bufio.NewReader(strings.NewReader(tc.in))
			r := &dataReader{r: br, maxLine: 11, limited: true, n: 15}
			got, err := io.ReadAll(r)
			if !r.drain() {
				t.Fatalf("drain: %v", r.ioErr)
			}
			rest, _ := io.ReadAll(br)
			if string(rest) != tc.rest {
				t.Errorf("left in stream %q, want %q", rest, tc.rest)
			}
			if tc.err == nil {
				if err != nil || r.err != nil {
					t.Fatalf("err %v / %v", err, r.err)
				}
				if string(got) != tc.body {
					t.Errorf("body %q, want %q", got, tc.body)
				}
				return
			}
			if err != tc.err || r.err != tc.err {
				t.Errorf("err %v / %v, want %v", err, r.err, tc.err)
			}
		})
	}
}

func TestLineCheckerAcrossChunks(t *testing.T) {
	lc := &lineChecker{}
	lc.check([]byte("a\r"))
	lc.check([]byte("\nb\r\n"))
	if err := lc.finish(); err != nil {
		t.Fatal(err)
	}
	for _, chunks := range [][]string{{"a\n"}, {"a\r", "b"}, {"a\r"}, {"a\r\n\r"}} {
		lc := &lineChecker{}
		for _, c := range chunks {
			lc.check([]byte(c))
		}
		if err := lc.finish(); err != ErrBareLineEnding {
			t.Errorf("%q: err %v", chunks, err)
		}
	}
}

// readData runs a dataReader over in, either with a large buffer (the
// fast path copies runs and line ends) or one byte at a time (only the
// byte-wise state machine), and returns the body, the refusal and what
// is left in the stream.
func readData(in string, maxLine int, limit int64, oneByte bool) (string, *SMTPError, string) {
	var src io.Reader = strings.NewReader(in)
	if oneByte {
		src = iotest.OneByteReader(src)
	}
	br := bufio.NewReaderSize(src, 64)
	if !oneByte {
		br = bufio.NewReaderSize(src, 4096)
	}
	r := &dataReader{r: br, maxLine: maxLine, limited: limit > 0, n: limit}
	got, _ := io.ReadAll(r)
	r.drain()
	rest, _ := io.ReadAll(br)
	return string(got), r.err, string(rest)
}

// FuzzDataReaderFastPath: the fast path (copyRun) must give exactly what
// the byte-wise state machine gives, whatever the data (mailhop patch).
func FuzzDataReaderFastPath(f *testing.F) {
	for _, s := range []string{
		"a\r\n..b\r\n.\r\nNEXT", "Subject: x\r\n\r\nline one\r\nline two\r\n.\r\n", "a\n.\r\nb\r\n.\r\n",
		"x\r\r\n.\r\n", strings.Repeat("y", 30) + "\r\n.\r\n", "\r\n.\r\n", "a\r\n.b\r\n..\r\n.\r\nQUIT\r\n",
	} {
		f.Add(s, uint8(20), uint16(100))
	}
	f.Fuzz(func(t *testing.T, in string, maxLine uint8, limit uint16) {
		ml := int(maxLine)
		if ml != 0 && ml < 3 {
			ml = 3
		}
		gotF, errF, restF := readData(in, ml, int64(limit), false)
		gotS, errS, restS := readData(in, ml, int64(limit), true)
		if errF != errS || (errF == nil && gotF != gotS) || restF != restS {
			t.Fatalf("fast path %q %v rest %q; byte-wise %q %v rest %q", gotF, errF, restF, gotS, errS, restS)
		}
	})
}

// flakyReader fails its first read with err, then has data.
type flakyReader struct {
	err   error
	reads int
}

func (f *flakyReader) Read(b []byte) (int, error) {
	f.reads++
	if f.reads == 1 {
		return 0, f.err
	}
	return copy(b, "more\r\n.\r\n"), nil
}

// TestDataReader_ConnectionErrorSticks: after the connection failed (a read
// timeout), the data reader returns that error again without reading: a
// second read would wait for the client a second time.
func TestDataReader_ConnectionErrorSticks(t *testing.T) {
	fr := &flakyReader{err: os.ErrDeadlineExceeded}
	r := &dataReader{r: bufio.NewReader(fr), maxLine: 1000}
	buf := make([]byte, 64)
	for i := 0; i < 3; i++ {
		if _, err := r.Read(buf); !errors.Is(err, os.ErrDeadlineExceeded) {
			t.Fatalf("read %d: %v, want the deadline error", i, err)
		}
	}
	if r.drain() {
		t.Error("drain after a connection error reported the data complete")
	}
	if fr.reads != 1 {
		t.Errorf("the connection was read %d times, want 1", fr.reads)
	}
}
