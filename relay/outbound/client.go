package outbound

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"io"
	"net"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"

	"github.com/mailhop/mailhop/relay/config"
	"github.com/mailhop/mailhop/relay/smtperr"
)

// TLS modes of a connection (connKey.mode).
const (
	modeOpportunistic = "opportunistic" // MX: STARTTLS when offered, unverified
	modePlain         = "plain"         // MX after a failed handshake, or route tls = "none"
	modeStartTLS      = config.RouteTLSStartTLS
	modeImplicit      = config.RouteTLSImplicit
)

// target is one host to try for a domain group: an MX host or a smarthost.
type target struct {
	host  string       // name for logs, TLS ServerName and Remote-MTA
	addrs []netip.Addr // nil: resolve host with LookupHost when reached
	port  int
	route *config.Route // nil for MX delivery
}

// connKey identifies connections that are interchangeable for reuse.
type connKey struct {
	addr  string // ip:port
	mode  string
	route string // "" for MX; smarthost and user for a route
}

// conn is one SMTP client connection, set up and ready for MAIL.
type conn struct {
	c       *smtp.Client
	raw     net.Conn // what c reads and writes (TLS included)
	key     connKey
	host    string
	tlsVer  string // "" when plain text
	dsn     bool
	utf8    bool
	maxSize int64 // 0: none announced
	reused  bool

	idle *time.Timer // while in the pool
}

func (cn *conn) close() { cn.raw.Close() }

// stageError is a failure to set up a connection or a reply that ends the
// connection before DATA: the caller moves on to the next address.
type stageError struct {
	stage string
	err   *smtperr.Error
	tls   bool // the TLS handshake itself failed
}

func (e *stageError) Error() string { return e.stage + ": " + e.err.Error() }

func stageErr(stage string, err error) *stageError {
	se := smtperr.Classify(err)
	if se.Code == 0 {
		se = &smtperr.Error{Enhanced: netStatus(err), Msg: se.Msg}
	}
	return &stageError{stage: stage, err: se}
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
// STARTTLS and AUTH. mode is the TLS mode to use.
func (a *Agent) dialConn(ctx context.Context, cfg *config.Config, t *target, addr netip.AddrPort, mode string) (*conn, error) {
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

	cn := &conn{raw: raw, host: t.host, key: connKey{addr: addr.String(), mode: mode, route: routeKey(t.route)}}
	fail := func(se *stageError) (*conn, error) {
		raw.Close()
		return nil, se
	}
	if mode == modeImplicit {
		tc := tls.Client(raw, a.tlsConfig(t, true))
		tc.SetDeadline(time.Now().Add(tm.greeting))
		if err := tc.HandshakeContext(ctx); err != nil {
			se := stageErr("tls", err)
			se.tls = true
			return fail(se)
		}
		tc.SetDeadline(time.Time{})
		cn.raw, cn.tlsVer = tc, tls.VersionName(tc.ConnectionState().Version)
	}
	c := smtp.NewClient(cn.raw)
	c.CommandTimeout = tm.greeting
	if err := c.Hello(cfg.Hostname); err != nil {
		return fail(stageErr("greeting", err))
	}
	c.CommandTimeout = tm.command
	ok, _ := c.Extension("STARTTLS")
	switch {
	case mode == modeStartTLS && !ok:
		return fail(&stageError{stage: "starttls", err: smtperr.New(0, "4.7.4", "server does not offer STARTTLS, required by the route")})
	case (mode == modeStartTLS || mode == modeOpportunistic) && ok:
		tc, err := startTLS(cn.raw, a.tlsConfig(t, mode == modeStartTLS), tm.command)
		if err != nil {
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
	cn.c = c
	if r := t.route; r != nil && r.Username != "" {
		if err := a.auth(cn, r); err != nil {
			return fail(err)
		}
	}
	cn.dsn, _ = c.Extension("DSN")
	cn.utf8, _ = c.Extension("SMTPUTF8")
	if ok, v := c.Extension("SIZE"); ok {
		cn.maxSize, _ = strconv.ParseInt(v, 10, 64)
	}
	if cn.tlsVer != "" {
		a.stats.tlsConns.Add(1)
	}
	return cn, nil
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
		cl = sasl.NewLoginClient(r.Username, r.Password)
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

// tlsConfig returns the TLS client configuration for t: verified against
// the system roots and the route's ca_file for routes, unverified (TLS 1.2
// or later) for opportunistic MX delivery.
func (a *Agent) tlsConfig(t *target, verify bool) *tls.Config {
	cfg := &tls.Config{ServerName: t.host, MinVersion: tls.VersionTLS12}
	if !verify {
		cfg.InsecureSkipVerify = true // RFC 7435 opportunistic security
		return cfg
	}
	cfg.RootCAs = a.rootCAs(t.route)
	return cfg
}

// rootCAs returns the system roots plus the route's ca_file (cached).
func (a *Agent) rootCAs(r *config.Route) *x509.CertPool {
	if r == nil || r.CAFile == "" {
		return nil // system roots
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	if p, ok := a.caPools[r.CAFile]; ok {
		return p
	}
	pool, err := x509.SystemCertPool()
	if err != nil || pool == nil {
		pool = x509.NewCertPool()
	}
	pem, err := os.ReadFile(r.CAFile)
	if err != nil || !pool.AppendCertsFromPEM(pem) {
		a.log.Error("route ca_file unusable; using system roots only", "ca_file", r.CAFile, "err", err)
	}
	a.caPools[r.CAFile] = pool
	return pool
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
	for {
		line, err := br.ReadString('\n')
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

func routeKey(r *config.Route) string {
	if r == nil {
		return ""
	}
	return strings.Join(r.Smarthosts, ",") + "|" + r.TLS + "|" + r.Username
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
		data:     or(d.DataTimeout, 10*time.Minute),
		dataEnd:  or(d.DataEndTimeout, 10*time.Minute),
		idle:     or(d.IdleConnTimeout, 30*time.Second),
	}
}
