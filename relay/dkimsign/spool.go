package dkimsign

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"github.com/mailhop/mailhop/relay/mailhdr"
	"io"
	"os"
	"strings"
)

// SpoolMemory is how much of a body Spool keeps in memory; the rest goes
// to a temporary file.
const SpoolMemory = 64 << 10

// Signed is a message ready to queue: its DKIM-Signature fields, then the
// message as it was read. Close it when done, whether it was read or not.
type Signed struct {
	// Fields holds the DKIM-Signature fields put above the message, ""
	// when the message is not signed (no key for its From: domain, or a
	// header block that is incomplete or over MaxHeaderBytes).
	Fields string
	// Keys are the keys that signed, in the order of Fields.
	Keys []*Key

	r    io.Reader
	file *os.File
}

// Read reads the signed message.
func (m *Signed) Read(p []byte) (int, error) { return m.r.Read(p) }

// Close releases the temporary file, if any.
func (m *Signed) Close() error {
	if m.file == nil {
		return nil
	}
	err := m.file.Close()
	m.file = nil
	return err
}

func newReader(r io.Reader) *bufio.Reader { return bufio.NewReaderSize(r, 32<<10) }

// Spool prepares msg (the whole message, header and body, as it will be
// queued) for the queue: when a key applies it reads msg to its end,
// computing the signatures while it keeps the body — in memory up to
// SpoolMemory, beyond that in a temporary file in dir (os.TempDir() if
// ""), unlinked at once so a crash leaves nothing behind. Without a key
// only the header block is read ahead and the rest streams from msg as
// the result is read.
//
// An error from msg (a size limit, a client gone) is returned as it is;
// other errors (the temporary file) are wrapped. On error nothing needs
// closing.
func (s *Signer) Spool(msg io.Reader, dir string) (*Signed, error) {
	return s.SpoolFor(msg, dir, nil)
}

// SpoolFor is Spool, signing only when allow (if not nil) accepts the
// domain of the message's From: field — for example, only domains the
// authenticated user may send as.
func (s *Signer) SpoolFor(msg io.Reader, dir string, allow func(fromDomain string) bool) (*Signed, error) {
	br := newReader(msg)
	h, err := mailhdr.Read(br, MaxHeaderBytes)
	unchanged := &Signed{r: io.MultiReader(bytes.NewReader(h), br)}
	switch {
	case errors.Is(err, mailhdr.ErrIncomplete) && headerOnly(h, br):
		// A message without an empty line: h holds all of it.
	case errors.Is(err, mailhdr.ErrIncomplete):
		return unchanged, nil
	case err != nil:
		return nil, err
	}
	// The header ends at its empty line, or before the first line that is
	// neither a field nor a continuation (the body starts there for the
	// relay and for Postfix; a verifier that reads to the empty line would
	// take those lines for header). Where no empty line ends it — a message
	// that is all header (RFC 5322 §3.5: the body is optional), or one
	// whose text follows its fields without one — the message is signed
	// with that line in place, and queued with it when, and only when, it
	// is signed: the signature's body is then the body every reader sees.
	var body io.Reader = br
	if end := mailhdr.HeaderEnd(h); string(h[end:]) != "\r\n" && string(h[end:]) != "\n" {
		body = io.MultiReader(bytes.NewReader(h[end:]), br)
		h = append(h[:end:end], "\r\n"...)
	}
	keys, hk := s.keysForHeader(h, allow)
	if keys == nil {
		return unchanged, nil
	}
	sp := &spill{dir: dir}
	fields, err := signWith(keys, hk, h, body, sp)
	if err != nil {
		sp.close()
		return nil, err
	}
	return &Signed{
		Fields: fields,
		Keys:   keys,
		r:      io.MultiReader(strings.NewReader(fields), bytes.NewReader(h), sp.reader()),
		file:   sp.file,
	}, nil
}

// headerOnly reports whether h, which mailhdr.Read gave back incomplete, is
// a whole message of header fields: it ended at the end of the input, within
// the limit, on a line end, and starts with a field.
func headerOnly(h []byte, br *bufio.Reader) bool {
	if _, err := br.Peek(1); err != io.EOF {
		return false
	}
	return len(h) <= MaxHeaderBytes && bytes.HasSuffix(h, []byte("\r\n")) && mailhdr.StartsWithField(h)
}

// spill is a writer that keeps the first SpoolMemory bytes in memory and
// the rest in an unlinked temporary file.
type spill struct {
	dir  string
	mem  []byte
	file *os.File
	n    int64 // bytes in file
}

func (s *spill) Write(p []byte) (int, error) {
	if s.file == nil {
		if room := SpoolMemory - len(s.mem); len(p) <= room {
			s.mem = append(s.mem, p...)
			return len(p), nil
		}
		f, err := os.CreateTemp(s.dir, ".dkimspool-*")
		if err != nil {
			return 0, fmt.Errorf("spool: %w", err)
		}
		// Unlinked at once: the open descriptor keeps the data, and
		// nothing is left to clean up after a crash.
		if err := os.Remove(f.Name()); err != nil {
			f.Close()
			return 0, fmt.Errorf("spool: %w", err)
		}
		s.file = f
	}
	n, err := s.file.Write(p)
	s.n += int64(n)
	if err != nil {
		return n, fmt.Errorf("spool: %w", err)
	}
	return n, nil
}

// reader returns a reader over everything written.
func (s *spill) reader() io.Reader {
	if s.file == nil {
		return bytes.NewReader(s.mem)
	}
	return io.MultiReader(bytes.NewReader(s.mem), io.NewSectionReader(s.file, 0, s.n))
}

func (s *spill) close() {
	if s.file != nil {
		s.file.Close()
		s.file = nil
	}
}
