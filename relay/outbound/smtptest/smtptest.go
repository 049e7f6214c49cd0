// Package smtptest runs scripted SMTP servers on loopback for tests, in the
// manner of net/http/httptest: smtptest.New(t, "127.0.0.2:0", behaviour)
// starts one, records every message it accepts, and closes it when the test
// ends. A Behaviour can answer 4xx or 5xx per command or recipient, stall,
// drop the connection in the middle of DATA (at once or after some messages
// on the connection), and offer or omit STARTTLS, AUTH, DSN, SMTPUTF8, SIZE,
// REQUIRETLS and LIMITS RCPTMAX, and leave out 8BITMIME or PIPELINING.
package smtptest

import (
	"bytes"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"
)

// Behaviour scripts a server. The zero value accepts everything.
type Behaviour struct {
	// Hostname is the name in the greeting (default "mx.test").
	Hostname string

	// Mail, Rcpt and Data decide the replies: nil accepts; an error
	// made with Reply answers with its code. Data sees the message
	// before it is recorded; it is recorded only when Data returns nil.
	Mail func(from string, opts *smtp.MailOptions) error
	Rcpt func(to string, opts *smtp.RcptOptions) error
	Data func(m *Message) error

	Greeting421 bool // answer each connection with 421 and close it
	// Greeting421After answers every connection after the first N with
	// 421 and closes it, as a server limiting connections per client does.
	Greeting421After int
	StallGreeting    bool // accept connections and never say anything
	StallData        bool // read the body, then never answer (until the test ends)
	DropInData       bool // close the connection after the first body bytes
	// DropInDataAfter: with DropInData, each connection first takes this
	// many messages, and drops in the body of the next (a server that
	// drops a connection reused for a further transaction).
	DropInDataAfter int

	TLS       *tls.Config // offer STARTTLS with this configuration
	BrokenTLS bool        // offer STARTTLS, then fail every handshake
	Implicit  bool        // TLS from the first byte (with TLS as configuration)

	DSN        bool  // offer DSN
	RequireTLS bool  // offer REQUIRETLS (RFC 8689; go-smtp offers it over TLS only)
	SMTPUTF8   bool  // offer SMTPUTF8
	No8BitMIME bool  // do not offer 8BITMIME (on plain-text connections only)
	MaxSize    int64 // announce SIZE with this limit (0: SIZE without a limit)
	// MaxRecipients announces LIMITS RCPTMAX with this limit and answers
	// 452 4.5.3 to the recipients of a transaction beyond it (0: none).
	MaxRecipients int
	Users         map[string]string // offer AUTH PLAIN (over TLS) for these user/passwords
	// LoginPrompts, when set, offers AUTH LOGIN instead of PLAIN for Users,
	// with these two challenges: the user name's, then the password's
	// (servers word them differently: "Username:", "User Name", the
	// draft's "User Name\x00"). A user name sent as an initial response
	// skips the first, unless LoginNoIR: then it is ignored and the first
	// challenge still sent, as some servers do.
	LoginPrompts [2]string
	LoginNoIR    bool

	// NoPipelining: do not offer PIPELINING (on plain-text connections
	// only), so that each reply goes out as its command is answered (with
	// PIPELINING the server holds replies back while commands wait).
	NoPipelining bool

	// MailsPerConn limits the transactions of a connection: its MAIL
	// commands after the first MailsPerConn are answered "451 4.5.3 No
	// more transactions allowed", as Oracle Messaging Server answers
	// past its ALLOW_TRANSACTIONS_PER_SESSION (0: no limit). With
	// MailsPerConnAtRcpt the refusal goes to every RCPT of those
	// transactions instead (its TRANSACTION_LIMIT_RCPT_TO); with
	// AnnounceMailMax the limit is announced in EHLO, "LIMITS
	// MAILMAX=N" (RFC 9422; on plain-text connections only).
	MailsPerConn       int
	MailsPerConnAtRcpt bool
	AnnounceMailMax    bool
}

// Message is one message the server accepted.
type Message struct {
	From     string
	MailOpts smtp.MailOptions
	To       []string
	RcptOpts []smtp.RcptOptions
	Data     []byte
	Helo     string
	TLS      bool   // received over TLS
	User     string // authenticated user, "" if none
	Conn     int    // which connection (1, 2, ...) it came on
}

// Reply returns an error that makes the server answer code with enhanced
// status enh ("5.1.1") and text.
func Reply(code int, enh, text string) error {
	e := &smtp.SMTPError{Code: code, Message: text, EnhancedCode: smtp.NoEnhancedCode}
	if enh != "" {
		var c smtp.EnhancedCode
		var p int
		for i, part := range splitDots(enh) {
			if i < 3 {
				p, _ = strconv.Atoi(part)
				c[i] = p
			}
		}
		e.EnhancedCode = c
	}
	return e
}

func splitDots(s string) []string {
	var out []string
	start := 0
	for i := 0; i < len(s); i++ {
		if s[i] == '.' {
			out = append(out, s[start:i])
			start = i + 1
		}
	}
	return append(out, s[start:])
}

// Server is a running test server.
type Server struct {
	// Addr is the "ip:port" it listens on.
	Addr string

	b    Behaviour
	ln   net.Listener
	srv  *smtp.Server
	done chan struct{}

	mu        sync.Mutex
	msgs      []Message
	input     []byte // everything clients sent (countedConn.Read)
	conns     int
	changed   chan struct{} // closed and replaced on every new message
	stalled   chan struct{} // closed when StallData first stalls
	stallOnce sync.Once
}

// New starts a server on addr ("127.0.0.2:0" for a kernel-chosen port) and
// closes it when t ends.
func New(t testing.TB, addr string, b Behaviour) *Server {
	t.Helper()
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatalf("smtptest: listen %s: %v", addr, err)
	}
	return NewListener(t, ln, b)
}

// NewListener is New on a listener the test made (e.g. on a port it held
// reserved); the server closes it when t ends.
func NewListener(t testing.TB, ln net.Listener, b Behaviour) *Server {
	t.Helper()
	if b.Hostname == "" {
		b.Hostname = "mx.test"
	}
	s := &Server{Addr: ln.Addr().String(), b: b, ln: ln, done: make(chan struct{}), changed: make(chan struct{}), stalled: make(chan struct{})}
	srv := smtp.NewServer(smtp.BackendFunc(s.newSession))
	srv.Domain = b.Hostname
	srv.EnableDSN = b.DSN
	srv.EnableSMTPUTF8 = b.SMTPUTF8
	srv.EnableREQUIRETLS = b.RequireTLS
	srv.MaxMessageBytes = b.MaxSize
	srv.MaxRecipients = b.MaxRecipients
	srv.ReadTimeout = time.Minute
	srv.WriteTimeout = time.Minute
	srv.ErrorLog = quietLog{}
	switch {
	case b.BrokenTLS:
		srv.TLSConfig = &tls.Config{GetCertificate: func(*tls.ClientHelloInfo) (*tls.Certificate, error) {
			return nil, errors.New("smtptest: broken TLS")
		}}
	case b.TLS != nil && !b.Implicit:
		srv.TLSConfig = b.TLS
	}
	s.srv = srv
	inner := &chanListener{addr: ln.Addr(), ch: make(chan net.Conn), done: s.done}
	go srv.Serve(inner)
	go s.accept(inner)
	t.Cleanup(s.Close)
	return s
}

// Port returns the port the server listens on.
func (s *Server) Port() int {
	return s.ln.Addr().(*net.TCPAddr).Port
}

// Close stops the server and ends its connections.
func (s *Server) Close() {
	select {
	case <-s.done:
		return
	default:
	}
	close(s.done)
	s.ln.Close()
	s.srv.Close()
}

// Messages returns the messages accepted so far.
func (s *Server) Messages() []Message {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]Message(nil), s.msgs...)
}

// Stalled is closed once a StallData server has read a whole message and
// started to stall.
func (s *Server) Stalled() <-chan struct{} { return s.stalled }

// Conns returns the number of connections accepted so far.
func (s *Server) Conns() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.conns
}

// Wait blocks until the server has accepted n messages (or fails the test
// after 10 s) and returns them.
func (s *Server) Wait(t testing.TB, n int) []Message {
	t.Helper()
	timeout := time.NewTimer(10 * time.Second)
	defer timeout.Stop()
	for {
		s.mu.Lock()
		if len(s.msgs) >= n {
			m := append([]Message(nil), s.msgs...)
			s.mu.Unlock()
			return m
		}
		ch := s.changed
		s.mu.Unlock()
		select {
		case <-ch:
		case <-timeout.C:
			t.Fatalf("smtptest %s: %d messages after 10s, want %d", s.Addr, len(s.Messages()), n)
		}
	}
}

type countedConn struct {
	net.Conn
	id int
	s  *Server
}

// Write leaves 8BITMIME out of EHLO replies for No8BitMIME, and PIPELINING
// for NoPipelining (the server writes each reply in one piece).
func (c *countedConn) Write(p []byte) (int, error) {
	q := p
	if c.s.b.No8BitMIME && bytes.Contains(q, []byte("250-8BITMIME\r\n")) {
		q = bytes.ReplaceAll(q, []byte("250-8BITMIME\r\n"), nil)
	}
	if c.s.b.NoPipelining && bytes.Contains(q, []byte("250-PIPELINING\r\n")) {
		q = bytes.ReplaceAll(q, []byte("250-PIPELINING\r\n"), nil)
	}
	if c.s.b.AnnounceMailMax && bytes.Contains(q, []byte("250-ENHANCEDSTATUSCODES\r\n")) {
		q = bytes.ReplaceAll(q, []byte("250-ENHANCEDSTATUSCODES\r\n"),
			[]byte("250-ENHANCEDSTATUSCODES\r\n250-LIMITS MAILMAX="+strconv.Itoa(c.s.b.MailsPerConn)+"\r\n"))
	}
	if len(q) == len(p) {
		return c.Conn.Write(p)
	}
	if _, err := c.Conn.Write(q); err != nil {
		return 0, err
	}
	return len(p), nil
}

// Read records what the client sent (see Received).
func (c *countedConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	c.s.mu.Lock()
	c.s.input = append(c.s.input, p[:n]...)
	close(c.s.changed)
	c.s.changed = make(chan struct{})
	c.s.mu.Unlock()
	return n, err
}

// WaitReceived blocks until clients have sent text (see Received), or
// fails the test after 10 s.
func (s *Server) WaitReceived(t testing.TB, text string) {
	t.Helper()
	timeout := time.NewTimer(10 * time.Second)
	defer timeout.Stop()
	for {
		s.mu.Lock()
		ok, ch := strings.Contains(string(s.input), text), s.changed
		s.mu.Unlock()
		if ok {
			return
		}
		select {
		case <-ch:
		case <-timeout.C:
			t.Fatalf("smtptest %s: %q not received after 10s", s.Addr, text)
		}
	}
}

// Received returns every byte clients sent to the server, all connections
// in the order read; over TLS that is the encrypted stream.
func (s *Server) Received() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return string(s.input)
}

func (s *Server) accept(inner *chanListener) {
	for {
		c, err := s.ln.Accept()
		if err != nil {
			return
		}
		s.mu.Lock()
		s.conns++
		id := s.conns
		s.mu.Unlock()
		switch {
		case s.b.Greeting421, s.b.Greeting421After > 0 && id > s.b.Greeting421After:
			io.WriteString(c, "421 4.3.2 "+s.b.Hostname+" not available now\r\n")
			c.Close()
			continue
		case s.b.StallGreeting:
			go func() {
				<-s.done
				c.Close()
			}()
			continue
		}
		var nc net.Conn = &countedConn{Conn: c, id: id, s: s}
		if s.b.Implicit {
			nc = tls.Server(nc, s.b.TLS)
		}
		select {
		case inner.ch <- nc:
		case <-s.done:
			c.Close()
			return
		}
	}
}

func (s *Server) record(m Message) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.msgs = append(s.msgs, m)
	close(s.changed)
	s.changed = make(chan struct{})
}

func (s *Server) newSession(c *smtp.Conn) (smtp.Session, error) {
	raw := c.Conn()
	_, isTLS := c.TLSConnectionState()
	if tc, ok := raw.(*tls.Conn); ok {
		raw = tc.NetConn()
	}
	id := 0
	if cc, ok := raw.(*countedConn); ok {
		id = cc.id
	}
	return &session{s: s, c: c, m: Message{Helo: c.Hostname(), TLS: isTLS, Conn: id}}, nil
}

type session struct {
	s        *Server
	c        *smtp.Conn
	m        Message
	user     string
	accepted int // messages recorded on this connection
	mails    int // MAIL commands on this connection
}

// pastMailLimit is the refusal of a transaction beyond MailsPerConn.
func (se *session) pastMailLimit() error {
	if n := se.s.b.MailsPerConn; n > 0 && se.mails > n {
		return Reply(451, "4.5.3", "No more transactions allowed")
	}
	return nil
}

func (se *session) Reset() {
	se.m = Message{Helo: se.m.Helo, TLS: se.m.TLS, Conn: se.m.Conn, User: se.user}
}

func (se *session) Logout() error { return nil }

func (se *session) AuthMechanisms() []string {
	switch {
	case len(se.s.b.Users) == 0:
		return nil
	case se.s.b.LoginPrompts != [2]string{}:
		return []string{sasl.Login}
	}
	return []string{sasl.Plain}
}

func (se *session) Auth(mech string) (sasl.Server, error) {
	check := func(identity, user, pass string) error {
		if p, ok := se.s.b.Users[user]; !ok || p != pass || (identity != "" && identity != user) {
			return smtp.ErrAuthFailed
		}
		se.user, se.m.User = user, user
		return nil
	}
	if se.s.b.LoginPrompts != [2]string{} {
		if mech != sasl.Login {
			return nil, errors.New("only LOGIN is offered")
		}
		return &loginServer{b: &se.s.b, check: check}, nil
	}
	return sasl.NewPlainServer(check), nil
}

// loginServer is the server side of AUTH LOGIN with scripted challenges.
type loginServer struct {
	b     *Behaviour
	check func(identity, user, pass string) error
	step  int
	user  string
}

func (l *loginServer) Next(resp []byte) (challenge []byte, done bool, err error) {
	l.step++
	switch {
	case l.step == 1 && resp != nil && !l.b.LoginNoIR:
		l.user, l.step = string(resp), 2
		return []byte(l.b.LoginPrompts[1]), false, nil
	case l.step == 1:
		return []byte(l.b.LoginPrompts[0]), false, nil
	case l.step == 2:
		l.user = string(resp)
		return []byte(l.b.LoginPrompts[1]), false, nil
	}
	return nil, true, l.check("", l.user, string(resp))
}

func (se *session) Mail(from string, opts *smtp.MailOptions) error {
	if len(se.s.b.Users) > 0 && se.user == "" {
		return smtp.ErrAuthRequired
	}
	se.mails++
	if err := se.pastMailLimit(); err != nil && !se.s.b.MailsPerConnAtRcpt {
		return err
	}
	if f := se.s.b.Mail; f != nil {
		if err := f(from, opts); err != nil {
			return err
		}
	}
	se.m.From = from
	if opts != nil {
		se.m.MailOpts = *opts
	}
	return nil
}

func (se *session) Rcpt(to string, opts *smtp.RcptOptions) error {
	if err := se.pastMailLimit(); err != nil {
		return err
	}
	if f := se.s.b.Rcpt; f != nil {
		if err := f(to, opts); err != nil {
			return err
		}
	}
	se.m.To = append(se.m.To, to)
	var o smtp.RcptOptions
	if opts != nil {
		o = *opts
	}
	se.m.RcptOpts = append(se.m.RcptOpts, o)
	return nil
}

func (se *session) Data(r io.Reader) error {
	if se.s.b.DropInData && se.accepted >= se.s.b.DropInDataAfter {
		var p [16]byte
		io.ReadFull(r, p[:])
		se.c.Conn().Close()
		return errors.New("smtptest: dropped")
	}
	data, err := io.ReadAll(r)
	if err != nil {
		return err
	}
	if se.s.b.StallData {
		se.s.stallOnce.Do(func() { close(se.s.stalled) })
		<-se.s.done
		return Reply(421, "4.3.0", "closing")
	}
	m := se.m
	m.Data = data
	if f := se.s.b.Data; f != nil {
		if err := f(&m); err != nil {
			return err
		}
	}
	se.s.record(m)
	se.accepted++
	return nil
}

// chanListener hands accepted (and possibly refused) connections to the
// go-smtp server.
type chanListener struct {
	addr net.Addr
	ch   chan net.Conn
	done chan struct{}
}

func (l *chanListener) Accept() (net.Conn, error) {
	select {
	case c := <-l.ch:
		return c, nil
	case <-l.done:
		return nil, net.ErrClosed
	}
}

func (l *chanListener) Close() error   { return nil }
func (l *chanListener) Addr() net.Addr { return l.addr }

type quietLog struct{}

func (quietLog) Printf(string, ...any) {}
func (quietLog) Println(...any)        {}
