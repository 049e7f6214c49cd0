package dkimsign

import (
	"bufio"
	"bytes"
	"errors"
	"io"
	"mime"
	"net/mail"
	"strings"
)

// MaxHeaderBytes bounds the header block Spool reads into memory; a
// message with a longer header is queued unsigned.
const MaxHeaderBytes = 256 << 10

// errHeaderIncomplete: the header block did not end within MaxHeaderBytes,
// or the message ended before the empty line that ends it.
var errHeaderIncomplete = errors.New("dkimsign: header block incomplete or too long")

// readHeader reads the header block from br, up to and including the empty
// line that ends it (RFC 5322 §2.1). On errHeaderIncomplete the bytes read
// so far are returned; any other error is br's.
func readHeader(br *bufio.Reader, limit int) ([]byte, error) {
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
			return h, errHeaderIncomplete
		}
		switch err {
		case nil, bufio.ErrBufferFull:
		case io.EOF:
			return h, errHeaderIncomplete
		default:
			return h, err
		}
	}
}

// fields returns the unfolded header fields of a header block as name
// (as written) and value pairs, in order.
func fields(h []byte) [][2]string {
	var out [][2]string
	for len(h) > 0 {
		i := bytes.IndexByte(h, '\n')
		var line []byte
		if i < 0 {
			line, h = h, nil
		} else {
			line, h = h[:i+1], h[i+1:]
		}
		line = bytes.TrimRight(line, "\r\n")
		if len(line) == 0 {
			break
		}
		if (line[0] == ' ' || line[0] == '\t') && len(out) > 0 {
			out[len(out)-1][1] += " " + strings.TrimSpace(string(line))
			continue
		}
		name, value, ok := bytes.Cut(line, []byte(":"))
		if !ok {
			continue
		}
		out = append(out, [2]string{strings.TrimSpace(string(name)), strings.TrimSpace(string(value))})
	}
	return out
}

// addrParser decodes encoded words in display names with any charset: only
// the addresses matter here.
var addrParser = mail.AddressParser{WordDecoder: &mime.WordDecoder{
	CharsetReader: func(_ string, r io.Reader) (io.Reader, error) { return r, nil },
}}

// fromDomain returns the domain of the author (RFC 5322 §3.6.2): the
// message must have exactly one From field, and all its mailboxes must be
// in one domain. "" means the message is not to be signed.
func fromDomain(fs [][2]string) string {
	var from string
	n := 0
	for _, f := range fs {
		if strings.EqualFold(f[0], "From") {
			from = f[1]
			n++
		}
	}
	if n != 1 {
		return ""
	}
	list, err := addrParser.ParseList(from)
	if err != nil || len(list) == 0 {
		return ""
	}
	domain := ""
	for _, a := range list {
		at := strings.LastIndexByte(a.Address, '@')
		if at < 0 {
			return ""
		}
		d := strings.ToLower(a.Address[at+1:])
		if domain != "" && d != domain {
			return ""
		}
		domain = d
	}
	return domain
}

// signedFields are the header fields signed when present (RFC 6376 §5.4.1).
var signedFields = []string{
	"From", "To", "Cc", "Subject", "Date", "Message-ID", "In-Reply-To",
	"References", "MIME-Version", "Content-Type", "Content-Transfer-Encoding", "Reply-To",
}

// overSigned are listed once more than they occur (RFC 6376 §8.15), so a
// field of that name added in transit breaks the signature.
var overSigned = map[string]bool{"From": true, "To": true, "Subject": true, "Date": true, "Message-ID": true}

// headerKeys returns the h= list for a message with these fields.
func headerKeys(fs [][2]string) []string {
	var keys []string
	for _, name := range signedFields {
		n := 0
		for _, f := range fs {
			if strings.EqualFold(f[0], name) {
				n++
			}
		}
		if overSigned[name] {
			n++
		}
		for range n {
			keys = append(keys, name)
		}
	}
	return keys
}
