package smtp

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
)

type EnhancedCode [3]int

// SMTPError specifies the error code, enhanced error code (if any) and
// message returned by the server.
type SMTPError struct {
	Code         int
	EnhancedCode EnhancedCode
	Message      string
}

// NoEnhancedCode is used to indicate that enhanced error code should not be
// included in response.
//
// Note that RFC 2034 requires an enhanced code to be included in all 2xx, 4xx
// and 5xx responses. This constant is exported for use by extensions, you
// should probably use EnhancedCodeNotSet instead.
var NoEnhancedCode = EnhancedCode{-1, -1, -1}

// EnhancedCodeNotSet is a nil value of EnhancedCode field in SMTPError, used
// to indicate that backend failed to provide enhanced status code. X.0.0 will
// be used (X is derived from error code).
var EnhancedCodeNotSet = EnhancedCode{0, 0, 0}

func (err *SMTPError) Error() string {
	s := fmt.Sprintf("SMTP error %03d", err.Code)
	if err.Message != "" {
		s += ": " + err.Message
	}
	return s
}

func (err *SMTPError) Temporary() bool {
	return err.Code/100 == 4
}

var ErrDataTooLarge = &SMTPError{
	Code:         552,
	EnhancedCode: EnhancedCode{5, 3, 4},
	Message:      "Message size exceeds fixed limit",
}

// ErrBadAddressSyntax is the reply to a MAIL or RCPT whose address the
// server cannot parse; it is also reported to a RefusalLogger (mailhop
// patch).
var ErrBadAddressSyntax = &SMTPError{
	Code:         501,
	EnhancedCode: EnhancedCode{5, 1, 3},
	Message:      "Bad address syntax",
}

// ErrBareLineEnding is the reply to message data that holds a CR or an LF
// that is not part of a CRLF pair. Such data is refused as a whole: a
// server that forwarded it could let a next hop see an end of data where
// this one saw none (SMTP smuggling, CVE-2023-51764 and its family).
var ErrBareLineEnding = &SMTPError{
	Code:         550,
	EnhancedCode: EnhancedCode{5, 6, 11},
	Message:      "Bare CR or LF not allowed",
}

// ErrDataLineTooLong is the reply to message data with a text line longer
// than Server.MaxLineLength (RFC 5321 §4.5.3.1.6, §4.5.3.1.10).
var ErrDataLineTooLong = &SMTPError{
	Code:         500,
	EnhancedCode: EnhancedCode{5, 5, 2},
	Message:      "Line too long",
}

// errLineTooLong is returned by readLineLimit for an over-long command line.
var errLineTooLong = errors.New("smtp: line too long")

// dataReader reads the DATA of a message (RFC 5321 §4.1.1.4): it removes
// dot-stuffing and stops at the end marker. Only <CRLF>.<CRLF> ends the
// data; the CRLF that ends the DATA command counts as the first CRLF.
//
// Refusals (bare CR or LF, an over-long line, the size limit) are sticky:
// Read returns the error from then on, drain still consumes the data up to
// the real end marker, and the error is the reply.
type dataReader struct {
	r     *bufio.Reader
	state int

	limited bool
	n       int64 // Maximum bytes remaining

	maxLine int // octets per line including CRLF; 0: no limit
	lineLen int

	err   *SMTPError // the data is refused
	ioErr error      // the connection failed
}

// States of dataReader.
const (
	stateBeginLine = iota // beginning of line (after CRLF); initial state
	stateDot              // read . at beginning of line
	stateDotCR            // read .<CR> at beginning of line
	stateCR               // read <CR>
	stateData             // reading data in middle of line
	stateEOF              // reached <CRLF>.<CRLF>
)

func newDataReader(c *Conn) *dataReader {
	dr := &dataReader{
		r:       c.text.R,
		maxLine: c.lim.MaxLineLength,
	}

	if c.lim.MaxMessageBytes > 0 {
		dr.limited = true
		dr.n = int64(c.lim.MaxMessageBytes)
	}

	return dr
}

func (r *dataReader) fail(err *SMTPError) {
	if r.err == nil {
		r.err = err
	}
}

// step advances the state machine by one input byte and reports whether
// the byte is part of the message.
func (r *dataReader) step(c byte) bool {
	r.lineLen++
	if r.maxLine > 0 && r.lineLen > r.maxLine {
		r.fail(ErrDataLineTooLong)
	}
	switch r.state {
	case stateBeginLine:
		switch c {
		case '.':
			// The dot added for transparency does not count toward the
			// line length (RFC 5321 §4.5.3.1.6).
			r.lineLen--
			r.state = stateDot
			return false
		case '\r':
			r.state = stateCR
		case '\n':
			r.fail(ErrBareLineEnding)
			r.state = stateData
		default:
			r.state = stateData
		}
	case stateDot:
		switch c {
		case '\r':
			r.state = stateDotCR
			return false
		case '\n':
			r.fail(ErrBareLineEnding)
			r.state = stateData
		default:
			r.state = stateData
		}
	case stateDotCR:
		if c == '\n' {
			r.state = stateEOF
			return false
		}
		r.fail(ErrBareLineEnding)
		if c == '\r' {
			r.state = stateCR
		} else {
			r.state = stateData
		}
	case stateCR:
		switch c {
		case '\n':
			r.state = stateBeginLine
			r.lineLen = 0
		case '\r':
			r.fail(ErrBareLineEnding)
		default:
			r.fail(ErrBareLineEnding)
			r.state = stateData
		}
	case stateData:
		switch c {
		case '\r':
			r.state = stateCR
		case '\n':
			r.fail(ErrBareLineEnding)
		}
	}
	return true
}

func (r *dataReader) Read(b []byte) (n int, err error) {
	if r.ioErr != nil {
		// mailhop patch: a failed connection stays failed. Reading again
		// would wait for the client once more (a stalled client held the
		// session for twice the read timeout).
		return 0, r.ioErr
	}
	for n < len(b) && r.state != stateEOF && r.err == nil {
		if r.state == stateData {
			if k := r.copyRun(b[n:]); k > 0 {
				n += k
				continue
			}
		}
		var c byte
		c, err = r.r.ReadByte()
		if err != nil {
			if err == io.EOF {
				err = io.ErrUnexpectedEOF
			}
			r.ioErr = err
			return n, err
		}
		if !r.step(c) {
			continue
		}
		if r.limited {
			if r.n <= 0 {
				r.fail(ErrDataTooLarge)
				break
			}
			r.n--
		}
		b[n] = c
		n++
	}
	if r.err != nil {
		return n, r.err
	}
	if r.state == stateEOF {
		return n, io.EOF
	}
	return n, nil
}

// copyRun is the fast path of Read, in the middle of a line: it copies
// straight from the read buffer the ordinary bytes that follow, and goes on
// across line ends that are a plain CRLF followed by an ordinary byte
// (neither '.', CR nor LF). Anything else — a possible end marker, a
// dot-stuffed line, a bare CR or LF, the line or size limit — is left to
// step, byte by byte. It returns 0 when there is nothing it can copy.
func (r *dataReader) copyRun(b []byte) int {
	buf, _ := r.r.Peek(r.r.Buffered())
	if len(buf) > len(b) {
		buf = buf[:len(b)]
	}
	if r.limited && int64(len(buf)) > r.n {
		buf = buf[:max(r.n, 0)]
	}
	k, lineLen := 0, r.lineLen
	for k < len(buf) {
		i := indexCRLF(buf[k:])
		if i < 0 {
			i = len(buf) - k
		}
		if r.maxLine > 0 && lineLen+i > r.maxLine {
			i = max(r.maxLine-lineLen, 0)
			k, lineLen = k+i, lineLen+i
			break
		}
		k, lineLen = k+i, lineLen+i
		if k+2 >= len(buf) || buf[k] != '\r' || buf[k+1] != '\n' {
			break
		}
		if c := buf[k+2]; c == '.' || c == '\r' || c == '\n' {
			break
		}
		if r.maxLine > 0 && lineLen+2 > r.maxLine {
			break
		}
		k, lineLen = k+2, 0
	}
	n := copy(b, buf[:k])
	r.r.Discard(n)
	r.lineLen = lineLen
	if r.limited {
		r.n -= int64(n)
	}
	return n
}

// indexCRLF returns the index of the first CR or LF in b, or -1.
func indexCRLF(b []byte) int {
	n := bytes.IndexByte(b, '\n')
	lim := b
	if n >= 0 {
		lim = b[:n]
	}
	if r := bytes.IndexByte(lim, '\r'); r >= 0 {
		return r
	}
	return n
}

// drain consumes the rest of the data up to the end marker. It reports
// false if the connection failed first (r.ioErr).
func (r *dataReader) drain() bool {
	for r.state != stateEOF {
		if r.ioErr != nil {
			return false
		}
		c, err := r.r.ReadByte()
		if err != nil {
			if err == io.EOF {
				err = io.ErrUnexpectedEOF
			}
			r.ioErr = err
			return false
		}
		r.step(c)
	}
	return true
}

// lineChecker applies the rules of dataReader to BDAT chunks (RFC 3030),
// whose data is not dot-stuffed and has no end marker: no bare CR or LF,
// no line longer than maxLine. Its state carries over from chunk to chunk.
type lineChecker struct {
	maxLine int
	lineLen int
	cr      bool // the last byte was a CR
	err     *SMTPError
}

func (lc *lineChecker) fail(err *SMTPError) {
	if lc.err == nil {
		lc.err = err
	}
}

func (lc *lineChecker) check(b []byte) {
	for _, c := range b {
		lc.lineLen++
		if lc.maxLine > 0 && lc.lineLen > lc.maxLine {
			lc.fail(ErrDataLineTooLong)
		}
		if lc.cr {
			lc.cr = false
			if c == '\n' {
				lc.lineLen = 0
				continue
			}
			lc.fail(ErrBareLineEnding)
		}
		switch c {
		case '\r':
			lc.cr = true
		case '\n':
			lc.fail(ErrBareLineEnding)
		}
	}
}

// finish is called after the last chunk: a final CR is a bare CR.
func (lc *lineChecker) finish() error {
	if lc.cr {
		lc.fail(ErrBareLineEnding)
	}
	if lc.err != nil {
		return lc.err
	}
	return nil
}

// checkedReader passes a BDAT chunk through a lineChecker.
type checkedReader struct {
	r     io.Reader
	check *lineChecker
}

func (cr *checkedReader) Read(b []byte) (int, error) {
	if cr.check.err != nil {
		return 0, cr.check.err
	}
	n, err := cr.r.Read(b)
	cr.check.check(b[:n])
	if cr.check.err != nil {
		return 0, cr.check.err
	}
	return n, err
}
