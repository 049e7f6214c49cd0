package inbound

import (
	"errors"
	"strings"
	"unicode/utf8"

	"github.com/mailhop/mailhop/dnsmx"
)

// Address is a mailbox of an SMTP path, parsed by RFC 5321 §4.1.2 (and RFC
// 6531 §3.3 when UTF-8 is allowed).
type Address struct {
	Local   string // as sent: a dot-string, or a quoted-string with its quotes
	Domain  string // a domain, or an address literal with its brackets
	Literal bool   // Domain is an address literal ([192.0.2.1], [IPv6:...])
}

// String returns the address as local@domain.
func (a Address) String() string { return a.Local + "@" + a.Domain }

// Key returns the address with the domain lower-cased: two recipients with
// the same Key are the same mailbox (local parts are case-sensitive, RFC
// 5321 §2.4).
func (a Address) Key() string { return a.Local + "@" + strings.ToLower(a.Domain) }

// errAddressSyntax is the one error ParseAddress returns: the client is told
// only "bad address syntax".
var errAddressSyntax = errors.New("bad address syntax")

// maxPath is RFC 5321 §4.5.3.1.3's limit: 256 octets of path minus the
// angle brackets. The local part's 64 octets (§4.5.3.1.1) are not
// enforced, as Postfix does not: SRS and VERP senders of forwarded and list
// mail pass them, and §4.5.3.1 asks for no limits where possible.
const maxPath = 254

// ParseAddress parses a Mailbox (RFC 5321 §4.1.2): Local-part "@" (Domain /
// address-literal). utf8OK allows UTF-8 in the local part and domain labels
// (RFC 6531, only for a transaction with SMTPUTF8). Anything else — several
// "@", an empty label, a trailing dot, a source route, a control
// character, a general address literal — is an error. The percent hack and
// bang paths are syntactically plain local parts: they are only characters
// to mailhop, which never interprets them.
func ParseAddress(s string, utf8OK bool) (Address, error) {
	if len(s) > maxPath || !utf8.ValidString(s) {
		return Address{}, errAddressSyntax
	}
	var local string
	var rest string
	if strings.HasPrefix(s, `"`) {
		end := quotedEnd(s, utf8OK)
		if end < 0 {
			return Address{}, errAddressSyntax
		}
		local, rest = s[:end], s[end:]
	} else {
		at := strings.IndexByte(s, '@')
		if at < 0 {
			return Address{}, errAddressSyntax
		}
		local, rest = s[:at], s[at:]
		if !isDotString(local, utf8OK) {
			return Address{}, errAddressSyntax
		}
	}
	if !strings.HasPrefix(rest, "@") {
		return Address{}, errAddressSyntax
	}
	domain := rest[1:]
	a := Address{Local: local, Domain: domain}
	if strings.HasPrefix(domain, "[") {
		if !isAddressLiteral(domain) {
			return Address{}, errAddressSyntax
		}
		a.Literal = true
		return a, nil
	}
	if !isDomain(domain, utf8OK) {
		return Address{}, errAddressSyntax
	}
	return a, nil
}

// quotedEnd returns the length of the Quoted-string at the start of s
// (RFC 5321: DQUOTE *QcontentSMTP DQUOTE), or -1.
func quotedEnd(s string, utf8OK bool) int {
	for i := 1; i < len(s); i++ {
		c := s[i]
		switch {
		case c == '"':
			return i + 1
		case c == '\\':
			// quoted-pairSMTP = %d92 %d32-126
			i++
			if i >= len(s) || s[i] < 32 || s[i] > 126 {
				return -1
			}
		case c >= 32 && c <= 126: // qtextSMTP: 32-33, 35-91, 93-126
		case c >= 0x80 && utf8OK:
		default:
			return -1
		}
	}
	return -1
}

// isAtext reports whether c may appear in an Atom (RFC 5322 atext).
func isAtext(c byte, utf8OK bool) bool {
	switch {
	case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9':
		return true
	case c >= 0x80:
		return utf8OK
	}
	return strings.IndexByte("!#$%&'*+-/=?^_`{|}~", c) >= 0
}

// isDotString checks Dot-string = Atom *("." Atom).
func isDotString(s string, utf8OK bool) bool {
	if s == "" {
		return false
	}
	for _, atom := range strings.Split(s, ".") {
		if atom == "" {
			return false
		}
		for i := 0; i < len(atom); i++ {
			if !isAtext(atom[i], utf8OK) {
				return false
			}
		}
	}
	return true
}

// isDomain checks Domain = sub-domain *("." sub-domain), sub-domain =
// Let-dig [Ldh-str] (RFC 5321), or a U-label with utf8OK. No trailing dot.
func isDomain(s string, utf8OK bool) bool { return dnsmx.IsDomainSyntax(s, utf8OK) }

// isAddressLiteral checks "[" IPv4-address-literal / IPv6-address-literal "]"
// (dnsmx.ParseAddressLiteral). General-address-literal (a standardized tag
// other than IPv6) is refused. A literal that is not a unicast address is
// well-formed: Rcpt refuses it as a destination.
func isAddressLiteral(s string) bool {
	_, err := dnsmx.ParseAddressLiteral(s)
	return err == nil || errors.Is(err, dnsmx.ErrLiteralNotUnicast)
}
