package outbound

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"

	"github.com/mailhop/mailhop/relay/config"
	"github.com/mailhop/mailhop/relay/smtperr"
)

// target is one host to try for a domain group: an MX host or a smarthost.
type target struct {
	host  string       // name for logs, TLS ServerName and Remote-MTA
	addrs []netip.Addr // nil: resolve host with LookupHost when reached
	port  int
	route *config.Route // nil for MX delivery
	pref  uint16        // MX preference (0 for a route or an implicit MX)
	// dnssec: the MX record and host's addresses are DNSSEC-secure, so its
	// TLSA records may be used (RFC 7672 §2.2).
	dnssec bool
}

// connKey identifies connections that are interchangeable for reuse.
type connKey struct {
	addr  string // ip:port
	host  string // the name certificates are checked against
	mode  string // tlsPlan.key()
	route string // "" for MX; smarthost and user for a route
	// cfg is the configuration the connection was set up under: after a
	// reload, mail goes over new sessions (the EHLO hostname, a route's
	// roots and credentials), and the old ones go at their idle timeout.
	cfg *config.Config
}

// conn is one SMTP client connection, set up and ready for MAIL.
type conn struct {
	c      *smtp.Client
	raw    net.Conn // what c reads and writes (TLS included)
	key    connKey
	host   string
	tlsVer string // "" when plain text
	// verified: the certificate passed the plan's check (or, when the
	// plan checks none, would have passed a PKIX check).
	verified bool
	dsn      bool
	utf8     bool
	eightBit bool  // offers 8BITMIME
	maxSize  int64 // 0: none announced
	rcptMax  int   // LIMITS RCPTMAX (RFC 9422): most recipients per transaction; 0: none announced
	mailMax  int   // LIMITS MAILMAX (RFC 9422): most transactions per connection; 0: none announced
	reused   bool
	used     bool // a transaction was run on it
	txns     int  // the MAIL commands sent on it
	// spent: the server takes no more transactions on this connection:
	// it refused one that followed another (a 4xx to MAIL, or to every
	// RCPT for too many recipients), or its MAILMAX is reached. It is not
	// kept for reuse.
	spent bool
	// inTxn: a MAIL was sent and no reply to the end of data came back,
	// so the server may still hold a transaction: the next one starts
	// with RSET (RFC 5321 §4.1.1.5).
	inTxn bool

	idle  *time.Timer // while in the pool
	since time.Time   // when it went into the pool
	born  time.Time   // when it was set up (the agent's clock)
	// dest is the destination (see destination) whose mail the
	// connection carried last: idle in the pool, the connection keeps it
	// alive (see markDead).
	dest string
}

func (cn *conn) close() { cn.raw.Close() }

// exhausted reports whether the server takes no more transactions on cn:
// it is spent, or it carried the most its server announced (MAILMAX).
func (cn *conn) exhausted() bool {
	return cn.spent || cn.mailMax > 0 && cn.txns >= cn.mailMax
}

// end closes a connection not to be reused: a spent one, whose server is in
// step and waiting for a command, with QUIT; any other at once.
func (cn *conn) end() {
	if cn.spent {
		go quit(cn)
		return
	}
	cn.close()
}

// unsolicited reports whether the server sent something (or closed the
// connection) that no command asked for: read past the last reply, or
// waiting on the socket. Between transactions a server in step sends
// nothing; a second reply to the end of data would be read as the reply to
// the next MAIL (a stale 550 bounced the next message).
func (cn *conn) unsolicited() (data bool, closed bool) {
	if cn.c.Buffered() > 0 {
		return true, false
	}
	nc := cn.raw
	tc, isTLS := nc.(*tls.Conn)
	if isTLS {
		nc = tc.NetConn()
	}
	sc, ok := nc.(syscall.Conn)
	if !ok {
		return false, false
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return false, false
	}
	var n int
	var perr error
	var b [1]byte
	if err := rc.Read(func(fd uintptr) bool {
		n, _, perr = syscall.Recvfrom(int(fd), b[:], syscall.MSG_PEEK|syscall.MSG_DONTWAIT)
		return true // never wait
	}); err != nil {
		return false, true
	}
	switch {
	case n > 0 && isTLS:
		return false, true // a TLS record: data, or the server's close_notify
	case n > 0:
		return true, false
	case perr == nil: // end of file: the server closed
		return false, true
	case perr != syscall.EAGAIN && perr != syscall.EWOULDBLOCK:
		return false, true // reset
	}
	return false, false
}

// stageError is a failure to set up a connection or a reply that ends the
// connection before DATA: the caller moves on to the next address.
type stageError struct {
	stage string
	err   *smtperr.Error
	tls   bool // the TLS handshake itself failed
	// policy: the TLS policy was not met (TLS missing or failed where
	// required, certificate rejected, MX not in the MTA-STS policy, no
	// REQUIRETLS): the mail is deferred, or bounced for REQUIRETLS.
	policy bool
	// loop: the server greeted or answered EHLO with our own hostname
	// (RFC 5321 §5.1): delivering would send the mail back to us.
	loop bool
	// timeout: no reply or no progress came within the stage's timeout
	// (not a refusal, reset or close): the session waited it out.
	timeout bool
	cause   error // the certificate check's error, when it failed
	// TLS that was set up before the failure (AUTH refused, no
	// REQUIRETLS), for the attempt log: "" when none.
	tlsVer   string
	verified bool
}

func (e *stageError) Error() string { return e.stage + ": " + e.err.Error() }

func stageErr(stage string, err error) *stageError {
	se := smtperr.Classify(err)
	if se.Code == 0 {
		se = &smtperr.Error{Enhanced: netStatus(err), Msg: netText(stage, err, se.Msg)}
	}
	return &stageError{stage: stage, err: se, timeout: se.Code == 0 && isTimeout(err)}
}

// isTimeout reports whether err is a connection's deadline or a context's
// that passed.
func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout() || errors.Is(err, context.DeadlineExceeded) || errors.Is(err, os.ErrDeadlineExceeded)
}

// netText says what went wrong with the connection in words a sender
// reading a delay notice or `queue list` understands, naming the stage
// (Postfix's "conversation timed out while sending MAIL FROM"), instead of
// Go's "read tcp 127.0.0.1:39812->192.0.2.1:25: i/o timeout". Errors it does
// not know keep their own text after the stage.
func netText(stage string, err error, text string) string {
	switch {
	case isTimeout(err):
		return "timed out during " + stage
	case errors.Is(err, syscall.ECONNREFUSED):
		return "connection refused"
	case errors.Is(err, syscall.EHOSTUNREACH), errors.Is(err, syscall.ENETUNREACH):
		return "no route to the host"
	case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF):
		return "connection closed by the server during " + stage
	case errors.Is(err, syscall.ECONNRESET), errors.Is(err, syscall.EPIPE):
		return "connection reset by the server during " + stage
	}
	return stage + ": " + text
}

// netStatus picks an RFC 3463 status for a network error.
func netStatus(err error) string {
	var ne net.Error
	switch {
	case errors.As(err, &ne) && ne.Timeout(), errors.Is(err, context.DeadlineExceeded):
		return "4.4.2" // bad connection
	case errors.Is(err, os.ErrDeadlineExceeded):
		return "4.4.2"
	}
	var oe *net.OpError
	if errors.As(err, &oe) && oe.Op == "dial" {
		return "4.4.1" // no answer from host
	}
	return "4.4.2"
}

// dialConn connects to addr for target t and runs the greeting, EHLO,
// STARTTLS and AUTH as plan p says; greeted is called when the server's
// greeting was a 220. ref names the message the connection is made for,
// in the lines logged about it.
func (a *Agent) dialConn(ctx context.Context, cfg *config.Config, t *target, addr netip.AddrPort, p *tlsPlan, ref msgRef, greeted func()) (*conn, error) {
	tm := timeouts(cfg)
	dctx, cancel := context.WithTimeout(ctx, tm.connect)
	raw, err := a.dial(dctx, "tcp", addr.String())
	cancel()
	if err != nil {
		return nil, stageErr("connect", err)
	}
	// Until the connection is set up, cancelling ctx closes it.
	stop := context.AfterFunc(ctx, func() { raw.Close() })
	defer stop()

	cn := &conn{raw: raw, host: t.host, key: connKey{addr: addr.String(), host: t.host, mode: p.key(), route: a.routeID(cfg, t.route), cfg: cfg}, born: a.now()}
	var vr tlsResult
	fail := func(se *stageError) (*conn, error) {
		raw.Close()
		se.tlsVer, se.verified = cn.tlsVer, cn.tlsVer != "" && vr.verified
		// A session the shutdown cut short did not fail for the report.
		if ((se.policy && se.stage != "requiretls") || se.tls) && ctx.Err() == nil {
			a.countTLSFailure(p, t.host, addr.String(), raw.LocalAddr(), se)
		}
		return nil, se
	}
	if p.implicit {
		tc := tls.Client(raw, a.clientTLS(p, t.host, &vr))
		tc.SetDeadline(time.Now().Add(tm.greeting))
		if err := tc.HandshakeContext(ctx); err != nil {
			return fail(handshakeErr(err, &vr))
		}
		tc.SetDeadline(time.Time{})
		cn.raw, cn.tlsVer = tc, tls.VersionName(tc.ConnectionState().Version)
	}
	c := smtp.NewClient(cn.raw)
	c.CommandTimeout = tm.greeting
	if err := c.Greet(); err != nil {
		return fail(stageErr("greeting", err))
	}
	greeted()
	c.CommandTimeout = tm.command
	if err := c.Hello(cfg.Hostname); err != nil {
		return fail(stageErr("ehlo", err))
	}
	if name, ok := namesUs(c, cfg.Hostname); ok {
		quitClient(c)
		return fail(&stageError{stage: "greeting", loop: true,
			err: smtperr.New(0, "5.4.6", "%s greets as %s, which is this relay's hostname", t.host, name)})
	}
	ok, _ := c.Extension("STARTTLS")
	switch {
	case p.implicit || p.plain:
	case !ok && p.required:
		return fail(policyError("starttls", "4.7.4", "%s does not offer STARTTLS, required by %s", t.host, p.requiredBy()))
	case !ok && p.stsTesting:
		a.log.Warn("mta-sts testing: server does not offer STARTTLS; delivering anyway", ref.attrs("domain", p.policyDomain,
			"mx", t.host, "addr", addr.String())...)
		a.countTLSFailure(p, t.host, addr.String(), raw.LocalAddr(), policyError("starttls", "4.7.4", "STARTTLS not offered"))
	case ok:
		tc, err := startTLS(cn.raw, a.clientTLS(p, t.host, &vr), tm.command)
		if err != nil {
			if err.tls {
				return fail(handshakeErr(err, &vr))
			}
			if !p.required && err.err.Code >= 400 && err.err.Code != 421 {
				// STARTTLS refused (454 TLS not available, 502): with
				// opportunistic TLS the session goes on in plain text,
				// as Postfix's smtp_tls_security_level = may does.
				a.log.Info("STARTTLS refused; continuing without TLS", ref.attrs("mx", t.host, "addr", addr.String(),
					"reply", err.err.Error())...)
				if p.stsTesting {
					a.countTLSFailure(p, t.host, addr.String(), raw.LocalAddr(), policyError("starttls", "4.7.4", "STARTTLS refused: %v", err.err))
				}
				break
			}
			return fail(err)
		}
		// The go-smtp client cannot STARTTLS with our EHLO name, so the
		// STARTTLS exchange is ours and a new client continues over TLS,
		// given a greeting to read as a fresh connection would.
		cn.raw, cn.tlsVer = tc, tls.VersionName(tc.ConnectionState().Version)
		c = smtp.NewClient(&greetedConn{Conn: tc, pending: []byte("220 TLS\r\n")})
		c.CommandTimeout = tm.command
		if err := c.Hello(cfg.Hostname); err != nil {
			return fail(stageErr("ehlo after starttls", err))
		}
	}
	cn.verified = cn.tlsVer != "" && vr.verified
	if cn.tlsVer != "" && p.stsTesting && !vr.verified {
		a.log.Warn("mta-sts testing: certificate not valid for the MX host; delivering anyway", ref.attrs("domain", p.policyDomain,
			"mx", t.host, "addr", addr.String(), "err", fmt.Sprint(vr.err))...)
		a.countTLSFailure(p, t.host, addr.String(), raw.LocalAddr(), &stageError{stage: "tls", err: smtperr.New(0, "4.7.5", "%v", vr.err), tls: true, cause: vr.err})
	} else if cn.tlsVer != "" && !p.counted {
		a.tlsStats.AddSuccess(p.policyDomain, p.policyType, p.policyStr, t.host)
	}
	if p.requireTLS {
		if ok, _ := c.Extension("REQUIRETLS"); !ok {
			// Checked after the TLS report count: the TLS session was
			// good (RFC 8460 has no result for a missing extension).
			return fail(policyError("requiretls", "5.7.30", "%s does not offer REQUIRETLS (RFC 8689)", t.host))
		}
	}
	cn.c = c
	if r := t.route; r != nil && r.Username != "" {
		if err := a.auth(cn, r); err != nil {
			return fail(err)
		}
	}
	cn.dsn, _ = c.Extension("DSN")
	cn.utf8, _ = c.Extension("SMTPUTF8")
	cn.eightBit, _ = c.Extension("8BITMIME")
	if ok, v := c.Extension("SIZE"); ok {
		cn.maxSize, _ = strconv.ParseInt(v, 10, 64)
	}
	if ok, v := c.Extension("LIMITS"); ok {
		cn.rcptMax, cn.mailMax = limitsRcptMax(v), limitsValue(v, "MAILMAX")
	}
	if cn.tlsVer != "" {
		a.stats.tlsConns.Add(1)
	}
	return cn, nil
}

// limitsRcptMax returns the RCPTMAX of the LIMITS extension's parameters
// ("RCPTMAX=30 MAILMAX=100"; RFC 9422 §4.2: the most RCPT commands the
// server takes in a transaction), 0 when there is none, or none that is a
// positive number.
func limitsRcptMax(params string) int { return limitsValue(params, "RCPTMAX") }

// limitsValue returns the limit name of the LIMITS extension's parameters
// (RCPTMAX, or MAILMAX: RFC 9422 §4.1, the most transactions the server
// takes in a session), 0 when there is none, or none that is a positive
// number.
func limitsValue(params, name string) int {
	for _, f := range strings.Fields(params) {
		if k, v, ok := strings.Cut(f, "="); ok && strings.EqualFold(k, name) {
			if n, err := strconv.Atoi(v); err == nil && n > 0 {
				return n
			}
			return 0
		}
	}
	return 0
}

// namesUs reports whether the server's greeting or its reply to EHLO
// starts with hostname (ignoring case and a final dot): then the
// connection came back to this relay (RFC 5321 §5.1: "mail for X loops
// back to myself", as Postfix says). The name found is returned.
func namesUs(c *smtp.Client, hostname string) (string, bool) {
	me := strings.TrimSuffix(hostname, ".")
	for _, text := range []string{c.Greeting(), c.HelloReply()} {
		if f := strings.Fields(text); len(f) > 0 && strings.EqualFold(strings.TrimSuffix(f[0], "."), me) {
			return f[0], true
		}
	}
	return "", false
}

// quitClient ends a session politely without waiting long for the reply.
func quitClient(c *smtp.Client) {
	c.CommandTimeout = 5 * time.Second
	if c.Quit() != nil {
		c.Close()
	}
}

// handshakeErr describes a failed TLS handshake: a rejected certificate is
// the policy's failure (4.7.5), anything else a TLS failure. A certificate
// that did not verify where the plan does not check it (may, encrypt) did
// not stop the handshake, so the handshake's own error is kept.
func handshakeErr(err error, vr *tlsResult) *stageError {
	var se *stageError
	if !errors.As(err, &se) {
		se = stageErr("tls handshake", err)
	}
	se.tls = true
	if vr.rejected {
		se.err = smtperr.New(0, "4.7.5", "certificate rejected: %v", vr.err)
		se.policy, se.cause = true, vr.err
	}
	return se
}

// countTLSFailure counts a failed session for TLS reporting; local is the
// relay's end of the connection (the report's sending-mta-ip).
func (a *Agent) countTLSFailure(p *tlsPlan, host, addr string, local net.Addr, se *stageError) {
	ip, _, _ := net.SplitHostPort(addr)
	sendIP := ""
	if local != nil {
		sendIP, _, _ = net.SplitHostPort(local.String())
	}
	result := "validation-failure"
	switch {
	case se.stage == "starttls":
		result = "starttls-not-supported"
	case se.cause != nil && p.check != checkDANE:
		result = resultType(se.cause)
	}
	a.tlsStats.AddFailure(p.policyDomain, p.policyType, p.policyStr, host, ip, sendIP, result, se.err.Error())
}

// auth authenticates over TLS with PLAIN or LOGIN (RFC 4954); credentials
// are never sent in plain text.
func (a *Agent) auth(cn *conn, r *config.Route) *stageError {
	if cn.tlsVer == "" {
		return &stageError{stage: "auth", err: smtperr.New(0, "4.7.10", "refusing AUTH without TLS (route tls = %q)", r.TLS)}
	}
	var cl sasl.Client
	switch {
	case cn.c.SupportsAuth(sasl.Plain):
		cl = sasl.NewPlainClient("", r.Username, r.Password)
	case cn.c.SupportsAuth(sasl.Login):
		cl = &loginClient{user: r.Username, pass: r.Password}
	default:
		return &stageError{stage: "auth", err: smtperr.New(0, "4.7.4", "server offers neither AUTH PLAIN nor LOGIN")}
	}
	if err := cn.c.Auth(cl); err != nil {
		se := stageErr("auth", err)
		// A rejected login is a configuration problem: retry, never bounce.
		se.err = &smtperr.Error{Enhanced: "4.7.8", Msg: se.err.Error()}
		return se
	}
	return nil
}

// loginClient is the client side of AUTH LOGIN (draft-murchison-sasl-login):
// no initial response, then the user name in answer to the first challenge
// and the password to the second, whatever they say, as the draft tells
// clients. go-sasl's LOGIN client sends the user name as an initial response
// and then takes only the challenge "Password:", which failed every attempt
// with a server that words it otherwise (Exim's documented example, "User
// Name : Password"; the draft's own "Password\x00") or that takes no initial
// response and asks for the user name.
type loginClient struct {
	user, pass string
	step       int
}

func (l *loginClient) Start() (mech string, ir []byte, err error) {
	return sasl.Login, nil, nil
}

func (l *loginClient) Next(challenge []byte) ([]byte, error) {
	l.step++
	switch l.step {
	case 1:
		return []byte(l.user), nil
	case 2:
		return []byte(l.pass), nil
	}
	return nil, errors.New("AUTH LOGIN: a third challenge, after the user name and password")
}

// startTLS sends STARTTLS on raw (after EHLO) and runs the handshake.
func startTLS(raw net.Conn, cfg *tls.Config, timeout time.Duration) (*tls.Conn, *stageError) {
	raw.SetDeadline(time.Now().Add(timeout))
	defer raw.SetDeadline(time.Time{})
	if _, err := io.WriteString(raw, "STARTTLS\r\n"); err != nil {
		return nil, stageErr("starttls", err)
	}
	// Read the reply byte by byte: nothing after it may be consumed, it
	// belongs to the TLS handshake.
	br := bufio.NewReaderSize(oneByteReader{raw}, 16)
	left := maxStartTLSReply
	for {
		line, err := readLineMax(br, &left)
		if err != nil {
			return nil, stageErr("starttls", err)
		}
		line = strings.TrimRight(line, "\r\n")
		if len(line) < 3 {
			return nil, &stageError{stage: "starttls", err: smtperr.New(0, "4.5.0", "malformed reply %q", line)}
		}
		if len(line) > 3 && line[3] == '-' {
			continue
		}
		code, _ := strconv.Atoi(line[:3])
		if code != 220 {
			enh, text := smtperr.ParseReply(strings.TrimSpace(line[3:]))
			return nil, &stageError{stage: "starttls", err: &smtperr.Error{Code: code, Enhanced: enh, Msg: text}}
		}
		break
	}
	tc := tls.Client(raw, cfg)
	if err := tc.Handshake(); err != nil {
		se := stageErr("tls handshake", err)
		se.tls = true
		return nil, se
	}
	return tc, nil
}

// maxStartTLSReply bounds the octets of the reply to STARTTLS: a server
// that sends a line without end (or lines without end) is not read for
// the whole command_timeout, a byte and a system call at a time, into
// memory.
const maxStartTLSReply = 4096

// readLineMax reads one line from br, taking its octets from *left; a line
// that does not end within them is an error.
func readLineMax(br *bufio.Reader, left *int) (string, error) {
	var line []byte
	for *left > 0 {
		b, err := br.ReadByte()
		if err != nil {
			return "", err
		}
		*left--
		line = append(line, b)
		if b == '\n' {
			return string(line), nil
		}
	}
	return "", fmt.Errorf("reply of more than %d octets", maxStartTLSReply)
}

// oneByteReader reads at most one byte per call, so a bufio.Reader on top
// never reads past the end of a line.
type oneByteReader struct{ r io.Reader }

func (o oneByteReader) Read(p []byte) (int, error) {
	if len(p) > 1 {
		p = p[:1]
	}
	return o.r.Read(p)
}

// greetedConn replays a greeting line before the connection's own bytes.
type greetedConn struct {
	net.Conn
	pending []byte
}

func (g *greetedConn) Read(p []byte) (int, error) {
	if len(g.pending) > 0 {
		n := copy(p, g.pending)
		g.pending = g.pending[n:]
		return n, nil
	}
	return g.Conn.Read(p)
}

// stageTimeouts are the per-stage client timeouts (RFC 5321 §4.5.3.2).
type stageTimeouts struct {
	connect, greeting, command, dataInit, data, dataEnd, idle time.Duration
}

func timeouts(cfg *config.Config) stageTimeouts {
	d := cfg.Delivery
	or := func(v config.Duration, def time.Duration) time.Duration {
		if v.Duration > 0 {
			return v.Duration
		}
		return def
	}
	return stageTimeouts{
		connect:  or(d.ConnectTimeout, 30*time.Second),
		greeting: or(d.GreetingTimeout, 5*time.Minute),
		command:  or(d.CommandTimeout, 5*time.Minute),
		dataInit: or(d.DataInitTimeout, 2*time.Minute),
		data:     or(d.DataTimeout, 3*time.Minute),
		dataEnd:  or(d.DataEndTimeout, 10*time.Minute),
		idle:     or(d.IdleConnTimeout, 30*time.Second),
	}
}
