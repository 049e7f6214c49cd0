package inbound

import (
	"errors"
	"sync"
	"time"

	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"
	"golang.org/x/crypto/bcrypt"

	"github.com/mailhop/mailhop/relay/config"
)

// Replies of AUTH (RFC 4954 §6).
var (
	errAuthInvalid = &smtp.SMTPError{Code: 535, EnhancedCode: smtp.EnhancedCode{5, 7, 8},
		Message: "Authentication credentials invalid"}
	errAuthMalformed = &smtp.SMTPError{Code: 501, EnhancedCode: smtp.EnhancedCode{5, 5, 2},
		Message: "Malformed authentication response"}
	errAuthTooMany = &smtp.SMTPError{Code: 421, EnhancedCode: smtp.EnhancedCode{4, 7, 0},
		Message: "Too many failed authentications, closing connection"}
	errAuthBusy = &smtp.SMTPError{Code: 454, EnhancedCode: smtp.EnhancedCode{4, 7, 0},
		Message: "Temporary authentication failure, try again later"}
)

// authWaitMax bounds how long a password check waits for a place while the
// checks under way for its address could reach limits.max_auth_failures
// (each check is one bcrypt comparison, tens of milliseconds); past it the
// AUTH is answered 454 4.7.0 and the session goes on.
var authWaitMax = 30 * time.Second

// dummyHashes holds one hash per bcrypt cost (int → []byte), made on first
// use, for comparing the passwords of unknown users.
var dummyHashes sync.Map

// dummyHash returns a hash of a fixed password made with cost.
func dummyHash(cost int) []byte {
	if h, ok := dummyHashes.Load(cost); ok {
		return h.([]byte)
	}
	h, err := bcrypt.GenerateFromPassword([]byte("mailhop dummy password"), cost)
	if err != nil { // cost out of range: cannot happen with usualCost
		h, _ = bcrypt.GenerateFromPassword([]byte("mailhop dummy password"), bcrypt.DefaultCost)
	}
	actual, _ := dummyHashes.LoadOrStore(cost, h)
	return actual.([]byte)
}

// usualCost is the bcrypt cost most of the configured users' hashes have
// (the higher one on a tie; bcrypt.DefaultCost without users). An unknown
// user's password is compared at that cost: a dummy hash of a fixed cost
// would take a different time than the real hashes whenever their cost
// differs (the cost is the operator's choice), and tell an attacker which
// user names exist.
func usualCost(users []config.User) int {
	count := map[int]int{}
	best, bestN := bcrypt.DefaultCost, 0
	for _, u := range users {
		c, err := bcrypt.Cost([]byte(u.PasswordHash))
		if err != nil {
			continue
		}
		count[c]++
		if n := count[c]; n > bestN || n == bestN && c > best {
			best, bestN = c, n
		}
	}
	return best
}

// checkPassword compares password with the user's bcrypt hash. For an
// unknown user (hash "") it compares with a dummy hash of dummyCost, the
// cost of the real hashes, so the time taken does not tell whether a user
// exists.
func checkPassword(hash string, password string, dummyCost int) bool {
	if hash == "" {
		bcrypt.CompareHashAndPassword(dummyHash(dummyCost), []byte(password))
		return false
	}
	return bcrypt.CompareHashAndPassword([]byte(hash), []byte(password)) == nil
}

// loginServer is the server side of AUTH LOGIN (draft-murchison-sasl-login):
// "Username:", then "Password:". go-sasl has only the client.
type loginServer struct {
	step     int
	username string
	check    func(username, password string) error
}

func (l *loginServer) Next(response []byte) (challenge []byte, done bool, err error) {
	switch l.step {
	case 0:
		l.step = 1
		if response == nil { // no initial response
			return []byte("Username:"), false, nil
		}
		fallthrough
	case 1:
		l.username = string(response)
		l.step = 2
		return []byte("Password:"), false, nil
	case 2:
		l.step = 3
		return nil, true, l.check(l.username, string(response))
	}
	return nil, false, errAuthMalformed
}

// countedServer wraps a SASL mechanism: it turns errors without SMTP
// meaning (go-sasl's "invalid response") into 501, and reports every
// failure to the session's failure counter, which may slow the reply down
// or turn it into 421.
type countedServer struct {
	sasl.Server
	fail func(err error) error
}

func (c *countedServer) Next(response []byte) ([]byte, bool, error) {
	challenge, done, err := c.Server.Next(response)
	if err != nil {
		return nil, false, c.fail(err)
	}
	return challenge, done, nil
}

// checkedError is the error of a password check that failed (fails: the
// failures of the address so far, this one counted), that was refused
// before the password was looked at (refused: the address is blocked), or
// that waited authWaitMax in vain for the checks under way (busy).
type checkedError struct {
	fails   int
	refused bool
	busy    bool
}

func (e *checkedError) Error() string {
	switch {
	case e.refused:
		return "authentication refused: too many failures"
	case e.busy:
		return "authentication not checked: too many checks under way"
	}
	return "authentication failed"
}

// authMechanisms are the mechanisms offered (after TLS only; go-smtp does
// not advertise or accept AUTH before TLS).
var authMechanisms = []string{sasl.Plain, sasl.Login}

// AuthMechanisms implements smtp.AuthSession.
func (ss *session) AuthMechanisms() []string { return authMechanisms }

// Auth implements smtp.AuthSession.
func (ss *session) Auth(mech string) (sasl.Server, error) {
	var inner sasl.Server
	switch mech {
	case sasl.Plain:
		inner = sasl.NewPlainServer(func(identity, username, password string) error {
			if identity != "" && identity != username {
				// Counted, and taking the same time, as a wrong password.
				return ss.check(username, "authorization identity", func(cfg *config.Config) bool {
					checkPassword("", password, usualCost(cfg.User))
					return false
				})
			}
			return ss.authenticate(username, password)
		})
	case sasl.Login:
		inner = &loginServer{check: ss.authenticate}
	default:
		return nil, smtp.ErrAuthUnknownMechanism
	}
	return &countedServer{Server: inner, fail: ss.authFailed}, nil
}

// authenticate checks a user's password; on success the session is
// authenticated as that user. Passwords are never logged.
func (ss *session) authenticate(username, password string) error {
	return ss.check(username, "", func(cfg *config.Config) bool {
		hash := ""
		if u := cfg.FindUser(username); u != nil {
			hash = u.PasswordHash
		}
		return checkPassword(hash, password, usualCost(cfg.User))
	})
}

// check runs one password check (ok) for username, within the client
// address's AUTH failure limit: a check is not even started when the
// address is blocked (answered 421), and waits while the checks already
// under way for it could reach limits.max_auth_failures (authFailures.begin;
// answered 454 after authWaitMax). A failure (logged with reason, when
// given) is counted as the check ends. Clients in trusted_networks are
// never refused nor kept waiting, as they are never refused at connect.
func (ss *session) check(username, reason string, ok func(*config.Config) bool) error {
	s, cfg := ss.s, ss.s.cfg.Load()
	lim := cfg.Limits
	trusted := cfg.IsTrusted(ss.ip)
	if !trusted {
		if err := ss.reserveCheck(lim); err != nil {
			why := "address blocked"
			if err.busy {
				why = "too many checks under way"
			}
			ss.log.Info("auth failed", "user", username, "reason", why)
			return err
		}
	}
	ended := trusted
	defer func() {
		if !ended { // ok panicked: give the place back, count nothing
			s.authFails.end(ss.ip, time.Now(), lim.AuthBlockTime.Duration, lim.MaxAuthFailures, false)
		}
	}()
	good := ok(cfg)
	n := 0
	if trusted {
		if !good {
			n = s.authFails.fail(ss.ip, time.Now(), lim.AuthBlockTime.Duration, lim.MaxAuthFailures)
		}
	} else {
		ended = true
		n = s.authFails.end(ss.ip, time.Now(), lim.AuthBlockTime.Duration, lim.MaxAuthFailures, !good)
	}
	if !good {
		if reason != "" {
			ss.log.Info("auth failed", "user", username, "reason", reason)
		} else {
			ss.log.Info("auth failed", "user", username)
		}
		return &checkedError{fails: n}
	}
	ss.user = username
	ss.log.Info("auth succeeded", "user", username)
	return nil
}

// reserveCheck reserves a password check for the session's address
// (authFailures.begin), waiting up to authWaitMax while the checks under
// way stand in the way. The error is refused when the address is blocked,
// busy when the wait ran out.
func (ss *session) reserveCheck(lim config.Limits) *checkedError {
	var timeout <-chan time.Time
	for {
		ok, wait := ss.s.authFails.begin(ss.ip, time.Now(), lim.AuthBlockTime.Duration, lim.MaxAuthFailures)
		switch {
		case ok:
			return nil
		case wait == nil:
			return &checkedError{refused: true}
		}
		if timeout == nil {
			t := time.NewTimer(authWaitMax)
			defer t.Stop()
			timeout = t.C
		}
		select {
		case <-wait:
		case <-timeout:
			return &checkedError{busy: true}
		}
	}
}

// authFailed counts a failed AUTH for the client's address (a failed
// password check was counted as it ended; a malformed exchange is counted
// here): after AuthDelayAfter failures each reply waits AuthDelayStep more
// per failure; at limits.max_auth_failures the reply is 421 (go-smtp then
// closes) and the address is refused for limits.auth_block_time. A check
// refused before it started is answered 421, one that waited in vain for a
// place 454; neither is counted.
func (ss *session) authFailed(err error) error {
	s := ss.s
	lim := s.cfg.Load().Limits
	var n int
	var ce *checkedError
	var se *smtp.SMTPError
	switch {
	case errors.As(err, &ce) && ce.refused:
		return errAuthTooMany
	case errors.As(err, &ce) && ce.busy:
		return errAuthBusy // not a failure: nothing was checked
	case errors.As(err, &ce):
		n, err = ce.fails, errAuthInvalid
	default:
		if !errors.As(err, &se) {
			err = errAuthMalformed // go-sasl's "invalid response" and the like
		}
		n = s.authFails.fail(ss.ip, time.Now(), lim.AuthBlockTime.Duration, lim.MaxAuthFailures)
	}
	s.stats.authFailures.Add(1)
	if lim.MaxAuthFailures > 0 && n >= lim.MaxAuthFailures {
		ss.log.Warn("too many failed authentications, address blocked", "failures", n, "for", lim.AuthBlockTime.Duration)
		return errAuthTooMany
	}
	if extra := n - s.AuthDelayAfter; extra > 0 && s.AuthDelayStep > 0 {
		time.Sleep(time.Duration(extra) * s.AuthDelayStep)
	}
	return err
}
