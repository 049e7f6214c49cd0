package dkimsign

import (
	"io"
	"mime"
	"net/mail"
	"strings"

	"github.com/mailhop/mailhop/relay/mailhdr"
)

// MaxHeaderBytes bounds the header block Spool reads into memory; a
// message with a longer header is queued unsigned.
const MaxHeaderBytes = 256 << 10

// fields returns the unfolded header fields of a header block as name
// (as written) and value pairs, in order.
func fields(h []byte) [][2]string {
	var out [][2]string
	mailhdr.Fields(h, func(name, value []byte) bool {
		out = append(out, [2]string{string(name), mailhdr.Unfold(value)})
		return true
	})
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

// signedFields are the header fields signed when present (RFC 6376 §5.4.1;
// List-Unsubscribe and List-Unsubscribe-Post must be, RFC 8058 §4, for
// one-click unsubscribe to count).
var signedFields = []string{
	"From", "To", "Cc", "Subject", "Date", "Message-ID", "In-Reply-To",
	"References", "MIME-Version", "Content-Type", "Content-Transfer-Encoding", "Reply-To",
	"List-Unsubscribe", "List-Unsubscribe-Post",
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
