// Package msglimit checks a message's data against the limits SMTP puts on
// it — policy.max_message_size, limits.max_line_length and
// limits.max_header_size — with one meaning wherever mail comes in: the SMTP
// server (the header size; go-smtp counts size and line length as the data
// arrives) and local submission (sendmail, pickup), which checks all three.
package msglimit

import (
	"bytes"
	"fmt"
	"io"

	"github.com/mailhop/mailhop/relay/config"
)

// Limits are the limits SMTP puts on a message's data, which local mail
// must meet with the same meaning (a limit of 0 is no limit). Each is
// measured on the message as it would be queued — line endings made CRLF,
// before the relay's Received field — as SMTP measures what the client sent
// (submitted Date and Message-ID fields, and sendmail's, count):
//
//   - policy.max_message_size: octets of the whole message, CRLFs included
//     (go-smtp's MaxMessageBytes; over SMTP 552 5.3.4).
//   - limits.max_line_length: octets of one line, header or body, not
//     counting its CRLF (go-smtp's MaxLineLength, which relay/inbound sets
//     to this + 2; over SMTP 500 5.5.2).
//   - limits.max_header_size: octets of the header block, from the start to
//     the CRLF of its last field included, without the empty line that ends
//     it. The block also ends before the first line that is neither a field
//     (a name of printable ASCII and a colon, mailhdr.StartsWithField) nor a
//     continuation of one: that line starts the body, as the relay queues it
//     and as Postfix's cleanup reads it, so a message of plain text without
//     a header has none (over SMTP 552 5.3.4).
type Limits struct {
	MaxMessageSize int64
	MaxLineLength  int
	MaxHeaderSize  int
}

// Of returns the limits of a configuration.
func Of(cfg *config.Config) Limits {
	return Limits{MaxMessageSize: cfg.Policy.MaxMessageSize, MaxLineLength: cfg.Limits.MaxLineLength,
		MaxHeaderSize: cfg.Limits.MaxHeaderSize}
}

// The configuration keys an Error names.
const (
	KeyMaxMessageSize = "policy.max_message_size"
	KeyMaxLineLength  = "limits.max_line_length"
	KeyMaxHeaderSize  = "limits.max_header_size"
)

// Error is a message that breaks one of the Limits.
type Error struct {
	Key      string // KeyMaxMessageSize, KeyMaxLineLength or KeyMaxHeaderSize
	Limit    int64
	InHeader bool // KeyMaxLineLength: the line is in the header
}

func (e *Error) Error() string {
	switch e.Key {
	case KeyMaxLineLength:
		part := "body"
		if e.InHeader {
			part = "header"
		}
		return fmt.Sprintf("a %s line is longer than %s (%d octets, not counting CRLF)", part, e.Key, e.Limit)
	case KeyMaxHeaderSize:
		return fmt.Sprintf("header block larger than %s (%d bytes)", e.Key, e.Limit)
	}
	return fmt.Sprintf("message larger than %s (%d bytes)", e.Key, e.Limit)
}

// Reader passes a message with CRLF line endings (a CR is always followed
// by an LF) through, and fails the read — so whoever queues it aborts the
// message — with an *Error as soon as it breaks one of the Limits. The
// error sticks.
type Reader struct {
	r        io.Reader
	lim      Limits
	size     int64 // octets so far
	line     int   // octets of the current line so far, without CR and LF
	header   int   // octets of the header's finished lines, CRLFs included
	inHeader bool  // no empty line yet
	kind     lineKind
	err      *Error
}

// lineKind is what the current line is known to be while in the header,
// from as much of its start as has arrived.
type lineKind int

const (
	lineStart   lineKind = iota // nothing of it yet
	lineName                    // printable ASCII so far: a field name, or text
	lineNameWSP                 // a name and white space: a colon may follow (RFC 5322 §4.5.3)
	lineField                   // a field or a continuation line
	lineBody                    // anything else: the body starts here
)

// classify advances l.kind over text, the next octets of the current line
// (without CR and LF).
func (l *Reader) classify(text []byte) {
	for _, c := range text {
		wsp := c == ' ' || c == '\t'
		switch l.kind {
		case lineStart:
			switch {
			case wsp && l.header > 0:
				l.kind = lineField // a continuation line
			case c > ' ' && c <= '~' && c != ':':
				l.kind = lineName
			default:
				l.kind = lineBody
			}
		case lineName:
			switch {
			case c == ':':
				l.kind = lineField
			case wsp:
				l.kind = lineNameWSP
			case c <= ' ' || c > '~':
				l.kind = lineBody
			}
		case lineNameWSP:
			switch {
			case c == ':':
				l.kind = lineField
			case !wsp:
				l.kind = lineBody
			}
		default:
			return
		}
	}
}

// Err returns the limit the message broke, or nil.
func (l *Reader) Err() *Error { return l.err }

// NewReader returns a Reader of r that checks lim.
func NewReader(r io.Reader, lim Limits) *Reader {
	return &Reader{r: r, lim: lim, inHeader: true}
}

func (l *Reader) Read(p []byte) (int, error) {
	if l.err != nil {
		return 0, l.err
	}
	n, err := l.r.Read(p)
	if l.err = l.check(p[:n]); l.err != nil {
		return 0, l.err
	}
	return n, err
}

// check accounts for b, line by line, and returns the first limit broken.
func (l *Reader) check(b []byte) *Error {
	for len(b) > 0 {
		seg, ended := b, false
		if i := bytes.IndexByte(b, '\n'); i >= 0 {
			seg, ended = b[:i+1], true
		}
		b = b[len(seg):]
		l.size += int64(len(seg))
		if l.lim.MaxMessageSize > 0 && l.size > l.lim.MaxMessageSize {
			return &Error{Key: KeyMaxMessageSize, Limit: l.lim.MaxMessageSize}
		}
		text := seg
		if ended {
			text = text[:len(text)-1]
		}
		text = bytes.TrimSuffix(text, []byte("\r")) // the CR of a CRLF split across reads
		l.line += len(text)
		if l.inHeader {
			l.classify(text)
			if ended && l.line > 0 && l.kind != lineField {
				l.kind = lineBody // a line without a colon
			}
			if l.kind == lineBody {
				l.inHeader = false // this line is the body's first
			}
		}
		if l.lim.MaxLineLength > 0 && l.line > l.lim.MaxLineLength {
			return &Error{Key: KeyMaxLineLength, Limit: int64(l.lim.MaxLineLength), InHeader: l.inHeader}
		}
		if l.inHeader && l.kind == lineField && l.lim.MaxHeaderSize > 0 && l.header+l.line > l.lim.MaxHeaderSize {
			// Already over without this line's CRLF: no need to wait for it.
			return &Error{Key: KeyMaxHeaderSize, Limit: int64(l.lim.MaxHeaderSize)}
		}
		if !ended {
			continue
		}
		if l.inHeader {
			if l.line == 0 {
				l.inHeader = false // the empty line: not part of the header
			} else {
				l.header += l.line + 2
				if l.lim.MaxHeaderSize > 0 && l.header > l.lim.MaxHeaderSize {
					return &Error{Key: KeyMaxHeaderSize, Limit: int64(l.lim.MaxHeaderSize)}
				}
			}
		}
		l.line, l.kind = 0, lineStart
	}
	return nil
}
