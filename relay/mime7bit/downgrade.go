package mime7bit

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"mime"
	"mime/quotedprintable"
	"strings"
	"sync"
)

// 8BITMIME downgrade (RFC 6152 §3; Postfix's smtp client does the same).
// A message with an octet above 127 may go to a server that does not offer
// 8BITMIME only in a 7-bit form. Every leaf body part holding 8-bit octets
// is encoded as quoted-printable (RFC 2045 §6.7) and its
// Content-Transfer-Encoding changed; multipart/* is walked recursively and
// a composite part labelled 8bit or binary is relabelled 7bit. What cannot
// be converted — 8-bit octets in a header (the message's or a part's), in
// a message/* part other than message/global* (RFC 2046 §5.2.1 allows no
// encoding there; RFC 6532 §3.7 and RFC 6533 §6 do), in a part
// already labelled base64 or quoted-printable, or outside the body parts
// of a multipart — makes the message undeliverable to that server (5.6.3).
//
// The message stays on disk. The first pass (parse) reads it once and
// keeps only a list of byte ranges to copy or to encode and the few
// rewritten part headers; the size is found by writing that list to a
// counter; the last pass writes it to the DATA stream. Nothing of the body
// is held in memory.

// Limits of the conversion; a message beyond them is not converted.
const (
	maxMIMEDepth = 32      // nested multiparts
	maxMIMEParts = 10000   // body parts in all
	maxPartHead  = 1 << 20 // bytes of one header block
	boundaryHead = 256     // bytes of a line looked at for a boundary
)

// UnconvertibleError says why a message cannot be made 7-bit.
type UnconvertibleError struct{ reason string }

func (e *UnconvertibleError) Error() string { return e.reason }

func unconvertible(format string, args ...any) error {
	return &UnconvertibleError{reason: fmt.Sprintf(format, args...)}
}

// Conversion is the 7-bit form of a stored message: a list of operations
// over its bytes.
type Conversion struct {
	src     io.ReaderAt
	ops     []convOp
	size    int64 // bytes WriteTo writes
	encoded int   // parts encoded as quoted-printable
}

type opKind uint8

const (
	opCopy  opKind = iota // src[start:end] as it is
	opQP                  // src[start:end] encoded as quoted-printable
	opBytes               // data (a rewritten header)
)

type convOp struct {
	kind       opKind
	start, end int64
	data       []byte
}

// WriteTo writes the converted message to w.
func (c *Conversion) WriteTo(w io.Writer) (int64, error) {
	cw := &countWriter{w: w}
	buf := copyBufs.Get().(*[]byte)
	defer copyBufs.Put(buf)
	for _, op := range c.ops {
		var err error
		switch op.kind {
		case opCopy:
			_, err = io.CopyBuffer(cw, io.NewSectionReader(c.src, op.start, op.end-op.start), *buf)
		case opBytes:
			_, err = cw.Write(op.data)
		case opQP:
			// Every line end of the stored message is CRLF; the encoder
			// keeps them as line breaks (text mode).
			qp := quotedprintable.NewWriter(cw)
			if _, err = io.CopyBuffer(qp, io.NewSectionReader(c.src, op.start, op.end-op.start), *buf); err == nil {
				err = qp.Close()
			}
		}
		if err != nil {
			return cw.n, err
		}
	}
	return cw.n, nil
}

// Size is the length of the converted message: what WriteTo writes.
func (c *Conversion) Size() int64 { return c.size }

// Encoded is the number of body parts encoded as quoted-printable.
func (c *Conversion) Encoded() int { return c.encoded }

type countWriter struct {
	w io.Writer
	n int64
}

func (c *countWriter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	c.n += int64(n)
	return n, err
}

// Has8bit reports whether the first size bytes of r hold an octet above 127.
func Has8bit(r io.ReaderAt, size int64) (bool, error) {
	bp := copyBufs.Get().(*[]byte)
	defer copyBufs.Put(bp)
	buf := *bp
	for off := int64(0); off < size; {
		n, err := r.ReadAt(buf[:min(int64(len(buf)), size-off)], off)
		if !IsASCII(buf[:n]) {
			return true, nil
		}
		off += int64(n)
		if err != nil && !(errors.Is(err, io.EOF) && off >= size) {
			return false, err
		}
	}
	return false, nil
}

// Convert returns the 7-bit form of the message src of size bytes, or nil
// when it holds no 8-bit octet (it goes as it is). An *UnconvertibleError
// says the message cannot be converted; any other error is a read error.
func Convert(src io.ReaderAt, size int64) (*Conversion, error) {
	if eight, err := Has8bit(src, size); err != nil || !eight {
		return nil, err
	}
	cv := &converter{src: src, lr: newLineReader(src, size)}
	if _, err := cv.entity(nil, "text/plain", true); err != nil {
		return nil, err
	}
	c := &Conversion{src: src, ops: cv.ops, encoded: cv.encoded}
	n, err := c.WriteTo(io.Discard)
	if err != nil {
		return nil, err
	}
	c.size = n
	return c, nil
}

// converter parses a message into a conversion.
type converter struct {
	src     io.ReaderAt
	lr      *lineReader
	ops     []convOp
	depth   int
	parts   int
	encoded int
}

func (cv *converter) copyRange(start, end int64) {
	if end <= start {
		return
	}
	if n := len(cv.ops); n > 0 && cv.ops[n-1].kind == opCopy && cv.ops[n-1].end == start {
		cv.ops[n-1].end = end
		return
	}
	cv.ops = append(cv.ops, convOp{kind: opCopy, start: start, end: end})
}

// delim is the line that ended an entity: a boundary delimiter of one of
// the enclosing multiparts, or the end of the message (eof).
type delim struct {
	eof        bool
	boundary   string
	close      bool  // "--boundary--"
	start, end int64 // the line, its line end included
}

// entity converts the entity (the message, or a body part) that starts at
// the reader's position. bounds are the boundaries of the enclosing
// multiparts, innermost last; defType the content type when the entity
// has none (RFC 2046 §5.1.5: message/rfc822 in a multipart/digest). It
// returns the line that ended the entity, not yet written.
func (cv *converter) entity(bounds []string, defType string, top bool) (delim, error) {
	where := "the message header"
	if !top {
		if cv.parts++; cv.parts > maxMIMEParts {
			return delim{}, unconvertible("more than %d body parts", maxMIMEParts)
		}
		where = "a body part header"
	}

	// The header: up to the empty line (or a delimiter, or the end).
	hStart := cv.lr.off
	var d delim // what ended the entity when it has no body
	hEnd, bodyStart := int64(0), int64(-1)
	for {
		l, err := cv.lr.next()
		if err == io.EOF {
			d = delim{eof: true, start: cv.lr.off, end: cv.lr.off}
			hEnd = d.start
			break
		}
		if err != nil {
			return delim{}, err
		}
		if dl, ok := isDelimiter(l, bounds); ok {
			d, hEnd = dl, dl.start
			break
		}
		if l.blank() {
			hEnd, bodyStart = l.start, l.end
			break
		}
		if l.eight {
			return delim{}, unconvertible("8-bit octets in %s", where)
		}
	}
	if hEnd-hStart > maxPartHead {
		return delim{}, unconvertible("a header block larger than %d bytes", maxPartHead)
	}
	hdr := make([]byte, hEnd-hStart)
	if _, err := cv.src.ReadAt(hdr, hStart); err != nil && !(errors.Is(err, io.EOF) && len(hdr) == 0) {
		return delim{}, err
	}
	f := parseFields(hdr)
	mediaType, params := defType, map[string]string(nil)
	if ct := f.get("Content-Type"); ct != "" {
		// RFC 2045 §5.2: a Content-Type that cannot be read is text/plain.
		if mt, p, err := mime.ParseMediaType(ct); mt != "" {
			mediaType, params = mt, p
		} else if err != nil {
			mediaType = "text/plain"
		}
	}
	cte := strings.ToLower(f.get("Content-Transfer-Encoding"))
	if bodyStart < 0 {
		// No body: nothing 8-bit to convert below the header.
		cv.copyRange(hStart, hEnd)
		return d, nil
	}

	if strings.HasPrefix(mediaType, "multipart/") {
		return cv.multipart(f, hStart, hEnd, bodyStart, mediaType, params["boundary"], cte, bounds, top)
	}

	// A leaf: find where its body ends and whether it is 8-bit.
	eight, lastEOL := false, int64(0)
	for {
		l, err := cv.lr.next()
		if err == io.EOF {
			d = delim{eof: true, start: cv.lr.off, end: cv.lr.off}
			lastEOL = 0 // at the end of the message the last line end is the body's
			break
		}
		if err != nil {
			return delim{}, err
		}
		if dl, ok := isDelimiter(l, bounds); ok {
			d = dl
			break
		}
		eight = eight || l.eight
		lastEOL = l.eol
	}
	// RFC 2046 §5.1.1: the line end before a delimiter belongs to it.
	contentEnd := max(d.start-lastEOL, bodyStart)
	switch {
	case !eight && (cte == "8bit" || cte == "binary"):
		cv.header(f, hdr, "7bit", top, false)
		cv.copyRange(hEnd, d.start)
	case !eight:
		cv.copyRange(hStart, d.start)
	case strings.HasPrefix(mediaType, "message/") && !strings.HasPrefix(mediaType, "message/global"):
		// message/global, -headers and -delivery-status take any
		// encoding (RFC 6532 §3.7, RFC 6533 §6).
		return delim{}, unconvertible("8-bit octets in a %s part", mediaType)
	case cte != "" && cte != "7bit" && cte != "8bit" && cte != "binary":
		return delim{}, unconvertible("8-bit octets in a part encoded as %s", cte)
	default:
		cv.header(f, hdr, "quoted-printable", top, f.get("Content-Type") == "")
		cv.copyRange(hEnd, bodyStart) // the empty line
		cv.ops = append(cv.ops, convOp{kind: opQP, start: bodyStart, end: contentEnd})
		cv.copyRange(contentEnd, d.start)
		cv.encoded++
	}
	return d, nil
}

// multipart converts the body of a multipart entity whose header is
// src[hStart:hEnd] and body starts at bodyStart.
func (cv *converter) multipart(f fields, hStart, hEnd, bodyStart int64, mediaType, boundary, cte string, bounds []string, top bool) (delim, error) {
	if boundary == "" {
		return delim{}, unconvertible("a %s part without a boundary", mediaType)
	}
	if cv.depth++; cv.depth > maxMIMEDepth {
		return delim{}, unconvertible("multiparts nested more than %d deep", maxMIMEDepth)
	}
	defer func() { cv.depth-- }()
	if cte == "8bit" || cte == "binary" {
		cv.header(f, f.raw, "7bit", top, false)
		cv.copyRange(hEnd, bodyStart)
	} else {
		cv.copyRange(hStart, bodyStart)
	}
	inner := append(bounds[:len(bounds):len(bounds)], boundary)
	partType := "text/plain"
	if mediaType == "multipart/digest" {
		partType = "message/rfc822"
	}
	// The preamble, then parts until the close delimiter, then the
	// epilogue; text outside the parts must be 7-bit already.
	outside := func() (delim, error) {
		start := cv.lr.off
		for {
			l, err := cv.lr.next()
			if err == io.EOF {
				cv.copyRange(start, cv.lr.off)
				return delim{eof: true, start: cv.lr.off, end: cv.lr.off}, nil
			}
			if err != nil {
				return delim{}, err
			}
			if dl, ok := isDelimiter(l, inner); ok {
				cv.copyRange(start, l.start)
				return dl, nil
			}
			if l.eight {
				return delim{}, unconvertible("8-bit octets outside the body parts of a %s", mediaType)
			}
		}
	}
	d, err := outside() // the preamble
	for err == nil && !d.eof && d.boundary == boundary {
		cv.copyRange(d.start, d.end) // our delimiter line
		if d.close {
			d, err = outside() // the epilogue
			break
		}
		d, err = cv.entity(inner, partType, false)
	}
	return d, err
}

// header writes a header block with its Content-Transfer-Encoding fields
// replaced by one saying cte. The top-level header of a converted message
// also gets MIME-Version when it lacks it, and, when it has no
// Content-Type, the charset that says "8-bit, unknown" (RFC 1428 §3).
func (cv *converter) header(f fields, hdr []byte, cte string, top, addType bool) {
	out := make([]byte, 0, len(hdr)+80)
	for _, fl := range f.list {
		if !strings.EqualFold(fl.name, "Content-Transfer-Encoding") {
			out = append(out, fl.raw...)
		}
	}
	if n := len(out); n > 0 && out[n-1] != '\n' {
		out = append(out, '\r', '\n')
	}
	if top && f.get("MIME-Version") == "" {
		out = append(out, "MIME-Version: 1.0\r\n"...)
	}
	if top && addType {
		out = append(out, "Content-Type: text/plain; charset=unknown-8bit\r\n"...)
	}
	out = append(out, "Content-Transfer-Encoding: "+cte+"\r\n"...)
	cv.ops = append(cv.ops, convOp{kind: opBytes, data: out})
}

// fields is a header block split into fields, each with its raw bytes
// (continuation lines and line end included).
type fields struct {
	raw  []byte
	list []field
}

type field struct {
	name string
	raw  []byte
}

func parseFields(h []byte) fields {
	f := fields{raw: h}
	for len(h) > 0 {
		end := bytes.IndexByte(h, '\n') + 1
		if end == 0 {
			end = len(h)
		}
		for end < len(h) && (h[end] == ' ' || h[end] == '\t') {
			if i := bytes.IndexByte(h[end:], '\n'); i >= 0 {
				end += i + 1
			} else {
				end = len(h)
			}
		}
		name := ""
		if colon := bytes.IndexByte(h[:end], ':'); colon >= 0 {
			name = string(bytes.TrimSpace(h[:colon]))
		}
		f.list = append(f.list, field{name: name, raw: h[:end]})
		h = h[end:]
	}
	return f
}

// get returns the unfolded value of the first field called name, "" when
// there is none.
func (f fields) get(name string) string {
	for _, fl := range f.list {
		if strings.EqualFold(fl.name, name) {
			_, v, _ := bytes.Cut(fl.raw, []byte(":"))
			return strings.Join(strings.Fields(string(v)), " ")
		}
	}
	return ""
}

// isDelimiter reports whether l is a boundary delimiter line of one of
// bounds, innermost first (RFC 2046 §5.1.1: "--" boundary, "--" again for
// the last one, then optional white space).
func isDelimiter(l line, bounds []string) (delim, bool) {
	if len(bounds) == 0 || l.long || !bytes.HasPrefix(l.head, []byte("--")) {
		return delim{}, false
	}
	for i := len(bounds) - 1; i >= 0; i-- {
		b := bounds[i]
		rest, ok := bytes.CutPrefix(l.head[2:], []byte(b))
		if !ok {
			continue
		}
		d := delim{boundary: b, start: l.start, end: l.end}
		if r, ok := bytes.CutPrefix(rest, []byte("--")); ok {
			d.close, rest = true, r
		}
		if len(bytes.Trim(rest, " \t\r\n")) == 0 {
			return d, true
		}
	}
	return delim{}, false
}

// lineReader reads a stored message line by line, keeping offsets, with
// bounded memory whatever the length of a line.
type lineReader struct {
	br   *bufio.Reader
	off  int64 // offset of the next line
	head []byte
}

// line is one line of the message: where it is, its first bytes, and
// whether it holds an 8-bit octet.
type line struct {
	start, end int64  // end: after its line end
	eol        int64  // length of its line end: 2 (CRLF), 1 (LF) or 0 (none, at the end)
	head       []byte // its first boundaryHead bytes (line end included when short); valid until the next call
	long       bool   // longer than head
	eight      bool
}

func (l line) blank() bool { return l.end-l.start == l.eol && l.eol > 0 }

func newLineReader(r io.ReaderAt, size int64) *lineReader {
	return &lineReader{br: bufio.NewReaderSize(io.NewSectionReader(r, 0, size), 32<<10), head: make([]byte, 0, boundaryHead)}
}

// next returns the next line, or io.EOF at the end of the message.
func (lr *lineReader) next() (line, error) {
	l := line{start: lr.off}
	lr.head = lr.head[:0]
	var last byte // the byte before the chunk's last one, across chunks
	for {
		chunk, err := lr.br.ReadSlice('\n')
		lr.off += int64(len(chunk))
		if room := boundaryHead - len(lr.head); room > 0 {
			lr.head = append(lr.head, chunk[:min(room, len(chunk))]...)
			l.long = l.long || len(chunk) > room
		} else if len(chunk) > 0 {
			l.long = true
		}
		if !l.eight {
			for _, c := range chunk {
				if c >= 0x80 {
					l.eight = true
					break
				}
			}
		}
		if n := len(chunk); n > 0 && chunk[n-1] == '\n' {
			l.eol = 1
			if n > 1 {
				last = chunk[n-2]
			}
			if last == '\r' {
				l.eol = 2
			}
		} else if n > 0 {
			last = chunk[n-1]
		}
		switch {
		case err == bufio.ErrBufferFull:
			continue
		case err == io.EOF && lr.off > l.start:
			err = nil
		}
		if err != nil {
			return line{}, err
		}
		l.end, l.head = lr.off, lr.head
		return l, nil
	}
}

// IsASCII reports whether b holds no octet above 127, eight at a time (it
// runs over every message delivered to a server with 8BITMIME).
func IsASCII(b []byte) bool {
	for len(b) >= 8 {
		if binary.LittleEndian.Uint64(b)&0x8080808080808080 != 0 {
			return false
		}
		b = b[8:]
	}
	for _, c := range b {
		if c >= 0x80 {
			return false
		}
	}
	return true
}

// copyBufs are the buffers a message is scanned and copied through
// (io.Copy would allocate 32 KiB for every message).
var copyBufs = sync.Pool{New: func() any { b := make([]byte, 32<<10); return &b }}
