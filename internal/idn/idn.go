// Package idn gives the one form in which mailhop compares and looks up a
// domain name: lower case, with internationalized labels as their A-labels
// (RFC 5890), by the Lookup profile of UTS #46 — the form DNS is asked in,
// routes and TLS policies are matched in, DKIM's d= is written in and the
// queue's flushes are counted under.
package idn

import (
	"errors"
	"strings"
	"unicode/utf8"

	"golang.org/x/net/idna"
)

// ALabel returns d lower-cased, its labels in Unicode as A-labels
// ("Bücher.example" → "xn--bcher-kva.example"); an error when d is not
// ASCII and no valid internationalized domain name (invalid UTF-8
// included). An ASCII name is only
// lower-cased (no allocation when it is lower case already). A trailing dot
// is kept: callers that do not want it trim it first.
func ALabel(d string) (string, error) {
	for i := 0; i < len(d); i++ {
		if d[i] >= 0x80 {
			// idna reads an invalid byte as U+FFFD and encodes that
			// (which it would itself refuse) into an A-label.
			if !utf8.ValidString(d) {
				return "", errors.New("idna: domain name is not valid UTF-8")
			}
			a, err := idna.Lookup.ToASCII(d)
			if err != nil {
				return "", err
			}
			return strings.ToLower(a), nil
		}
	}
	return strings.ToLower(d), nil
}

// Key is ALabel's form of d, or d lower-cased when it is no valid
// internationalized name: the key under which such a name is compared, so
// that either spelling of a domain finds the same entry.
func Key(d string) string {
	if a, err := ALabel(d); err == nil {
		return a
	}
	return strings.ToLower(d)
}
