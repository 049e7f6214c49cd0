package queue

import (
	"fmt"
	"strings"
	"time"
)

// RcptState is where one recipient of a queued message stands.
type RcptState uint8

// Recipient states. A message leaves the queue when no recipient is Pending.
const (
	Pending   RcptState = iota // waiting for its first or next delivery attempt
	Delivered                  // the next server answered 250 for it
	Failed                     // permanently failed (5xx, expired, bounced by an operator)
)

// String returns the state's name as shown by `mailhop queue list`.
func (s RcptState) String() string {
	switch s {
	case Pending:
		return "pending"
	case Delivered:
		return "delivered"
	case Failed:
		return "failed"
	}
	return "unknown"
}

// Notify is the set of DSN NOTIFY conditions (RFC 3461 §4.1) of a recipient.
// The zero value means the client gave no NOTIFY parameter: failures and
// delays are reported, as RFC 3461 §4.1 says a server does by default.
type Notify uint8

// Notify conditions.
const (
	NotifyNever   Notify = 1 << iota // NEVER: no report at all
	NotifySuccess                    // SUCCESS
	NotifyFailure                    // FAILURE
	NotifyDelay                      // DELAY
)

// Has reports whether a report for condition c is wanted.
func (n Notify) Has(c Notify) bool {
	if n == 0 {
		return c == NotifyFailure || c == NotifyDelay
	}
	return n&c != 0
}

// ParseNotify reads a NOTIFY value as SMTP and sendmail's -N option write it:
// "NEVER", or a comma-separated list of SUCCESS, FAILURE and DELAY, in any
// case. "" is the zero value (the default conditions).
func ParseNotify(s string) (Notify, error) {
	if s == "" {
		return 0, nil
	}
	var n Notify
	for _, part := range strings.Split(s, ",") {
		var c Notify
		switch strings.ToUpper(strings.TrimSpace(part)) {
		case "NEVER":
			c = NotifyNever
		case "SUCCESS":
			c = NotifySuccess
		case "FAILURE":
			c = NotifyFailure
		case "DELAY":
			c = NotifyDelay
		default:
			return 0, fmt.Errorf("NOTIFY %q: %q is not NEVER, SUCCESS, FAILURE or DELAY", s, part)
		}
		if n&c != 0 {
			return 0, fmt.Errorf("NOTIFY %q: %s given twice", s, strings.TrimSpace(part))
		}
		n |= c
	}
	if n&NotifyNever != 0 && n != NotifyNever {
		return 0, fmt.Errorf("NOTIFY %q: NEVER cannot be combined with other conditions", s)
	}
	return n, nil
}

// String renders n as the NOTIFY parameter's value ("" when unset).
func (n Notify) String() string {
	if n == 0 {
		return ""
	}
	if n&NotifyNever != 0 {
		return "NEVER"
	}
	var parts []string
	if n&NotifySuccess != 0 {
		parts = append(parts, "SUCCESS")
	}
	if n&NotifyFailure != 0 {
		parts = append(parts, "FAILURE")
	}
	if n&NotifyDelay != 0 {
		parts = append(parts, "DELAY")
	}
	return strings.Join(parts, ",")
}

// Recipient is one envelope recipient and its own delivery state.
type Recipient struct {
	Address string // as given in RCPT TO, without angle brackets
	ORCPT   string // DSN ORCPT as "type;address" (RFC 3461 §4.2), or ""
	Notify  Notify

	State RcptState
	Code  int    // the last reply code for this recipient (0: none yet)
	Reply string // the last reply text or error, for `queue list` and DSNs
}

// Domain returns the recipient's domain, lower-cased ("" if there is none).
func (r *Recipient) Domain() string {
	i := strings.LastIndexByte(r.Address, '@')
	if i < 0 {
		return ""
	}
	return strings.ToLower(r.Address[i+1:])
}

// Envelope is everything about a queued message except its body: the SMTP
// envelope with its ESMTP parameters, where it came from, and where its
// delivery stands. The queue hands out copies; change one only through the
// queue's methods.
type Envelope struct {
	ID         string
	From       string // MAIL FROM without angle brackets; "" is the null sender
	Recipients []Recipient
	Arrived    time.Time
	User       string // authenticated user, "" if none
	ClientAddr string // client IP address
	ClientHelo string // HELO/EHLO name the client gave

	BodyType   string // "7BIT", "8BITMIME" or "BINARYMIME" ("" when not given)
	SMTPUTF8   bool   // MAIL FROM carried SMTPUTF8
	RequireTLS bool   // REQUIRETLS (RFC 8689)
	Ret        string // DSN RET: "FULL", "HDRS" or ""
	EnvID      string // DSN ENVID, or ""
	Size       int64  // body size in bytes as stored

	Attempts    int       // delivery attempts made so far
	NextAttempt time.Time // when the scheduler hands it out next
	LastError   string    // the last attempt's error, for operators
	Held        bool      // on hold: not delivered until released
	DelayWarned bool      // a "delayed" DSN has been sent
}

// Pending returns the number of recipients still waiting for delivery.
func (e *Envelope) Pending() int {
	n := 0
	for i := range e.Recipients {
		if e.Recipients[i].State == Pending {
			n++
		}
	}
	return n
}

// clone returns a deep copy of e.
func (e *Envelope) clone() *Envelope {
	c := *e
	c.Recipients = append([]Recipient(nil), e.Recipients...)
	return &c
}
