// Package smtperr is the one error type that carries SMTP meaning in mailhop:
// a reply code, an RFC 3463 enhanced status code and a text, and whether the
// failure is temporary (retry later) or permanent (bounce).
//
// The rule everywhere is "an unknown error is temporary": Classify turns any
// error that carries no SMTP meaning into a temporary *Error, so mail is
// retried, never dropped.
package smtperr

import (
	"errors"
	"fmt"
	"strconv"
	"strings"

	"github.com/emersion/go-smtp"
)

// Error is a failure with SMTP meaning.
type Error struct {
	// Code is the three-digit SMTP reply code, or 0 when no SMTP reply was
	// involved (a DNS error, a refused connection, a local check).
	Code int
	// Enhanced is the RFC 3463 status "class.subject.detail", or "".
	Enhanced string
	// Msg is the reply text (or a description of the local failure).
	Msg string
}

// Error renders e as "550 5.1.1 text" (parts that are missing are left out).
func (e *Error) Error() string {
	var parts []string
	if e.Code != 0 {
		parts = append(parts, strconv.Itoa(e.Code))
	}
	if e.Enhanced != "" {
		parts = append(parts, e.Enhanced)
	}
	if e.Msg != "" {
		parts = append(parts, e.Msg)
	}
	return strings.Join(parts, " ")
}

// Temporary reports whether the failure may heal: a 4xx reply, or with no
// reply code an enhanced status that is not of class 5. Anything else
// (no code and no status) is temporary too.
func (e *Error) Temporary() bool {
	switch {
	case e.Code >= 500 && e.Code < 600:
		return false
	case e.Code >= 400 && e.Code < 500:
		return true
	case e.Code == 0 && strings.HasPrefix(e.Enhanced, "5."):
		return false
	}
	return true
}

// Status returns the enhanced status to report for e: Enhanced when it is a
// valid RFC 3463 code that agrees with the class of the failure, else a
// generic "4.0.0" or "5.0.0".
func (e *Error) Status() string {
	class := "4"
	if !e.Temporary() {
		class = "5"
	}
	if strings.HasPrefix(e.Enhanced, class+".") && ValidEnhanced(e.Enhanced) {
		return e.Enhanced
	}
	return class + ".0.0"
}

// New returns an *Error with a formatted message.
func New(code int, enhanced, format string, args ...any) *Error {
	return &Error{Code: code, Enhanced: enhanced, Msg: fmt.Sprintf(format, args...)}
}

// FromSMTP converts a go-smtp reply error. go-smtp's client takes any three
// dot-separated numbers after the reply code for an enhanced status
// ("5.1234.1", "-5.1.1", "7.0.0"); one that is no RFC 3463 code is left in
// the text, so it reaches no DSN's Status field.
func FromSMTP(e *smtp.SMTPError) *Error {
	out := &Error{Code: e.Code, Msg: strings.ReplaceAll(e.Message, "\n", " ")}
	if e.EnhancedCode != smtp.NoEnhancedCode && e.EnhancedCode != (smtp.EnhancedCode{}) {
		enh := fmt.Sprintf("%d.%d.%d", e.EnhancedCode[0], e.EnhancedCode[1], e.EnhancedCode[2])
		if ValidEnhanced(enh) {
			out.Enhanced = enh
		} else {
			out.Msg = strings.TrimSuffix(enh+" "+out.Msg, " ")
		}
	}
	return out
}

// Classify returns err as an *Error: itself if it is (or wraps) one, a
// converted go-smtp reply, or else a temporary error with status 4.0.0
// carrying err's text. Classify(nil) is nil.
func Classify(err error) *Error {
	if err == nil {
		return nil
	}
	var e *Error
	if errors.As(err, &e) {
		return e
	}
	var se *smtp.SMTPError
	if errors.As(err, &se) {
		return FromSMTP(se)
	}
	return &Error{Enhanced: "4.0.0", Msg: err.Error()}
}

// ParseReply splits a stored reply text "5.1.1 user unknown" into its
// enhanced status and the rest. A text without a status returns "" and s.
func ParseReply(s string) (enhanced, text string) {
	first, rest, _ := strings.Cut(s, " ")
	if ValidEnhanced(first) {
		return first, rest
	}
	return "", s
}

// ValidEnhanced reports whether s has the shape of an RFC 3463 status code:
// class 2, 4 or 5, a subject of 1-3 digits and a detail of 1-3 digits.
func ValidEnhanced(s string) bool {
	p := strings.Split(s, ".")
	if len(p) != 3 || (p[0] != "2" && p[0] != "4" && p[0] != "5") {
		return false
	}
	for _, n := range p[1:] {
		if len(n) == 0 || len(n) > 3 {
			return false
		}
		for _, c := range n {
			if c < '0' || c > '9' {
				return false
			}
		}
	}
	return true
}
