package inbound

import (
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"path/filepath"
	"strings"
	"time"

	"github.com/emersion/go-smtp"

	"github.com/mailhop/mailhop/dnsmx"
	"github.com/mailhop/mailhop/queue"
	"github.com/mailhop/mailhop/relay/config"
	"github.com/mailhop/mailhop/relay/dkimsign"
	"github.com/mailhop/mailhop/relay/logline"
	"github.com/mailhop/mailhop/relay/msglimit"
)

// Refusal reasons, the keys of Stats.Refused and the "reason" of log lines.
const (
	reasonAuthRequired  = "auth_required"
	reasonTLSRequired   = "tls_required"
	reasonBadAddress    = "bad_address"
	reasonSenderBinding = "sender_not_owned"
	reasonRelayDenied   = "relay_denied"
	reasonTooManyRcpts  = "too_many_recipients"
	reasonShutdown      = "shutting_down"
	reasonSize          = "size"
	reasonBareEOL       = "bare_line_ending"
	reasonLineLength    = "line_length"
	reasonHeaderSize    = "header_size"
	reasonMailLoop      = "mail_loop"
	reasonQueue         = "queue_error"
	reasonAborted       = "aborted"
	reasonOther         = "other"
)

func smtpErr(code int, enh smtp.EnhancedCode, msg string) *smtp.SMTPError {
	return &smtp.SMTPError{Code: code, EnhancedCode: enh, Message: msg}
}

// senderNotOwned is the refusal of a MAIL FROM the authenticated user may
// not use. Like Postfix's reject_sender_login_mismatch it names the address
// and the user: a mail client shows the user only this line, and its From
// (or the account it logged in with) is what the user has to correct.
// A user name that is not plain printable ASCII is left out, and so is one
// that would make the reply line longer than RFC 5321 §4.5.3.1.5's 512
// octets (an address at the path limit and a long user name).
func senderNotOwned(from, user string) *smtp.SMTPError {
	msg := "<" + from + ">: Sender address rejected: not owned by user"
	if printableASCII(user) && len("553 5.7.1 ")+len(msg)+len(" ")+len(user)+len("\r\n") <= maxReplyLine {
		msg += " " + user
	}
	return smtpErr(553, smtp.EnhancedCode{5, 7, 1}, msg)
}

// maxReplyLine is RFC 5321 §4.5.3.1.5's limit on a reply line, the reply
// code and CRLF included.
const maxReplyLine = 512

func printableASCII(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] <= ' ' || s[i] > '~' {
			return false
		}
	}
	return s != ""
}

var (
	errMustStartTLS = smtpErr(530, smtp.EnhancedCode{5, 7, 0}, "Must issue a STARTTLS command first")
	errAuthRequired = smtpErr(530, smtp.EnhancedCode{5, 7, 0}, "Authentication required")
	errBadAddress   = smtpErr(501, smtp.EnhancedCode{5, 1, 3}, "Bad address syntax")
	// errLiteralNotUnicast: [0.0.0.0], a multicast or broadcast address
	// cannot be a mail server (connecting to it would reach this host).
	errLiteralNotUnicast = smtpErr(550, smtp.EnhancedCode{5, 1, 2}, "Address literal is not a unicast address")
	// errNeedsUTF8: a UTF-8 address in a transaction without SMTPUTF8
	// (RFC 6531 §3.5, RFC 6533 §3: 5.6.7; Postfix's words).
	errNeedsUTF8    = smtpErr(553, smtp.EnhancedCode{5, 6, 7}, "Must declare SMTPUTF8 to send unicode address")
	errRelayDenied  = smtpErr(554, smtp.EnhancedCode{5, 7, 1}, "Relay access denied")
	errTooManyRcpts = smtpErr(452, smtp.EnhancedCode{4, 5, 3}, "Too many recipients")
	errShuttingDown = smtpErr(421, smtp.EnhancedCode{4, 3, 2}, "Service shutting down, try again later")
	// errShutdownCut is what a session still under way when the shutdown
	// deadline passes was told (go-smtp's AbortConns) before its
	// connection was closed.
	errShutdownCut = smtpErr(421, smtp.EnhancedCode{4, 3, 2}, "Service shutting down, closing connection")
	// errLocal is the only reply a queue failure gets: never the internal
	// text (go-smtp would send any other error's text with a 554).
	errRequireTLSPlain = smtpErr(530, smtp.EnhancedCode{5, 7, 10}, "REQUIRETLS needs a TLS connection")
	errHeaderTooLarge  = smtpErr(552, smtp.EnhancedCode{5, 3, 4}, "Message header exceeds the size limit")
	errLocal           = smtpErr(451, smtp.EnhancedCode{4, 3, 0}, "Requested action aborted: local error in processing")
)

// backend creates a session per client greeting (and again after STARTTLS).
type backend struct {
	s    *Server
	mode string
}

func (b *backend) NewSession(c *smtp.Conn) (smtp.Session, error) {
	ip := remoteIP(c.Conn().RemoteAddr())
	ss := &session{s: b.s, mode: b.mode, conn: c, ip: ip, helo: c.Hostname()}
	if st, ok := c.TLSConnectionState(); ok {
		ss.tls = &st
		b.s.stats.tlsConns.Add(1) // after STARTTLS or on an implicit-TLS listener: once a connection
	}
	ss.log = b.s.log.With("client", ip.String())
	return ss, nil
}

// session is one client's SMTP session between greeting and QUIT (or
// STARTTLS, which starts a new one). Its methods are called by go-smtp in
// command order, never concurrently.
type session struct {
	s    *Server
	mode string
	conn *smtp.Conn
	ip   netip.Addr
	helo string
	tls  *tls.ConnectionState
	user string // after a successful AUTH
	log  *slog.Logger

	// The transaction: set by MAIL, cleared by Reset.
	from     string
	mailOpts smtp.MailOptions
	rcpts    []queue.Recipient
	seen     map[string]bool // Address.Key of rcpts
	open     bool            // MAIL accepted, no DATA/BDAT outcome yet
}

func (ss *session) trusted() bool {
	return ss.s.cfg.Load().IsTrusted(ss.ip)
}

func (ss *session) tlsVersion() string {
	if ss.tls == nil {
		return "none"
	}
	return tls13Name(ss.tls.Version)
}

// refuse logs a refused MAIL or RCPT and counts it.
func (ss *session) refuse(cmd, reason string, err *smtp.SMTPError, args ...any) error {
	ss.s.stats.refuse(reason)
	ss.log.Info(cmd+" refused", append([]any{"reason", reason, "user", ss.user, "code", err.Code}, args...)...)
	return err
}

// Refused implements smtp.RefusalLogger: go-smtp refused a command itself
// (a SIZE= over the limit, an address it cannot parse), so it is logged and counted here like the
// session's own refusals.
func (ss *session) Refused(cmd string, err *smtp.SMTPError) {
	reason := reasonOther
	switch err {
	case smtp.ErrDataTooLarge:
		reason = reasonSize
	case smtp.ErrBadAddressSyntax:
		reason = reasonBadAddress
	}
	ss.refuse(strings.ToLower(cmd), reason, err)
}

// Mail implements smtp.Session: who may start a transaction, sender
// syntax, and sender binding for authenticated users.
func (ss *session) Mail(from string, opts *smtp.MailOptions) error {
	if ss.s.closing.Load() {
		return ss.refuse("mail", reasonShutdown, errShuttingDown, "from", from)
	}
	if ss.mode != config.ModeRelay && ss.user == "" {
		// RFC 6409 §4.3: submission requires authentication; AUTH
		// requires TLS first.
		if ss.tls == nil {
			return ss.refuse("mail", reasonTLSRequired, errMustStartTLS, "from", from)
		}
		return ss.refuse("mail", reasonAuthRequired, errAuthRequired, "from", from)
	}
	if opts.RequireTLS && ss.tls == nil {
		// RFC 8689 §4.1: REQUIRETLS is offered, and taken, over TLS only.
		return ss.refuse("mail", reasonTLSRequired, errRequireTLSPlain, "from", from)
	}
	if from != "" {
		if _, err := ParseAddress(from, opts.UTF8); err != nil {
			return ss.refuse("mail", reasonBadAddress, addressError(from, opts.UTF8), "from", from)
		}
	}
	if ss.user != "" {
		// The null sender is any user's: read receipts (MDNs, RFC 8098
		// §2.1) and other notifications a mail client sends use it. A
		// user a reload removed sends nothing more, not even that.
		u := ss.s.cfg.Load().FindUser(ss.user)
		if u == nil || from != "" && !u.MaySend(from) {
			return ss.refuse("mail", reasonSenderBinding, senderNotOwned(from, ss.user), "from", from)
		}
	}
	ss.from = from
	ss.mailOpts = *opts
	ss.open = true
	return nil
}

// Rcpt implements smtp.Session: recipient syntax, the relay decision and
// the recipient limit. Every recipient is remote (mailhop is a relay): it
// is accepted only from an authenticated user or a trusted network, so no
// address trick (percent hack, bang path, quoted "@") can get an untrusted
// client through.
func (ss *session) Rcpt(to string, opts *smtp.RcptOptions) error {
	cfg := ss.s.cfg.Load()
	if to == "postmaster" {
		// "<Postmaster>" (RFC 5321 §4.1.1.3): mailhop has no mailboxes,
		// so it is the postmaster of its own hostname (Postfix appends
		// $myorigin the same way).
		to = "postmaster@" + cfg.Hostname
	}
	addr, err := ParseAddress(to, ss.mailOpts.UTF8)
	if err != nil {
		return ss.refuse("rcpt", reasonBadAddress, addressError(to, ss.mailOpts.UTF8), "from", ss.from, "rcpt", to)
	}
	if addr.Literal {
		if _, err := dnsmx.ParseAddressLiteral(addr.Domain); err != nil {
			return ss.refuse("rcpt", reasonBadAddress, errLiteralNotUnicast, "from", ss.from, "rcpt", to)
		}
	}
	toPostmaster := cfg.Postmaster != "" && strings.EqualFold(addr.Local, "postmaster") &&
		strings.EqualFold(addr.Domain, cfg.Hostname)
	if toPostmaster {
		// RFC 5321 §4.5.1: the postmaster takes mail from anyone; it goes
		// to the configured mailbox.
		to = cfg.Postmaster
		addr, _ = ParseAddress(to, true)
	} else if ss.user == "" && !ss.trusted() {
		return ss.refuse("rcpt", reasonRelayDenied, errRelayDenied, "from", ss.from, "rcpt", to)
	}
	key := addr.Key()
	if ss.seen[key] {
		return nil // RFC 5321 §3.3 allows duplicates; stored once
	}
	if max := ss.s.cfg.Load().Policy.MaxRecipients; max > 0 && len(ss.rcpts) >= max {
		return ss.refuse("rcpt", reasonTooManyRcpts, errTooManyRcpts, "from", ss.from, "rcpt", to)
	}
	r := queue.Recipient{Address: to, Notify: notifyOf(opts.Notify)}
	if opts.OriginalRecipient != "" {
		r.ORCPT = string(opts.OriginalRecipientType) + ";" + opts.OriginalRecipient
	} else if toPostmaster {
		r.ORCPT = "rfc822;postmaster@" + cfg.Hostname // what the sender wrote (RFC 3461 §4.2)
	}
	if ss.seen == nil {
		ss.seen = make(map[string]bool)
	}
	ss.seen[key] = true
	ss.rcpts = append(ss.rcpts, r)
	return nil
}

// addressError is the reply to an address ParseAddress refused: 553 5.6.7
// when it is a valid UTF-8 address in a transaction without SMTPUTF8,
// 501 5.1.3 otherwise.
func addressError(a string, utf8 bool) *smtp.SMTPError {
	if !utf8 {
		if _, err := ParseAddress(a, true); err == nil {
			return errNeedsUTF8
		}
	}
	return errBadAddress
}

func notifyOf(ns []smtp.DSNNotify) queue.Notify {
	var n queue.Notify
	for _, v := range ns {
		switch v {
		case smtp.DSNNotifyNever:
			n |= queue.NotifyNever
		case smtp.DSNNotifySuccess:
			n |= queue.NotifySuccess
		case smtp.DSNNotifyFailure:
			n |= queue.NotifyFailure
		case smtp.DSNNotifyDelayed:
			n |= queue.NotifyDelay
		}
	}
	return n
}

// Data implements smtp.Session: it streams the message into the queue
// behind a Received header (and Message-ID/Date on submission listeners)
// and answers 250 only once the queue has it on stable storage.
func (ss *session) Data(r io.Reader) error {
	ss.open = false // the data's outcome is logged, whatever it is
	cfg := ss.s.cfg.Load()
	now := time.Now()
	env := &queue.Envelope{
		ID:         ss.s.q.NewID(),
		From:       ss.from,
		Recipients: append([]queue.Recipient(nil), ss.rcpts...),
		Arrived:    now,
		User:       ss.user,
		ClientAddr: ss.ip.String(),
		ClientHelo: ss.helo,
		BodyType:   string(ss.mailOpts.Body),
		SMTPUTF8:   ss.mailOpts.UTF8,
		RequireTLS: ss.mailOpts.RequireTLS,
		Ret:        string(ss.mailOpts.Return),
		EnvID:      ss.mailOpts.EnvelopeID,
	}
	read := &countReader{r: r} // a refusal logs how much data came
	r = read
	if cfg.Limits.MaxHeaderSize > 0 {
		// Size and line length are go-smtp's; the header is counted as
		// local submission counts it.
		r = msglimit.NewReader(r, msglimit.Limits{MaxHeaderSize: cfg.Limits.MaxHeaderSize})
	}
	body, sniff := ss.message(cfg, env, r, now)
	var signed *dkimsign.Signed
	if sg := ss.s.dkim.Load(); sg != nil && sg.Len() > 0 {
		// Signed once, as it is queued, so every retry carries the same
		// signature. An authenticated user's mail is signed only for the
		// domains it may send as.
		var err error
		signed, err = sg.SpoolFor(body, filepath.Join(cfg.DataDir, "tmp"), ss.maySign(cfg))
		if err != nil {
			return ss.refuseData(env, read.n, sniff.messageID(), err)
		}
		defer signed.Close()
		body = signed
	}
	err := ss.s.q.Enqueue(env, body)
	if err == nil {
		ss.s.stats.accepted.Add(1)
		reply := "OK: queued as " + env.ID
		extra := []slog.Attr{slog.String("message_id", sniff.messageID())}
		if signed != nil && len(signed.Keys) > 0 {
			extra = append(extra, slog.String("dkim", signed.Keys[0].Domain))
		}
		ss.logTransaction("message accepted", env, 250, "2.0.0 "+reply, extra...)
		return smtpErr(250, smtp.EnhancedCode{2, 0, 0}, reply)
	}
	return ss.refuseData(env, read.n, sniff.messageID(), err)
}

// countReader counts the octets read through it.
type countReader struct {
	r io.Reader
	n int64
}

func (c *countReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n += int64(n)
	return n, err
}

// maySign returns the domains check for DKIM signing: an authenticated
// user's mail is signed for a From: domain it may send as; mail from a
// trusted network for any configured domain.
func (ss *session) maySign(cfg *config.Config) func(string) bool {
	if ss.user == "" {
		return nil
	}
	u := cfg.FindUser(ss.user)
	return func(domain string) bool { return u != nil && u.SendsFrom(domain) }
}

// refuseData turns a failed DATA into its reply and the transaction's log
// line, whose size is the octets of data read (read), as the client sent
// them up to where the message was given up: nothing was queued. messageID
// is the Message-ID the header gave ("" when none came).
func (ss *session) refuseData(env *queue.Envelope, read int64, messageID string, err error) error {
	env.Size = read
	// The data reader's own refusals (size, bare CR/LF, line length) carry
	// their reply; anything else is a local failure.
	reply, reason := errLocal, reasonQueue
	var se *smtp.SMTPError
	var le *msglimit.Error
	switch {
	case errors.As(err, &se):
		reply, reason = se, dataReason(se)
	case errors.As(err, &le):
		reply, reason = errHeaderTooLarge, reasonHeaderSize
	case ss.s.closing.Load() && errors.Is(err, net.ErrClosed):
		// The shutdown deadline passed: Shutdown told the client 421 and
		// closed the connection under the message.
		reply, reason = errShutdownCut, reasonShutdown
	case errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, smtp.ErrDataReset) || isNetError(err):
		// The client went away or stalled, also between BDAT chunks
		// (go-smtp then ends the message with ErrDataReset).
		reason = reasonAborted
	}
	ss.s.stats.refuse(reason)
	code, text := reply.Code, enhanced(reply)+reply.Message
	if reason == reasonAborted {
		// The client is gone, or gets go-smtp's timeout reply (idle, or
		// the session's limit): log what it saw, not a reply never sent.
		code, text = 0, "connection lost during the message"
		var ne net.Error
		if errors.As(err, &ne) && ne.Timeout() {
			code, text = 421, timeoutReply(ss.conn.Conn())
		}
	}
	ss.logTransaction("message refused", env, code, text, slog.String("message_id", messageID),
		slog.String("reason", reason), slog.String("error", err.Error()))
	return reply
}

func dataReason(se *smtp.SMTPError) string {
	switch se {
	case smtp.ErrDataTooLarge:
		return reasonSize
	case smtp.ErrBareLineEnding:
		return reasonBareEOL
	case smtp.ErrDataLineTooLong:
		return reasonLineLength
	case errTooManyHops:
		return reasonMailLoop
	}
	return reasonOther
}

// isNetError reports whether err came from the client's connection (it went
// away or timed out), not from the disk: *os.PathError and syscall.Errno
// have Timeout methods too, so the type is what tells them apart.
func isNetError(err error) bool {
	var ne *net.OpError
	return errors.As(err, &ne)
}

func enhanced(e *smtp.SMTPError) string {
	c := e.EnhancedCode
	if c == smtp.EnhancedCodeNotSet || c == smtp.NoEnhancedCode {
		return ""
	}
	return fmt.Sprintf("%d.%d.%d ", c[0], c[1], c[2])
}

// logTransaction writes the one line per transaction (stable keys).
func (ss *session) logTransaction(msg string, env *queue.Envelope, code int, reply string, extra ...slog.Attr) {
	attrs := append(make([]slog.Attr, 0, 11+len(extra)),
		slog.String("queue_id", env.ID), slog.String("user", ss.user), slog.String("from", env.From),
		slog.Int("rcpts", len(env.Recipients)), slog.Int64("size", env.Size), slog.String("tls", ss.tlsVersion()),
		slog.Int("code", code), slog.String("reply", reply))
	logline.Info(ss.log, msg, append(attrs, extra...)...)
}

// Reset implements smtp.Session.
func (ss *session) Reset() {
	ss.abandoned("reset")
	ss.from = ""
	ss.mailOpts = smtp.MailOptions{}
	ss.rcpts = nil
	ss.seen = nil
}

// Logout implements smtp.Session.
func (ss *session) Logout() error {
	ss.abandoned("session ended")
	return nil
}

// abandoned logs a transaction the client gave up before its data (RSET,
// a new EHLO, QUIT or a dropped connection after MAIL), so every
// transaction has its line, as Postfix's per-session summary shows them.
func (ss *session) abandoned(how string) {
	if !ss.open {
		return
	}
	ss.open = false
	ss.log.Info("transaction abandoned", "user", ss.user, "from", ss.from,
		"rcpts", len(ss.rcpts), "how", how)
}
