// Package mailhdr walks the header fields of an Internet message (RFC 5322
// §2.2): the one reader of header blocks for the inbound session, delivery
// and DKIM signing.
package mailhdr

import (
	"bufio"
	"bytes"
	"errors"
	"io"
)

// MaxReceived is the most Received fields a message may carry, the relay's
// own included, before it is taken for a loop (RFC 5321 §6.3 suggests 100
// as an upper bound; 50 is the usual MTA choice, Postfix's hopcount_limit).
// The SMTP server refuses such a message at the end of DATA; delivery
// bounces one that got into the queue otherwise.
const MaxReceived = 50

// Fields calls fn with the name (white space trimmed) and the raw value of
// each field of the header block at the start of h, in order, until fn
// returns false, h ends, or the header ends: at the empty line, or at the
// first line that is no field (without a colon after a field name, or a
// continuation line before any field), which starts the body, as HeaderEnd
// has it (a "Received:" line in a body that follows such a line is no
// field). A raw value is everything after the colon, continuation lines
// included with their line ends (see Unfold). Lines may end in CRLF or LF.
// fn's slices point into h.
func Fields(h []byte, fn func(name, value []byte) bool) {
	for len(h) > 0 {
		line, rest := cutLine(h)
		if len(line) == 0 || !StartsWithField(line) { // a continuation line is no field
			return // the header ends: the empty line, or the body's first line
		}
		end := len(line) // where the value ends in h
		for len(rest) > 0 && isWSP(rest[0]) {
			next, after := cutLine(rest)
			end = len(h) - len(rest) + len(next)
			rest = after
		}
		colon := bytes.IndexByte(line, ':') // there is one: StartsWithField
		if !fn(bytes.TrimSpace(line[:colon]), h[colon+1:end]) {
			return
		}
		h = rest
	}
}

// Unfold returns a raw value as one line (RFC 5322 §2.2.3: line ends
// removed, the white space that folded them kept), without leading and
// trailing white space.
func Unfold(v []byte) string {
	if bytes.IndexAny(v, "\r\n") < 0 {
		return string(bytes.TrimSpace(v))
	}
	out := make([]byte, 0, len(v))
	for _, c := range v {
		if c != '\r' && c != '\n' {
			out = append(out, c)
		}
	}
	return string(bytes.TrimSpace(out))
}

// Is reports whether name is the field name want, ignoring case.
func Is(name []byte, want string) bool {
	return len(name) == len(want) && bytes.EqualFold(name, []byte(want))
}

// cutLine splits off the first line of b, without its CRLF or LF.
func cutLine(b []byte) (line, rest []byte) {
	i := bytes.IndexByte(b, '\n')
	if i < 0 {
		return b, nil
	}
	line, rest = b[:i], b[i+1:]
	if n := len(line); n > 0 && line[n-1] == '\r' {
		line = line[:n-1]
	}
	return line, rest
}

func isWSP(c byte) bool { return c == ' ' || c == '\t' }

// ErrIncomplete reports that a header block did not end within the limit,
// or that the message ended before the empty line that ends it.
var ErrIncomplete = errors.New("header block incomplete or too long")

// Read reads the header block from br, up to and including the empty line
// that ends it (RFC 5322 §2.1), reading at most about limit bytes. On
// ErrIncomplete the bytes read so far are returned; any other error is
// br's.
func Read(br *bufio.Reader, limit int) ([]byte, error) {
	var h []byte
	lineStart := true // line is a whole line, not the rest of a long one
	for {
		line, err := br.ReadSlice('\n')
		h = append(h, line...)
		if err == nil && lineStart && (len(line) == 2 && line[0] == '\r' || len(line) == 1) {
			return h, nil
		}
		lineStart = err == nil
		if len(h) > limit {
			return h, ErrIncomplete
		}
		switch err {
		case nil, bufio.ErrBufferFull:
		case io.EOF:
			return h, ErrIncomplete
		default:
			return h, err
		}
	}
}

// TrimEnd returns a header block that Read returned without error without
// the empty line that ends it.
func TrimEnd(h []byte) []byte {
	if bytes.HasSuffix(h, []byte("\r\n")) && (len(h) == 2 || h[len(h)-3] == '\n') {
		return h[:len(h)-2]
	}
	return h[:len(h)-1]
}

// maxHeaderBytes bounds how much of a stored message is read as its header.
const maxHeaderBytes = 1 << 20

// Block returns the header block of a stored message (without the
// blank line ending it), at most maxHeaderBytes.
func Block(r io.ReaderAt, size int64) []byte {
	h, err := Read(bufio.NewReader(io.NewSectionReader(r, 0, min(size, maxHeaderBytes))), maxHeaderBytes)
	if err == nil {
		h = TrimEnd(h)
	}
	return h
}

// HeaderEnd returns where the header fields at the start of h end: at the
// empty line that ends them, or at the first line that is neither a field
// (StartsWithField) nor a continuation of one, which starts the body (as
// msglimit measures the header, and as Postfix's cleanup reads it); len(h)
// when every line is a field. Lines may end in CRLF or LF.
func HeaderEnd(h []byte) int {
	n := 0
	for n < len(h) {
		line, rest := cutLine(h[n:])
		if len(line) == 0 || !(n > 0 && isWSP(line[0])) && !StartsWithField(line) {
			return n
		}
		n = len(h) - len(rest)
	}
	return n
}

// StartsWithField reports whether msg, the start of a message, begins with
// a header field (a field name of printable ASCII and a colon, RFC 5322
// §2.2) or with the empty line that ends an empty header. Anything else —
// a continuation line, an mbox "From " line, text — starts the body: a
// relay that prepends its own fields must put the empty line between them
// and it, or that line would join the header (Postfix's cleanup does the
// same). A field name must be found within the first line, so msg needs
// only to hold that much (998 octets, RFC 5322 §2.1.1). White space
// between the name and the colon (the obsolete syntax of RFC 5322 §4.5.3)
// is allowed, as Postfix allows it.
func StartsWithField(msg []byte) bool {
	if len(msg) == 0 || bytes.HasPrefix(msg, []byte("\r\n")) {
		return true
	}
	for i, c := range msg {
		switch {
		case c == ':':
			return i > 0
		case isWSP(c) && i > 0:
			rest := bytes.TrimLeft(msg[i:], " \t")
			return len(rest) > 0 && rest[0] == ':'
		case c < '!' || c > '~':
			return false
		}
	}
	return false
}

// MaxHeadKept bounds how much of the start of a message a HeadKeeper keeps.
const MaxHeadKept = 32 << 10

// maxLoggedID bounds the Message-ID a log line carries.
const maxLoggedID = 200

// HeadKeeper passes a message (CRLF line ends) through from R and keeps its
// header — up to the empty line that ends it, or MaxHeadKept bytes while no
// end is seen — for the log line written once the message has been read
// (the inbound session's "message accepted", the admin socket's "queued").
// The body is not kept.
type HeadKeeper struct {
	R    io.Reader
	head []byte
	done bool
}

func (h *HeadKeeper) Read(p []byte) (int, error) {
	n, err := h.R.Read(p)
	if !h.done && n > 0 {
		// Keep only the header: up to the end found in this read, or all
		// of it while no end is seen (bounded by MaxHeadKept).
		from := max(len(h.head)-3, 0)
		take := p[:min(n, MaxHeadKept-len(h.head))]
		if i := bytes.Index(take, []byte("\r\n\r\n")); i >= 0 {
			take = take[:i+4] // the body is not kept
		}
		h.head = append(h.head, take...)
		if bytes.HasPrefix(h.head, []byte("\r\n")) {
			h.done = true
		} else if i := bytes.Index(h.head[from:], []byte("\r\n\r\n")); i >= 0 {
			h.head = h.head[:from+i+4]
			h.done = true
		} else if len(h.head) >= MaxHeadKept {
			h.done = true
		}
	}
	return n, err
}

// Head is what was kept of the message's start so far.
func (h *HeadKeeper) Head() []byte { return h.head }

// MessageID is the message's (first) Message-ID field, unfolded and cut to
// 200 bytes for the log: "" when it has none in what was kept.
func (h *HeadKeeper) MessageID() string { return MessageID(h.head) }

// MessageID returns the (first) Message-ID field of the header block h,
// unfolded and cut to 200 bytes for the log: "" when it has none.
func MessageID(h []byte) string {
	var id string
	Fields(h, func(name, value []byte) bool {
		if Is(name, "message-id") {
			id = Unfold(value)
			return false
		}
		return true
	})
	if len(id) > maxLoggedID {
		id = id[:maxLoggedID]
	}
	return id
}
