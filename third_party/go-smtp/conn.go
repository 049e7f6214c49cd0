package smtp

import (
	"bufio"
	"bytes"
	"crypto/tls"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"io/ioutil"
	"math"
	"net"
	"net/textproto"
	"regexp"
	"runtime/debug"
	"strconv"
	"strings"
	"sync"
	"time"
	"unicode/utf8"

	"github.com/emersion/go-sasl"
)

type Conn struct {
	conn   net.Conn
	text   *textproto.Conn
	server *Server
	helo   string
	esmtp  bool // the greeting was EHLO (or LHLO)

	// Number of error replies (4xx/5xx) sent on this connection; see
	// Server.MaxErrors.
	errCount int
	// closing is set once a 421 reply has been written: the connection is
	// closed after the current command (RFC 5321 §3.8).
	closing bool
	// closeErr is why the session ends, when that is a failure the server
	// should log (a failed STARTTLS handshake); handleConn returns it.
	closeErr error

	session    Session
	locker     sync.Mutex
	binarymime bool

	bdatCheck     *lineChecker // bare CR/LF and line length across BDAT chunks
	bdatBuf       []byte       // what BDAT chunks are copied through; kept for the connection
	bdatPipe      *io.PipeWriter
	bdatStatus    *statusCollector // used for BDAT on LMTP
	dataResult    chan error
	bytesReceived int64 // counts total size of chunks when BDAT is used

	fromReceived bool
	recipients   []string
	didAuth      bool

	// lim are the limits of this connection, taken from the Server when
	// it was accepted (Server.SetConnLimits).
	lim ConnLimits
	// domain is the Server's Domain when the connection was accepted
	// (Server.SetDomain): its greeting and EHLO reply keep one name.
	domain string
	// waitMu guards waitingOn: the connection while the session waits for
	// a command outside a transaction (Shutdown interrupts that read).
	waitMu    sync.Mutex
	waitingOn net.Conn
}

func newConn(c net.Conn, s *Server) *Conn {
	sc := &Conn{
		server: s,
		conn:   c,
		lim:    s.connLimits(),
		domain: s.domain(),
	}

	sc.init()
	return sc
}

func (c *Conn) init() {
	rwc := struct {
		io.Reader
		io.Writer
		io.Closer
	}{
		Reader: timeoutReader{c},
		Writer: c.conn,
		Closer: c.conn,
	}

	if c.server.Debug != nil {
		rwc = struct {
			io.Reader
			io.Writer
			io.Closer
		}{
			io.TeeReader(rwc.Reader, c.server.Debug),
			io.MultiWriter(rwc.Writer, c.server.Debug),
			rwc.Closer,
		}
	}

	// mailhop patch: a 16 KiB read buffer (textproto's is 4 KiB), so a
	// typical message body takes one read system call, not several; both
	// buffers come from pools and go back when the connection ends
	// (release), since a relay serves many short connections. The Conn's
	// Close goes to c.conn, so textproto.Conn's own conn is not needed.
	br := readBufs.Get().(*bufio.Reader)
	br.Reset(rwc)
	bw := writeBufs.Get().(*bufio.Writer)
	bw.Reset(rwc)
	c.text = &textproto.Conn{Reader: *textproto.NewReader(br), Writer: *textproto.NewWriter(bw)}
}

var (
	readBufs  = sync.Pool{New: func() any { return bufio.NewReaderSize(nil, 16<<10) }}
	writeBufs = sync.Pool{New: func() any { return bufio.NewWriterSize(nil, 4<<10) }}
)

// release gives the connection's buffers back to their pools; called once
// the connection is closed and its handler has returned.
func (c *Conn) release() {
	if c.text == nil {
		return
	}
	c.text.R.Reset(nil)
	readBufs.Put(c.text.R)
	c.text.W.Reset(nil)
	writeBufs.Put(c.text.W)
	c.text = nil
}

// refused tells a session that implements RefusalLogger about a command
// the server refused itself (mailhop patch).
func (c *Conn) refused(cmd string, err *SMTPError) {
	if rl, ok := c.Session().(RefusalLogger); ok {
		rl.Refused(cmd, err)
	}
}

// Commands are dispatched to the appropriate handler functions.
func (c *Conn) handle(cmd string, arg string) {
	// If panic happens during command handling - send 421 response
	// and close connection.
	defer func() {
		if err := recover(); err != nil {
			// Logged first, so the log has it by the time the client sees
			// the connection close.
			stack := debug.Stack()
			c.server.ErrorLog.Printf("panic serving %v: %v\n%s", c.conn.RemoteAddr(), err, stack)

			c.writeResponse(421, EnhancedCode{4, 0, 0}, "Internal server error")
			c.Close()
		}
	}()

	if cmd == "" {
		c.writeResponse(500, EnhancedCode{5, 5, 2}, "Error: bad syntax")
		return
	}

	cmd = strings.ToUpper(cmd)
	switch cmd {
	case "SEND", "SOML", "SAML", "EXPN", "HELP", "TURN":
		// These commands are not implemented in any state
		c.writeResponse(502, EnhancedCode{5, 5, 1}, fmt.Sprintf("%v command not implemented", cmd))
	case "HELO", "EHLO", "LHLO":
		lmtp := cmd == "LHLO"
		enhanced := lmtp || cmd == "EHLO"
		if c.server.LMTP && !lmtp {
			c.writeResponse(500, EnhancedCode{5, 5, 1}, "This is a LMTP server, use LHLO")
			return
		}
		if !c.server.LMTP && lmtp {
			c.writeResponse(500, EnhancedCode{5, 5, 1}, "This is not a LMTP server")
			return
		}
		c.handleGreet(enhanced, arg)
	case "MAIL":
		c.handleMail(arg)
	case "RCPT":
		c.handleRcpt(arg)
	case "VRFY":
		if arg == "" {
			c.writeResponse(501, EnhancedCode{5, 5, 4}, "Syntax: VRFY address")
			return
		}
		c.writeResponse(252, EnhancedCode{2, 5, 0}, "Cannot VRFY user, but will accept message")
	case "NOOP":
		c.writeResponse(250, EnhancedCode{2, 0, 0}, "I have successfully done nothing")
	case "RSET": // Reset session
		if arg != "" { // RFC 5321 §4.1.1.5: no parameters
			c.writeResponse(501, EnhancedCode{5, 5, 4}, "Syntax: RSET")
			return
		}
		c.reset()
		c.writeResponse(250, EnhancedCode{2, 0, 0}, "Session reset")
	case "BDAT":
		c.handleBdat(arg)
	case "DATA":
		c.handleData(arg)
	case "QUIT":
		c.writeResponse(221, EnhancedCode{2, 0, 0}, "Bye")
		c.Close()
	case "AUTH":
		c.handleAuth(arg)
	case "STARTTLS":
		if arg != "" {
			// mailhop patch: RFC 3207 §4: STARTTLS takes no parameters.
			c.writeResponse(501, EnhancedCode{5, 5, 4}, "Syntax: STARTTLS (no parameters)")
			return
		}
		c.handleStartTLS()
	default:
		// mailhop patch: the verb as it may be echoed (a bare CR in it
		// went into the reply).
		msg := fmt.Sprintf("Syntax errors, %v command unrecognized", printable(cmd))
		c.writeResponse(500, EnhancedCode{5, 5, 2}, msg)
	}
}

func (c *Conn) Server() *Server {
	return c.server
}

func (c *Conn) Session() Session {
	c.locker.Lock()
	defer c.locker.Unlock()
	return c.session
}

func (c *Conn) setSession(session Session) {
	c.locker.Lock()
	defer c.locker.Unlock()
	c.session = session
}

// abortData ends a BDAT message under way with err, wrapped with
// ErrDataReset, so that Session.Data learns why its data stopped (a read
// that timed out between chunks, not a client gone); the ErrDataReset of
// Close changes nothing then, as a pipe keeps its first error. (mailhop
// patch 61.)
func (c *Conn) abortData(err error) {
	c.locker.Lock()
	defer c.locker.Unlock()
	if c.bdatPipe != nil {
		c.bdatPipe.CloseWithError(fmt.Errorf("%w: %w", ErrDataReset, err))
	}
}

func (c *Conn) Close() error {
	c.locker.Lock()
	defer c.locker.Unlock()

	if c.bdatPipe != nil {
		c.bdatPipe.CloseWithError(ErrDataReset)
		c.bdatPipe = nil
	}

	if c.session != nil {
		c.session.Logout()
		c.session = nil
	}

	return c.conn.Close()
}

// TLSConnectionState returns the connection's TLS connection state.
// Zero values are returned if the connection doesn't use TLS.
func (c *Conn) TLSConnectionState() (state tls.ConnectionState, ok bool) {
	tc, ok := c.conn.(*tls.Conn)
	if !ok {
		return
	}
	return tc.ConnectionState(), true
}

func (c *Conn) Hostname() string {
	return c.helo
}

// ESMTP reports whether the client greeted with EHLO rather than HELO
// (mailhop patch: for the "with" clause of a Received field, RFC 3848).
func (c *Conn) ESMTP() bool {
	return c.esmtp
}

func (c *Conn) Conn() net.Conn {
	return c.conn
}

func (c *Conn) authAllowed() bool {
	_, isTLS := c.TLSConnectionState()
	return isTLS || c.server.AllowInsecureAuth
}

// tooManyErrors reports whether the session has used up Server.MaxErrors.
func (c *Conn) tooManyErrors() bool {
	max := c.lim.MaxErrors
	if max == 0 {
		max = DefaultMaxErrors
	}
	return max > 0 && c.errCount >= max
}

// GREET state -> waiting for HELO
func (c *Conn) handleGreet(enhanced bool, arg string) {
	domain, err := parseHelloArgument(arg)
	if err != nil {
		cmd := "HELO"
		if enhanced {
			cmd = "EHLO"
		}
		c.writeResponse(501, EnhancedCode{5, 5, 2}, "Domain/address argument required for "+cmd)
		return
	}
	// c.helo is populated before NewSession so
	// NewSession can access it via Conn.Hostname.
	c.helo = domain
	c.esmtp = enhanced

	// RFC 5321: "An EHLO command MAY be issued by a client later in the session"
	if c.session != nil {
		// RFC 5321: "... the SMTP server MUST clear all buffers
		// and reset the state exactly as if a RSET command has been issued."
		c.reset()
	} else {
		sess, err := c.server.Backend.NewSession(c)
		if err != nil {
			c.helo = ""
			c.writeError(451, EnhancedCode{4, 0, 0}, err)
			return
		}

		c.setSession(sess)
	}

	if !enhanced {
		// RFC 5321 §4.1.1.1: the reply starts with the server's own name
		// (mailhop patch; upstream sent "250 2.0.0 Hello <client>").
		c.writeResponse(250, NoEnhancedCode, c.greetingName()+" Hello "+printable(domain))
		return
	}

	caps := []string{
		"PIPELINING",
		"8BITMIME",
		"ENHANCEDSTATUSCODES",
		"CHUNKING",
	}
	if _, isTLS := c.TLSConnectionState(); c.server.TLSConfig != nil && !isTLS {
		caps = append(caps, "STARTTLS")
	}
	if c.authAllowed() {
		mechs := c.authMechanisms()

		authCap := "AUTH"
		for _, name := range mechs {
			authCap += " " + name
		}

		if len(mechs) > 0 {
			caps = append(caps, authCap)
		}
	}
	if c.server.EnableSMTPUTF8 {
		caps = append(caps, "SMTPUTF8")
	}
	if _, isTLS := c.TLSConnectionState(); isTLS && c.server.EnableREQUIRETLS {
		caps = append(caps, "REQUIRETLS")
	}
	if c.server.EnableBINARYMIME {
		caps = append(caps, "BINARYMIME")
	}
	if c.server.EnableDSN {
		caps = append(caps, "DSN")
	}
	if c.lim.MaxMessageBytes > 0 {
		caps = append(caps, fmt.Sprintf("SIZE %v", c.lim.MaxMessageBytes))
	} else {
		caps = append(caps, "SIZE")
	}
	if c.lim.MaxRecipients > 0 {
		caps = append(caps, fmt.Sprintf("LIMITS RCPTMAX=%v", c.lim.MaxRecipients))
	}
	if c.server.EnableRRVS {
		caps = append(caps, "RRVS")
	}
	if c.server.EnableDELIVERBY {
		if c.server.MinimumDeliverByTime == 0 {
			caps = append(caps, "DELIVERBY")
		} else {
			caps = append(caps, fmt.Sprintf("DELIVERBY %d", int(c.server.MinimumDeliverByTime.Seconds())))
		}
	}
	if c.server.EnableMTPRIORITY {
		if c.server.MtPriorityProfile == PriorityUnspecified {
			caps = append(caps, "MT-PRIORITY")
		} else {
			caps = append(caps, fmt.Sprintf("MT-PRIORITY %s", c.server.MtPriorityProfile))
		}
	}

	args := []string{c.greetingName() + " Hello " + printable(domain)}
	args = append(args, caps...)
	c.writeResponse(250, NoEnhancedCode, args...)
}

// READY state -> waiting for MAIL
func (c *Conn) handleMail(arg string) {
	if c.helo == "" {
		c.writeResponse(503, EnhancedCode{5, 5, 1}, "Please introduce yourself first.")
		return
	}
	if c.bdatPipe != nil {
		c.writeResponse(503, EnhancedCode{5, 5, 1}, "MAIL not allowed during message transfer")
		return
	}
	if c.fromReceived {
		// RFC 5321 §4.1.4: MAIL while a transaction is open is out of sequence.
		c.writeResponse(503, EnhancedCode{5, 5, 1}, "Nested MAIL command")
		return
	}

	arg, ok := cutPrefixFold(arg, "FROM:")
	if !ok {
		c.writeResponse(501, EnhancedCode{5, 5, 2}, "Was expecting MAIL arg syntax of FROM:<address>")
		return
	}

	p := parser{s: strings.TrimSpace(arg), strict: c.server.RequireAngleBrackets}
	from, err := p.parseReversePath()
	if err == nil && p.sourceRoute && c.server.RejectSourceRoutes {
		err = errSourceRoute
	}
	if err != nil {
		c.refused("MAIL", ErrBadAddressSyntax)
		c.writeResponse(501, EnhancedCode{5, 1, 3}, "Bad address syntax")
		return
	}
	args, err := parseArgs(p.s)
	if err != nil {
		c.writeResponse(501, EnhancedCode{5, 5, 4}, argsError("MAIL", err))
		return
	}

	opts := &MailOptions{}

	c.binarymime = false
	// This is where the Conn may put BODY=8BITMIME, but we already
	// read the DATA as bytes, so it does not effect our processing.
	for key, value := range args {
		switch key {
		case "SIZE":
			// mailhop patch: RFC 1870 allows up to 20 digits. A number
			// too big for 63 bits is still a size (too large), not a
			// syntax error.
			if value == "" {
				c.writeResponse(501, EnhancedCode{5, 5, 4}, "Unable to parse SIZE as an integer")
				return
			}
			size, err := strconv.ParseInt(value, 10, 64)
			if errors.Is(err, strconv.ErrRange) && len(value) <= 20 && value[0] != '-' && value[0] != '+' {
				size, err = math.MaxInt64, nil
			}
			if err != nil || size < 0 || value[0] == '+' {
				c.writeResponse(501, EnhancedCode{5, 5, 4}, "Unable to parse SIZE as an integer")
				return
			}

			if c.lim.MaxMessageBytes > 0 && size > c.lim.MaxMessageBytes {
				c.refused("MAIL", ErrDataTooLarge)
				c.writeResponse(552, EnhancedCode{5, 3, 4}, "Message size exceeds fixed limit")
				return
			}

			opts.Size = size
		case "SMTPUTF8":
			if !c.server.EnableSMTPUTF8 {
				c.writeResponse(504, EnhancedCode{5, 5, 4}, "SMTPUTF8 is not implemented")
				return
			}
			opts.UTF8 = true
		case "REQUIRETLS":
			if !c.server.EnableREQUIRETLS {
				c.writeResponse(504, EnhancedCode{5, 5, 4}, "REQUIRETLS is not implemented")
				return
			}
			opts.RequireTLS = true
		case "BODY":
			value = strings.ToUpper(value)
			switch BodyType(value) {
			case BodyBinaryMIME:
				if !c.server.EnableBINARYMIME {
					c.writeResponse(504, EnhancedCode{5, 5, 4}, "BINARYMIME is not implemented")
					return
				}
				c.binarymime = true
			case Body7Bit, Body8BitMIME:
				// This space is intentionally left blank
			default:
				c.writeResponse(501, EnhancedCode{5, 5, 4}, "Unknown BODY value")
				return
			}
			opts.Body = BodyType(value)
		case "RET":
			if !c.server.EnableDSN {
				c.writeResponse(504, EnhancedCode{5, 5, 4}, "RET is not implemented")
				return
			}
			value = strings.ToUpper(value)
			switch DSNReturn(value) {
			case DSNReturnFull, DSNReturnHeaders:
				// This space is intentionally left blank
			default:
				c.writeResponse(501, EnhancedCode{5, 5, 4}, "Unknown RET value")
				return
			}
			opts.Return = DSNReturn(value)
		case "ENVID":
			if !c.server.EnableDSN {
				c.writeResponse(504, EnhancedCode{5, 5, 4}, "ENVID is not implemented")
				return
			}
			value, err := decodeXtext(value)
			if err != nil || value == "" || !isPrintableASCII(value) {
				c.writeResponse(501, EnhancedCode{5, 5, 4}, "Malformed ENVID parameter value")
				return
			}
			opts.EnvelopeID = value
		case "AUTH":
			value, err := decodeXtext(value)
			if err != nil || value == "" {
				c.writeResponse(500, EnhancedCode{5, 5, 4}, "Malformed AUTH parameter value")
				return
			}
			if value == "<>" {
				value = ""
			} else {
				p := parser{s: value}
				value, err = p.parseMailbox()
				if err != nil || p.s != "" {
					c.writeResponse(500, EnhancedCode{5, 5, 4}, "Malformed AUTH parameter mailbox")
					return
				}
			}
			opts.Auth = &value
		default:
			// mailhop patch: RFC 5321 §4.1.1.11 answers a parameter
			// the server does not know with 555, as Postfix does.
			c.writeResponse(555, EnhancedCode{5, 5, 4}, "Unsupported MAIL FROM parameter")
			return
		}
	}

	if err := c.Session().Mail(from, opts); err != nil {
		c.writeError(451, EnhancedCode{4, 0, 0}, err)
		return
	}

	c.writeResponse(250, EnhancedCode{2, 1, 0}, fmt.Sprintf("Sender <%v> OK", from))
	c.fromReceived = true
}

// This regexp matches 'hexchar' token defined in
// https://tools.ietf.org/html/rfc4954#section-8 however it is intentionally
// relaxed by requiring only '+' to be present.  It allows us to detect
// malformed values such as +A or +HH and report them appropriately.
var hexcharRe = regexp.MustCompile(`\+[0-9A-F]?[0-9A-F]?`)

func decodeXtext(val string) (string, error) {
	if !strings.Contains(val, "+") {
		return val, nil
	}

	var replaceErr error
	decoded := hexcharRe.ReplaceAllStringFunc(val, func(match string) string {
		if len(match) != 3 {
			replaceErr = errors.New("incomplete hexchar")
			return ""
		}
		char, err := strconv.ParseInt(match, 16, 8)
		if err != nil {
			replaceErr = err
			return ""
		}

		return string(rune(char))
	})
	if replaceErr != nil {
		return "", replaceErr
	}

	return decoded, nil
}

// This regexp matches 'EmbeddedUnicodeChar' token defined in
// https://datatracker.ietf.org/doc/html/rfc6533.html#section-3
// however it is intentionally relaxed by requiring only '\x{HEX}' to be
// present.  It also matches disallowed characters in QCHAR and QUCHAR defined
// in above.
// So it allows us to detect malformed values and report them appropriately.
var eUOrDCharRe = regexp.MustCompile(`\\x[{][0-9A-F]+[}]|[[:cntrl:] \\+=]`)

// Decodes the utf-8-addr-xtext or the utf-8-addr-unitext form.
func decodeUTF8AddrXtext(val string) (string, error) {
	var replaceErr error
	decoded := eUOrDCharRe.ReplaceAllStringFunc(val, func(match string) string {
		if len(match) == 1 {
			replaceErr = errors.New("disallowed character:" + match)
			return ""
		}

		hexpoint := match[3 : len(match)-1]
		char, err := strconv.ParseUint(hexpoint, 16, 21)
		if err != nil {
			replaceErr = err
			return ""
		}
		switch len(hexpoint) {
		case 2:
			switch {
			// all xtext-specials
			case 0x01 <= char && char <= 0x09 ||
				0x11 <= char && char <= 0x19 ||
				char == 0x10 || char == 0x20 ||
				char == 0x2B || char == 0x3D || char == 0x7F:
			// 2-digit forms
			case char == 0x5C || 0x80 <= char && char <= 0xFF:
				// This space is intentionally left blank
			default:
				replaceErr = errors.New("illegal hexpoint:" + hexpoint)
				return ""
			}
		// 3-digit forms
		case 3:
			switch {
			case 0x100 <= char && char <= 0xFFF:
				// This space is intentionally left blank
			default:
				replaceErr = errors.New("illegal hexpoint:" + hexpoint)
				return ""
			}
		// 4-digit forms excluding surrogate
		case 4:
			switch {
			case 0x1000 <= char && char <= 0xD7FF:
			case 0xE000 <= char && char <= 0xFFFF:
				// This space is intentionally left blank
			default:
				replaceErr = errors.New("illegal hexpoint:" + hexpoint)
				return ""
			}
		// 5-digit forms
		case 5:
			switch {
			case 0x1_0000 <= char && char <= 0xF_FFFF:
				// This space is intentionally left blank
			default:
				replaceErr = errors.New("illegal hexpoint:" + hexpoint)
				return ""
			}
		// 6-digit forms
		case 6:
			switch {
			case 0x10_0000 <= char && char <= 0x10_FFFF:
				// This space is intentionally left blank
			default:
				replaceErr = errors.New("illegal hexpoint:" + hexpoint)
				return ""
			}
		// the other invalid forms
		default:
			replaceErr = errors.New("illegal hexpoint:" + hexpoint)
			return ""
		}

		return string(rune(char))
	})
	if replaceErr != nil {
		return "", replaceErr
	}

	return decoded, nil
}

func decodeTypedAddress(val string) (DSNAddressType, string, error) {
	tv := strings.SplitN(val, ";", 2)
	if len(tv) != 2 || tv[0] == "" || tv[1] == "" {
		return "", "", errors.New("bad address")
	}
	aType, aAddr := strings.ToUpper(tv[0]), tv[1]

	var err error
	switch DSNAddressType(aType) {
	case DSNAddressTypeRFC822:
		aAddr, err = decodeXtext(aAddr)
		if err == nil && !isPrintableASCII(aAddr) {
			err = errors.New("illegal address:" + aAddr)
		}
	case DSNAddressTypeUTF8:
		aAddr, err = decodeUTF8AddrXtext(aAddr)
	default:
		err = errors.New("unknown address type:" + aType)
	}
	if err != nil {
		return "", "", err
	}

	return DSNAddressType(aType), aAddr, nil
}

// DecodeXtext decodes an xtext value (RFC 3461 §4) as the server decodes
// ENVID, for SMTP dialogs that do not run on Server (mailhop patch).
func DecodeXtext(val string) (string, error) { return decodeXtext(val) }

// DecodeTypedAddress decodes an ORCPT value as the server does: "rfc822;"
// and xtext, or "utf-8;" and utf-8-addr-xtext or unitext (RFC 6533); the
// type is returned in upper case (mailhop patch).
func DecodeTypedAddress(val string) (DSNAddressType, string, error) { return decodeTypedAddress(val) }

// encodeXtext encodes raw as xtext (RFC 3461 §4): octet by octet, each
// hexchar two digits (mailhop patch: "+9" was written for a tab, and a
// rune's code point for a non-ASCII character).
func encodeXtext(raw string) string {
	var out strings.Builder
	out.Grow(len(raw))

	for i := 0; i < len(raw); i++ {
		ch := raw[i]
		switch {
		case ch >= '!' && ch <= '~' && ch != '+' && ch != '=':
			// printable non-space US-ASCII except '+' and '='
			out.WriteByte(ch)
		default:
			fmt.Fprintf(&out, "+%02X", ch)
		}
	}
	return out.String()
}

// writeHexpoint writes the EmbeddedUnicodeChar of RFC 6533 §3 for ch: at
// least two hex digits (mailhop patch: "\x{9}" was written for a tab,
// which no decoder reads).
func writeHexpoint(out *strings.Builder, ch rune) {
	fmt.Fprintf(out, "\\x{%02X}", ch)
}

// Encodes raw string to the utf-8-addr-xtext form in RFC 6533.
func encodeUTF8AddrXtext(raw string) string {
	var out strings.Builder
	out.Grow(len(raw))

	for _, ch := range raw {
		switch {
		case ch >= '!' && ch <= '~' && ch != '+' && ch != '=' && ch != '\\':
			// printable non-space US-ASCII except '+', '=' and '\\'
			// (mailhop patch: a backslash is not a QCHAR and was
			// written as it is, so "\\x{E9}" decoded as "é")
			out.WriteRune(ch)
		default:
			writeHexpoint(&out, ch)
		}
	}
	return out.String()
}

// Encodes raw string to the utf-8-addr-unitext form in RFC 6533.
func encodeUTF8AddrUnitext(raw string) string {
	var out strings.Builder
	out.Grow(len(raw))

	for _, ch := range raw {
		switch {
		case ch >= '!' && ch <= '~' && ch != '+' && ch != '=' && ch != '\\':
			// printable non-space US-ASCII except '+', '=' and '\\'
			out.WriteRune(ch)
		case ch <= '\x7F':
			// other ASCII: CTLs, space and specials
			writeHexpoint(&out, ch)
		default:
			// UTF-8 non-ASCII
			out.WriteRune(ch)
		}
	}
	return out.String()
}

func isPrintableASCII(val string) bool {
	for _, ch := range val {
		if ch < ' ' || '~' < ch {
			return false
		}
	}
	return true
}

// printable is s as it may be echoed in a reply: control characters
// (a bare CR could end a reply line early) and octets that are not UTF-8
// become '?', and it is cut at 255 octets, between characters (mailhop
// patch).
func printable(s string) string {
	var b strings.Builder
	for _, r := range s {
		if r < ' ' || r == 0x7f || r == utf8.RuneError {
			r = '?'
		}
		if b.Len()+utf8.RuneLen(r) > 255 {
			break
		}
		b.WriteRune(r)
	}
	return b.String()
}

// MAIL state -> waiting for RCPTs followed by DATA
func (c *Conn) handleRcpt(arg string) {
	if !c.fromReceived {
		c.writeResponse(503, EnhancedCode{5, 5, 1}, "Missing MAIL FROM command.")
		return
	}
	if c.bdatPipe != nil {
		c.writeResponse(503, EnhancedCode{5, 5, 1}, "RCPT not allowed during message transfer")
		return
	}

	arg, ok := cutPrefixFold(arg, "TO:")
	if !ok {
		c.writeResponse(501, EnhancedCode{5, 5, 2}, "Was expecting RCPT arg syntax of TO:<address>")
		return
	}

	p := parser{s: strings.TrimSpace(arg), strict: c.server.RequireAngleBrackets}
	var recipient string
	var err error
	if rest, ok := cutPrefixFold(p.s, "<postmaster>"); ok {
		// RFC 5321 §4.1.1.3: "<Postmaster>" without a domain is a valid
		// recipient (any case); the backend decides where it goes.
		recipient, p.s = "postmaster", rest
	} else {
		recipient, err = p.parsePath()
	}
	if err == nil && p.sourceRoute && c.server.RejectSourceRoutes {
		err = errSourceRoute
	}
	if err != nil {
		c.refused("RCPT", ErrBadAddressSyntax)
		c.writeResponse(501, EnhancedCode{5, 1, 3}, "Bad address syntax")
		return
	}

	if c.lim.MaxRecipients > 0 && len(c.recipients) >= c.lim.MaxRecipients {
		c.writeResponse(452, EnhancedCode{4, 5, 3}, fmt.Sprintf("Maximum limit of %v recipients reached", c.lim.MaxRecipients))
		return
	}

	args, err := parseArgs(p.s)
	if err != nil {
		c.writeResponse(501, EnhancedCode{5, 5, 4}, argsError("RCPT", err))
		return
	}

	opts := &RcptOptions{}

	for key, value := range args {
		switch key {
		case "NOTIFY":
			if !c.server.EnableDSN {
				c.writeResponse(504, EnhancedCode{5, 5, 4}, "NOTIFY is not implemented")
				return
			}
			notify := []DSNNotify{}
			for _, val := range strings.Split(value, ",") {
				notify = append(notify, DSNNotify(strings.ToUpper(val)))
			}
			if err := checkNotifySet(notify); err != nil {
				c.writeResponse(501, EnhancedCode{5, 5, 4}, "Malformed NOTIFY parameter value")
				return
			}
			opts.Notify = notify
		case "ORCPT":
			if !c.server.EnableDSN {
				c.writeResponse(504, EnhancedCode{5, 5, 4}, "ORCPT is not implemented")
				return
			}
			aType, aAddr, err := decodeTypedAddress(value)
			if err != nil || aAddr == "" {
				c.writeResponse(501, EnhancedCode{5, 5, 4}, "Malformed ORCPT parameter value")
				return
			}
			opts.OriginalRecipientType = aType
			opts.OriginalRecipient = aAddr
		case "RRVS":
			if !c.server.EnableRRVS {
				c.writeResponse(504, EnhancedCode{5, 5, 4}, "RRVS is not implemented")
				return
			}
			value, _, _ = strings.Cut(value, ";") // discard the no-support action
			rrvsTime, err := time.Parse(time.RFC3339, value)
			if err != nil {
				c.writeResponse(501, EnhancedCode{5, 5, 4}, "Malformed RRVS parameter value")
				return
			}
			opts.RequireRecipientValidSince = rrvsTime
		case "BY":
			if !c.server.EnableDELIVERBY {
				c.writeResponse(504, EnhancedCode{5, 5, 4}, "DELIVERBY is not implemented")
				return
			}
			deliverBy := parseDeliverByArgument(value)
			if deliverBy == nil {
				c.writeResponse(501, EnhancedCode{5, 5, 4}, "Malformed BY parameter value")
				return
			}
			if c.server.MinimumDeliverByTime != 0 &&
				deliverBy.Mode == DeliverByReturn &&
				deliverBy.Time < c.server.MinimumDeliverByTime {
				c.writeResponse(501, EnhancedCode{5, 5, 4}, "BY parameter is below server minimum")
				return
			}
			opts.DeliverBy = deliverBy
		case "MT-PRIORITY":
			if !c.server.EnableMTPRIORITY {
				c.writeResponse(504, EnhancedCode{5, 5, 4}, "MT-PRIORITY is not implemented")
				return
			}
			mtPriority, err := strconv.Atoi(value)
			if err != nil {
				c.writeResponse(501, EnhancedCode{5, 5, 4}, "Malformed MT-PRIORITY parameter value")
				return
			}
			if mtPriority < -9 || mtPriority > 9 {
				c.writeResponse(501, EnhancedCode{5, 5, 4}, "MT-PRIORITY is outside valid range")
				return
			}
			opts.MTPriority = &mtPriority
		default:
			// mailhop patch: 555, as for MAIL (RFC 5321 §4.1.1.11).
			c.writeResponse(555, EnhancedCode{5, 5, 4}, "Unsupported RCPT TO parameter")
			return
		}
	}

	if err := c.Session().Rcpt(recipient, opts); err != nil {
		c.writeError(451, EnhancedCode{4, 0, 0}, err)
		return
	}
	c.recipients = append(c.recipients, recipient)
	c.writeResponse(250, EnhancedCode{2, 1, 5}, fmt.Sprintf("Recipient <%v> OK", recipient))
}

func checkNotifySet(values []DSNNotify) error {
	if len(values) == 0 {
		return errors.New("Malformed NOTIFY parameter value")
	}

	seen := map[DSNNotify]struct{}{}
	for _, val := range values {
		switch val {
		case DSNNotifyNever, DSNNotifyDelayed, DSNNotifyFailure, DSNNotifySuccess:
			if _, ok := seen[val]; ok {
				return errors.New("Malformed NOTIFY parameter value")
			}
		default:
			return errors.New("Malformed NOTIFY parameter value")
		}
		seen[val] = struct{}{}
	}
	if _, ok := seen[DSNNotifyNever]; ok && len(seen) > 1 {
		return errors.New("Malformed NOTIFY parameter value")
	}

	return nil
}

func (c *Conn) handleAuth(arg string) {
	if c.helo == "" {
		c.writeResponse(503, EnhancedCode{5, 5, 1}, "Please introduce yourself first.")
		return
	}
	if c.fromReceived {
		// RFC 4954 §4: AUTH is not permitted during a mail transaction.
		c.writeResponse(503, EnhancedCode{5, 5, 1}, "AUTH not permitted during a mail transaction")
		return
	}
	if c.didAuth {
		c.writeResponse(503, EnhancedCode{5, 5, 1}, "Already authenticated")
		return
	}

	parts := strings.Fields(arg)
	if len(parts) == 0 {
		c.writeResponse(501, EnhancedCode{5, 5, 4}, "Missing parameter")
		return
	}

	if !c.authAllowed() {
		// RFC 3207 §4: 530 5.7.0 when TLS must come first.
		c.writeResponse(530, EnhancedCode{5, 7, 0}, "Must issue a STARTTLS command first")
		return
	}

	mechanism := strings.ToUpper(parts[0])

	// Parse client initial response if there is one
	var ir []byte
	if len(parts) > 1 {
		var err error
		ir, err = decodeSASLResponse(parts[1])
		if err != nil {
			c.writeResponse(501, EnhancedCode{5, 5, 2}, "Invalid base64 data")
			return
		}
	}

	sasl, err := c.auth(mechanism)
	if err != nil {
		c.writeError(454, EnhancedCode{4, 7, 0}, err)
		return
	}

	response := ir
	for {
		challenge, done, err := sasl.Next(response)
		if err != nil {
			c.writeError(454, EnhancedCode{4, 7, 0}, err)
			return
		}

		if done {
			break
		}

		encoded := ""
		if len(challenge) > 0 {
			encoded = base64.StdEncoding.EncodeToString(challenge)
		}
		c.writeResponse(334, NoEnhancedCode, encoded)

		encoded, err = c.readLineLimit(c.authLineLimit())
		if err == errLineTooLong {
			c.writeResponse(500, EnhancedCode{5, 5, 2}, "Line too long")
			return
		} else if err != nil {
			c.readError(err)
			return
		}

		if encoded == "*" {
			// https://tools.ietf.org/html/rfc4954#page-4
			c.writeResponse(501, EnhancedCode{5, 0, 0}, "Negotiation cancelled")
			return
		}

		response, err = decodeSASLResponse(encoded)
		if err != nil {
			c.writeResponse(501, EnhancedCode{5, 5, 2}, "Invalid base64 data")
			return
		}
	}

	c.writeResponse(235, EnhancedCode{2, 0, 0}, "Authentication succeeded")
	c.didAuth = true
}

func decodeSASLResponse(s string) ([]byte, error) {
	if s == "=" {
		return []byte{}, nil
	}
	return base64.StdEncoding.DecodeString(s)
}

func (c *Conn) authMechanisms() []string {
	if authSession, ok := c.Session().(AuthSession); ok {
		return authSession.AuthMechanisms()
	}
	return nil
}

func (c *Conn) auth(mech string) (sasl.Server, error) {
	if authSession, ok := c.Session().(AuthSession); ok {
		return authSession.Auth(mech)
	}
	return nil, ErrAuthUnknownMechanism
}

func (c *Conn) handleStartTLS() {
	if _, isTLS := c.TLSConnectionState(); isTLS {
		c.writeResponse(502, EnhancedCode{5, 5, 1}, "Already running in TLS")
		return
	}

	if c.server.TLSConfig == nil {
		c.writeResponse(502, EnhancedCode{5, 5, 1}, "TLS not supported")
		return
	}

	c.writeResponse(220, EnhancedCode{2, 0, 0}, "Ready to start TLS")

	// Upgrade to TLS
	tlsConn := tls.Server(c.conn, c.server.TLSConfig)

	if err := tlsConn.Handshake(); err != nil {
		// The stream is no longer in a known state: a reply in plain text
		// could not be read by the client, so just close, and let the
		// server log why, as for an implicit-TLS handshake.
		c.closing = true
		c.closeErr = fmt.Errorf("STARTTLS handshake: %w", err)
		return
	}

	c.conn = tlsConn
	c.init()

	// Reset all state and close the previous Session.
	// This is different from just calling reset() since we want the Backend to
	// be able to see the information about TLS connection in the
	// ConnectionState object passed to it.
	if session := c.Session(); session != nil {
		session.Logout()
		c.setSession(nil)
	}
	c.helo = ""
	c.didAuth = false
	c.reset()
}

// DATA
func (c *Conn) handleData(arg string) {
	if arg != "" {
		c.writeResponse(501, EnhancedCode{5, 5, 4}, "DATA command should not have any arguments")
		return
	}
	if c.bdatPipe != nil {
		c.writeResponse(503, EnhancedCode{5, 5, 1}, "DATA not allowed during message transfer")
		return
	}
	if c.binarymime {
		c.writeResponse(503, EnhancedCode{5, 5, 1}, "DATA not allowed for BINARYMIME messages")
		return
	}

	if !c.fromReceived || len(c.recipients) == 0 {
		c.writeResponse(503, EnhancedCode{5, 5, 1}, "Missing RCPT TO command.")
		return
	}

	// We have recipients, go to accept data
	c.writeResponse(354, NoEnhancedCode, "Go ahead. End your data with <CR><LF>.<CR><LF>")

	defer c.reset()

	if c.server.LMTP {
		c.handleDataLMTP()
		return
	}

	r := newDataReader(c)
	err := c.Session().Data(r)
	// Make sure all the data has been consumed, up to the real end marker.
	if !r.drain() {
		c.readError(r.ioErr)
		return
	}
	if r.err != nil {
		// The data itself was refused (bare CR/LF, line or size limit): that
		// is the reply, whatever Data made of the reader's error.
		err = r.err
	}
	c.writeResponse(dataErrorToStatus(err))
}

// refuseChunk answers a BDAT with code and text, then reads and discards
// its chunk of size octets: the chunk follows the command whatever the
// reply (RFC 3030 §2), and none of it may be run as a command.
func (c *Conn) refuseChunk(code int, enh EnhancedCode, text string, size uint64) {
	c.writeResponse(code, enh, text)
	io.Copy(ioutil.Discard, io.LimitReader(c.text.R, int64(size)))
}

func (c *Conn) handleBdat(arg string) {
	args := strings.Fields(arg)
	if len(args) == 0 {
		c.writeResponse(501, EnhancedCode{5, 5, 4}, "Missing chunk size argument")
		return
	}
	// ParseUint instead of Atoi so we will not accept negative values.
	size, err := strconv.ParseUint(args[0], 10, 32)
	if err != nil {
		c.writeResponse(501, EnhancedCode{5, 5, 4}, "Malformed size argument")
		return
	}

	// mailhop patch: a chunk whose size could be read follows its command
	// whatever the other arguments: a refused one is read and discarded,
	// as one refused for a missing RCPT is, so none of its octets (a
	// relayed message's body) is run as a command.
	last := false
	if len(args) > 2 {
		c.refuseChunk(501, EnhancedCode{5, 5, 4}, "Too many arguments", size)
		return
	}
	if len(args) == 2 {
		if !strings.EqualFold(args[1], "LAST") {
			c.refuseChunk(501, EnhancedCode{5, 5, 4}, "Unknown BDAT argument", size)
			return
		}
		last = true
	}

	if !c.fromReceived || len(c.recipients) == 0 {
		c.refuseChunk(503, EnhancedCode{5, 5, 1}, "Missing RCPT TO command.", size)
		return
	}

	if c.lim.MaxMessageBytes != 0 && c.bytesReceived+int64(size) > c.lim.MaxMessageBytes {
		c.refuseChunk(552, EnhancedCode{5, 3, 4}, "Message size exceeds fixed limit", size)
		c.reset()
		return
	}

	if c.bdatStatus == nil && c.server.LMTP {
		c.bdatStatus = c.createStatusCollector()
	}

	if c.bdatPipe == nil {
		r, w := io.Pipe()
		c.locker.Lock() // mailhop patch: Close reads it from another goroutine
		c.bdatPipe = w
		c.locker.Unlock()

		c.dataResult = make(chan error, 1)
		c.bdatCheck = &lineChecker{maxLine: c.lim.MaxLineLength}
		// Taken here, not in the goroutine: reset waits for the goroutine
		// while holding the lock that Session() takes.
		session := c.Session()

		go func() {
			defer func() {
				if err := recover(); err != nil {
					c.handlePanic(err, c.bdatStatus)

					c.dataResult <- errPanic
					r.CloseWithError(errPanic)
				}
			}()

			var err error
			if !c.server.LMTP {
				err = session.Data(r)
			} else {
				lmtpSession, ok := session.(LMTPSession)
				if !ok {
					err = session.Data(r)
					for _, rcpt := range c.recipients {
						c.bdatStatus.SetStatus(rcpt, err)
					}
				} else {
					err = lmtpSession.LMTPData(r, c.bdatStatus)
				}
			}

			c.dataResult <- err
			r.CloseWithError(err)
		}()
	}

	chunk := &chunkReader{r: io.LimitReader(c.text.R, int64(size))}
	// mailhop patch: one copy buffer for the connection; io.Copy allocated
	// 32 KiB for every chunk, so a client sending BDAT 1 over and over
	// made the server allocate thousands of times what it sent.
	if c.bdatBuf == nil {
		c.bdatBuf = make([]byte, 32<<10)
	}
	_, err = io.CopyBuffer(c.bdatPipe, &checkedReader{r: chunk, check: c.bdatCheck}, c.bdatBuf)
	if err == nil && chunk.n < int64(size) {
		chunk.err = io.ErrUnexpectedEOF // the client left inside the chunk
	}
	if chunk.err != nil {
		// mailhop patch: the connection failed inside the chunk (timeout,
		// reset, EOF). The message is incomplete: the backend gets the
		// error (upstream accepted a chunk cut short by EOF as complete,
		// and queued a truncated message), and nothing more is read
		// (upstream read the rest of the chunk, waiting for the client a
		// second time).
		if p := c.takeBdatPipe(); p != nil {
			p.CloseWithError(chunk.err)
		}
		<-c.dataResult
		c.readError(chunk.err)
		return
	}
	if err == nil && last {
		err = c.bdatCheck.finish()
	}
	if err != nil {
		// Backend might return an error early using CloseWithError without
		// consuming the whole chunk, or the chunk itself was refused.
		if _, rerr := io.Copy(ioutil.Discard, chunk); rerr != nil {
			c.readError(rerr)
			return
		}
		if c.bdatCheck.err != nil {
			err = c.bdatCheck.err
		}
		// Let the backend see why the message was dropped, and wait for it.
		if p := c.takeBdatPipe(); p != nil {
			p.CloseWithError(err)
		}
		<-c.dataResult

		c.writeResponse(dataErrorToStatus(err))

		if err == errPanic {
			c.closing = true
		}

		c.reset()
		return
	}

	c.bytesReceived += int64(size)

	if last {
		if p := c.takeBdatPipe(); p != nil {
			p.Close()
		}
		err := <-c.dataResult

		if c.server.LMTP {
			c.bdatStatus.fillRemaining(err)
			for i, rcpt := range c.recipients {
				code, enchCode, msg := dataErrorToStatus(<-c.bdatStatus.status[i])
				c.writeResponse(code, enchCode, "<"+rcpt+"> "+msg)
			}
		} else {
			c.writeResponse(dataErrorToStatus(err))
		}

		if err == errPanic {
			c.closing = true
			return
		}

		c.reset()
	} else {
		c.writeResponse(250, EnhancedCode{2, 0, 0}, "Continue")
	}
}

// ErrDataReset is returned by Reader pased to Data function if client does not
// send another BDAT command and instead closes connection or issues RSET command.
var ErrDataReset = errors.New("smtp: message transmission aborted")

var errPanic = &SMTPError{
	Code:         421,
	EnhancedCode: EnhancedCode{4, 0, 0},
	Message:      "Internal server error",
}

func (c *Conn) handlePanic(err interface{}, status *statusCollector) {
	if status != nil {
		status.fillRemaining(errPanic)
	}

	stack := debug.Stack()
	c.server.ErrorLog.Printf("panic serving %v: %v\n%s", c.conn.RemoteAddr(), err, stack)
}

func (c *Conn) createStatusCollector() *statusCollector {
	rcptCounts := make(map[string]int, len(c.recipients))

	status := &statusCollector{
		statusMap: make(map[string]chan error, len(c.recipients)),
		status:    make([]chan error, 0, len(c.recipients)),
	}
	for _, rcpt := range c.recipients {
		rcptCounts[rcpt]++
	}
	// Create channels with buffer sizes necessary to fit all
	// statuses for a single recipient to avoid deadlocks.
	for rcpt, count := range rcptCounts {
		status.statusMap[rcpt] = make(chan error, count)
	}
	for _, rcpt := range c.recipients {
		status.status = append(status.status, status.statusMap[rcpt])
	}

	return status
}

type statusCollector struct {
	// Contains map from recipient to list of channels that are used for that
	// recipient.
	statusMap map[string]chan error

	// Contains channels from statusMap, in the same
	// order as Conn.recipients.
	status []chan error
}

// fillRemaining sets status for all recipients SetStatus was not called for before.
func (s *statusCollector) fillRemaining(err error) {
	// Amount of times certain recipient was specified is indicated by the channel
	// buffer size, so once we fill it, we can be confident that we sent
	// at least as much statuses as needed. Extra statuses will be ignored anyway.
chLoop:
	for _, ch := range s.statusMap {
		for {
			select {
			case ch <- err:
			default:
				continue chLoop
			}
		}
	}
}

func (s *statusCollector) SetStatus(rcptTo string, err error) {
	ch := s.statusMap[rcptTo]
	if ch == nil {
		panic("SetStatus is called for recipient that was not specified before")
	}

	select {
	case ch <- err:
	default:
		// There enough buffer space to fit all statuses at once, if this is
		// not the case - backend is doing something wrong.
		panic("SetStatus is called more times than particular recipient was specified")
	}
}

func (c *Conn) handleDataLMTP() {
	r := newDataReader(c)
	status := c.createStatusCollector()

	done := make(chan bool, 1)

	lmtpSession, ok := c.Session().(LMTPSession)
	if !ok {
		// Fallback to using a single status for all recipients.
		err := c.Session().Data(r)
		r.drain() // Make sure all the data has been consumed
		if r.err != nil {
			err = r.err
		}
		for _, rcpt := range c.recipients {
			status.SetStatus(rcpt, err)
		}
		done <- true
	} else {
		go func() {
			defer func() {
				if err := recover(); err != nil {
					status.fillRemaining(&SMTPError{
						Code:         421,
						EnhancedCode: EnhancedCode{4, 0, 0},
						Message:      "Internal server error",
					})

					stack := debug.Stack()
					c.server.ErrorLog.Printf("panic serving %v: %v\n%s", c.conn.RemoteAddr(), err, stack)
					done <- false
				}
			}()

			err := lmtpSession.LMTPData(r, status)
			r.drain() // Make sure all the data has been consumed
			if r.err != nil {
				err = r.err
			}
			status.fillRemaining(err)
			done <- true
		}()
	}

	for i, rcpt := range c.recipients {
		code, enchCode, msg := dataErrorToStatus(<-status.status[i])
		c.writeResponse(code, enchCode, "<"+rcpt+"> "+msg)
	}

	// If done gets false, the panic occurred in LMTPData and the connection
	// should be closed.
	if !<-done {
		c.closing = true
	}
}

func dataErrorToStatus(err error) (code int, enchCode EnhancedCode, msg string) {
	if err != nil {
		if smtperr, ok := err.(*SMTPError); ok {
			return smtperr.Code, smtperr.EnhancedCode, smtperr.Message
		} else {
			return 554, EnhancedCode{5, 0, 0}, "Error: transaction failed: " + err.Error()
		}
	}

	return 250, EnhancedCode{2, 0, 0}, "OK: queued"
}

func (c *Conn) Reject() {
	c.writeResponse(421, EnhancedCode{4, 4, 5}, "Too busy. Try again later.")
	c.Close()
}

// takeBdatPipe clears the BDAT message pipe under the lock and returns it,
// or nil when Close (from another goroutine) took it first (mailhop patch:
// the pipe was set and cleared without the lock Close takes).
func (c *Conn) takeBdatPipe() *io.PipeWriter {
	c.locker.Lock()
	defer c.locker.Unlock()
	p := c.bdatPipe
	c.bdatPipe = nil
	return p
}

// chunkReader reads a BDAT chunk and remembers how much it read and the
// connection's error, apart from the backend's (mailhop patch).
type chunkReader struct {
	r   io.Reader
	n   int64
	err error
}

func (cr *chunkReader) Read(b []byte) (int, error) {
	n, err := cr.r.Read(b)
	cr.n += int64(n)
	if err != nil && err != io.EOF {
		cr.err = err
	}
	return n, err
}

// readError answers a failed read: a timeout gets 421 (RFC 5321 §4.5.3.2),
// anything else (the client went away) no reply. The connection is closed
// after the current command either way.
func (c *Conn) readError(err error) {
	c.closing = true
	if neterr, ok := err.(net.Error); ok && neterr.Timeout() {
		c.writeTimeout()
	}
}

// TimeoutReasoner is implemented by a connection that knows why its read
// deadline passed (mailhop patch): a limit on the whole session is not
// idleness, and the 421 that ends the session says which it was.
type TimeoutReasoner interface {
	// TimeoutReason returns the text of the 421 4.4.2 reply to a read
	// that timed out, or "" for the default "Idle timeout, bye bye".
	TimeoutReason() string
}

// writeTimeout answers a read that timed out: 421 4.4.2, with the reason
// the connection gives (a TimeoutReasoner, under TLS too) or as idleness.
func (c *Conn) writeTimeout() {
	text := "Idle timeout, bye bye"
	nc := c.conn
	if tc, ok := nc.(*tls.Conn); ok {
		nc = tc.NetConn()
	}
	if r, ok := nc.(TimeoutReasoner); ok {
		if reason := r.TimeoutReason(); reason != "" {
			text = reason
		}
	}
	c.writeResponse(421, EnhancedCode{4, 4, 2}, text)
}

func (c *Conn) greet() {
	protocol := "ESMTP"
	if c.server.LMTP {
		protocol = "LMTP"
	}
	c.writeResponse(220, NoEnhancedCode, fmt.Sprintf("%v %s Service Ready", c.domain, protocol))
}

func (c *Conn) writeResponse(code int, enhCode EnhancedCode, text ...string) {
	switch {
	case code == 421:
		// RFC 5321 §3.8: 421 means the server closes the channel.
		c.closing = true
	case code == 452 && enhCode == (EnhancedCode{4, 5, 3}):
		// Too many recipients is normal flow (RFC 5321 §4.5.3.1.10).
	case code >= 400:
		c.errCount++
	}

	// TODO: error handling
	if c.lim.WriteTimeout != 0 {
		c.conn.SetWriteDeadline(time.Now().Add(c.lim.WriteTimeout))
	}

	// All responses must include an enhanced code, if it is missing - use
	// a generic code X.0.0.
	if enhCode == EnhancedCodeNotSet {
		cat := code / 100
		switch cat {
		case 2, 4, 5:
			enhCode = EnhancedCode{cat, 0, 0}
		default:
			enhCode = NoEnhancedCode
		}
	}

	// transform each single line with \n, into separate lines
	text = strings.Split(strings.Join(text, "\n"), "\n")

	// The whole reply goes out in one write: a multiline reply (EHLO) sent
	// line by line costs a system call and a wakeup of the client per line.
	w := c.text.W
	lastLineIndex := len(text) - 1
	for i := 0; i < lastLineIndex; i++ {
		writeReplyLine(w, code, '-', NoEnhancedCode, text[i])
	}
	err := writeReplyLine(w, code, ' ', enhCode, text[lastLineIndex])
	// Intermediate replies (354, 334), the greeting and STARTTLS's 220, and
	// any reply before the channel closes always go out at once.
	mustFlush := code/100 == 3 || code == 220 || code == 221 || c.closing
	if err == nil && (mustFlush || !c.pipelinedInput()) {
		err = w.Flush()
	}
	if err != nil && !c.closing {
		// mailhop patch: a reply that cannot be written (the client
		// stopped reading until WriteTimeout, or reset the connection)
		// ends the session; it went on reading and running commands it
		// could no longer answer. bufio's error is sticky: a failed
		// earlier write or flush is reported here too.
		c.closing = true
		c.closeErr = fmt.Errorf("writing a reply: %w", err)
	}
}

// writeReplyLine writes one line of a reply: code, separator ('-' or ' '),
// the enhanced code unless it is NoEnhancedCode, the text and CRLF. It
// returns the writer's error, which stays once a write has failed.
func writeReplyLine(w *bufio.Writer, code int, sep byte, enhCode EnhancedCode, text string) error {
	var b [16]byte
	line := strconv.AppendInt(b[:0], int64(code), 10)
	line = append(line, sep)
	w.Write(line)
	if enhCode != NoEnhancedCode {
		e := strconv.AppendInt(b[:0], int64(enhCode[0]), 10)
		e = append(e, '.')
		e = strconv.AppendInt(e, int64(enhCode[1]), 10)
		e = append(e, '.')
		e = strconv.AppendInt(e, int64(enhCode[2]), 10)
		e = append(e, ' ')
		w.Write(e)
	}
	w.WriteString(text)
	_, err := w.WriteString("\r\n")
	return err
}

// pipelinedInput reports whether the client has already sent a whole
// further command line, so a reply may wait in the buffer and go out
// together with the replies to the commands that follow (RFC 2920 §3.2;
// Postfix's smtpd does the same). The buffer is flushed before any read
// that could block, so a client never waits for a reply held back here.
func (c *Conn) pipelinedInput() bool {
	if c.text.R.Buffered() == 0 {
		return false
	}
	b, _ := c.text.R.Peek(c.text.R.Buffered())
	return bytes.IndexByte(b, '\n') >= 0
}

func (c *Conn) writeError(code int, enhCode EnhancedCode, err error) {
	if smtpErr, ok := err.(*SMTPError); ok {
		c.writeResponse(smtpErr.Code, smtpErr.EnhancedCode, smtpErr.Message)
	} else {
		c.writeResponse(code, enhCode, err.Error())
	}
}

// Reads a command line of input.
func (c *Conn) readLine() (string, error) {
	// mailhop patch: an AUTH command with its initial response may be as
	// long as a SASL response (RFC 4954 §4: 12288 octets); every other
	// command keeps the command limit.
	line, err := c.readLineLimit(c.authLineLimit())
	if err == nil && len(line)+2 > c.commandLineLimit() && !(len(line) > 5 && strings.EqualFold(line[:5], "AUTH ")) {
		return "", errLineTooLong
	}
	return line, err
}

func (c *Conn) commandLineLimit() int {
	if c.server.MaxCommandLength > 0 {
		return c.server.MaxCommandLength
	}
	return DefaultMaxCommandLength
}

// authLineLimit is the limit for SASL responses: RFC 4954 §4 wants at
// least 12288 octets.
func (c *Conn) authLineLimit() int {
	if l := c.commandLineLimit(); l > 12288 {
		return l
	}
	return 12288
}

// readLineLimit reads one line of at most limit octets including the line
// ending. A longer line is read to its end and discarded, and
// errLineTooLong is returned, so that the session can go on in step with
// the client.
func (c *Conn) readLineLimit(limit int) (string, error) {
	if c.text.W.Buffered() > 0 && !c.pipelinedInput() {
		c.text.W.Flush() // replies held back for pipelining (see writeResponse)
	}
	var line []byte
	tooLong := false
	for {
		frag, err := c.text.R.ReadSlice('\n')
		if err != nil && err != bufio.ErrBufferFull {
			return "", err
		}
		if !tooLong {
			if len(line)+len(frag) > limit {
				tooLong = true
				line = nil
			} else {
				line = append(line, frag...)
			}
		}
		if err == nil {
			break
		}
	}
	if tooLong {
		return "", errLineTooLong
	}
	line = bytes.TrimSuffix(line, []byte("\n"))
	line = bytes.TrimSuffix(line, []byte("\r"))
	return string(line), nil
}

// timeoutReader refreshes the read deadline before every read from the
// network, so that Server.ReadTimeout bounds each wait for the client, in
// commands and in message data alike.
type timeoutReader struct{ c *Conn }

func (r timeoutReader) Read(b []byte) (int, error) {
	if d := r.c.lim.ReadTimeout; d != 0 {
		if err := r.c.conn.SetReadDeadline(time.Now().Add(d)); err != nil {
			return 0, err
		}
	}
	// After the deadline is set: Shutdown sets draining before it moves
	// the deadline of a waiting session, so one of the two stops this read.
	if r.c.waitingOn != nil && r.c.server.draining.Load() {
		return 0, errDraining
	}
	return r.c.conn.Read(b)
}

// errDraining ends a wait for a command when the server shuts down.
var errDraining = errors.New("smtp: server shutting down")

// setWaiting marks whether the session now waits for a command outside a
// transaction, the wait Shutdown cuts short.
func (c *Conn) setWaiting(idle bool) {
	c.waitMu.Lock()
	defer c.waitMu.Unlock()
	if idle {
		c.waitingOn = c.conn
	} else {
		c.waitingOn = nil
	}
}

// interruptIdle wakes the session if it waits for a command outside a
// transaction (called by Shutdown after setting draining).
func (c *Conn) interruptIdle() {
	c.waitMu.Lock()
	defer c.waitMu.Unlock()
	if c.waitingOn != nil {
		c.waitingOn.SetReadDeadline(time.Now())
	}
}

func (c *Conn) reset() {
	c.locker.Lock()
	defer c.locker.Unlock()

	if c.bdatPipe != nil {
		c.bdatPipe.CloseWithError(ErrDataReset)
		// Wait for Session.Data to return, so that Session.Reset below never
		// runs concurrently with it.
		<-c.dataResult
		c.bdatPipe = nil
	}
	c.bdatCheck = nil
	c.bdatStatus = nil
	c.bytesReceived = 0

	if c.session != nil {
		c.session.Reset()
	}

	c.fromReceived = false
	c.recipients = nil
}
