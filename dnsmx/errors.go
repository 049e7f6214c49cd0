package dnsmx

import (
	"errors"
	"fmt"
)

// Enhanced status codes (RFC 3463) carried by Error.
const (
	// CodeNoSuchDomain: the domain (or a host looked up by name) does not
	// exist, or has neither MX nor address ("Bad destination system
	// address"); MX hosts none of which has an address are CodeUnroutable.
	CodeNoSuchDomain = "5.1.2"
	// CodeUnroutable: the domain's MX records name no host with an
	// address ("Unable to route", RFC 3463 X.4.4), as Postfix reports it.
	CodeUnroutable = "5.4.4"
	// CodeNullMX: the domain publishes a null MX (RFC 7505 §3.2).
	CodeNullMX = "5.1.10"
	// CodeTemporary: a DNS failure that may heal ("Routing server failure").
	CodeTemporary = "4.4.3"
)

// Error is every failure LookupMX and LookupHost return.
type Error struct {
	Domain    string // the name that was asked for
	Temporary bool   // true: retry later (SERVFAIL, REFUSED, timeout, network); false: bounce
	Enhanced  string // RFC 3463 code: CodeNoSuchDomain, CodeUnroutable, CodeNullMX or CodeTemporary
	Msg       string // what went wrong, for logs and DSNs
}

// Error returns a one-line description: domain, enhanced code and message.
func (e *Error) Error() string {
	return fmt.Sprintf("dns %s: %s (%s)", e.Domain, e.Msg, e.Enhanced)
}

// IsTemporary reports whether err is a temporary DNS failure. Errors that are
// not (or do not wrap) a *Error are temporary: an unknown failure is retried.
// A nil error is not a failure, so not temporary.
func IsTemporary(err error) bool {
	if err == nil {
		return false
	}
	var e *Error
	if errors.As(err, &e) {
		return e.Temporary
	}
	return true
}

func permanent(domain, code, format string, args ...any) *Error {
	return &Error{Domain: domain, Enhanced: code, Msg: fmt.Sprintf(format, args...)}
}

func temporary(domain, format string, args ...any) *Error {
	return &Error{Domain: domain, Temporary: true, Enhanced: CodeTemporary, Msg: fmt.Sprintf(format, args...)}
}
