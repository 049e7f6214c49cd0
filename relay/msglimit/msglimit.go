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
	"github.com/mailhop/mailhop/relay/mailhdr"
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
//     it; with no empty line, the whole message; a message that starts with
//     the empty line, or with a line that is not a header field (text, a
//     continuation line: mailhdr.StartsWithField), has none — that line
//     starts the body, as the relay queues it (over SMTP 552 5.3.4).
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
	size     int64  // octets so far
	line     int    // octets of the current line so far, without CR and LF
	header   int    // octets of the header's finished lines, CRLFs included
	inHeader bool   // no empty line yet
	first    []byte // the start of the first line, until it shows whether there is a header
	decided  bool   // first has been looked at
	err      *Error
}

// firstLineScan is how much of the first line decides whether the message
// starts with a header field (what relay/inbound reads ahead for the same
// question).
const firstLineScan = 1024

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
	if !l.decided {
		l.decide(b)
	}
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
		if l.lim.MaxLineLength > 0 && l.line > l.lim.MaxLineLength {
			return &Error{Key: KeyMaxLineLength, Limit: int64(l.lim.MaxLineLength), InHeader: l.inHeader}
		}
		if l.inHeader && l.decided && l.lim.MaxHeaderSize > 0 && l.header+l.line > l.lim.MaxHeaderSize {
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
		l.line = 0
	}
	return nil
}

// decide collects the start of the first line from b until it ends (or
// firstLineScan octets): a message whose first line is not a header field
// has no header.
func (l *Reader) decide(b []byte) {
	end := bytes.IndexByte(b, '\n')
	if end < 0 {
		end = len(b)
	}
	l.first = append(l.first, b[:min(end, firstLineScan-len(l.first))]...)
	if end < len(b) || len(l.first) >= firstLineScan {
		l.decided = true
		l.inHeader = mailhdr.StartsWithField(append(l.first, '\n'))
		l.first = nil
	}
}
