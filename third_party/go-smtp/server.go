package smtp

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"time"
)

var ErrServerClosed = errors.New("smtp: server already closed")

// Logger interface is used by Server to report unexpected internal errors.
type Logger interface {
	Printf(format string, v ...interface{})
	Println(v ...interface{})
}

// A SMTP server.
type Server struct {
	// The type of network, "tcp" or "unix".
	Network string
	// TCP or Unix address to listen on.
	Addr string
	// The server TLS configuration.
	TLSConfig *tls.Config
	// Enable LMTP mode, as defined in RFC 2033.
	LMTP bool

	Domain          string
	MaxRecipients   int
	MaxMessageBytes int64
	// MaxLineLength is the longest text line accepted in DATA or BDAT, in
	// octets including CRLF (0: no limit). A longer line makes the whole
	// message fail with 500 5.5.2 once its data has been read.
	MaxLineLength int
	// MaxCommandLength is the longest command line accepted, in octets
	// including CRLF (0: DefaultMaxCommandLength). A longer line gets
	// 500 5.5.2 and the session goes on.
	MaxCommandLength int
	// MaxErrors is the number of error replies (4xx and 5xx, except
	// 452 4.5.3 too many recipients) a session may get; the reply that
	// reaches it is followed by 421 4.7.0 and the connection is closed.
	// 0: DefaultMaxErrors; negative: no limit.
	MaxErrors int
	// RejectSourceRoutes makes MAIL and RCPT refuse a path with a source
	// route (<@a,@b:user@c>, RFC 5321 §4.1.1.3) with 501 5.1.3 instead of
	// silently stripping the route.
	RejectSourceRoutes bool
	// RequireAngleBrackets makes MAIL and RCPT refuse a path without its
	// angle brackets (RFC 5321 §4.1.2 Path; Postfix's
	// strict_rfc821_envelopes) with 501 5.1.3 (mailhop patch).
	RequireAngleBrackets bool

	AllowInsecureAuth bool
	Debug             io.Writer
	ErrorLog          Logger
	ReadTimeout       time.Duration
	WriteTimeout      time.Duration

	// Advertise SMTPUTF8 (RFC 6531) capability.
	// Should be used only if backend supports it.
	EnableSMTPUTF8 bool

	// Advertise REQUIRETLS (RFC 8689) capability.
	// Should be used only if backend supports it.
	EnableREQUIRETLS bool

	// Advertise BINARYMIME (RFC 3030) capability.
	// Should be used only if backend supports it.
	EnableBINARYMIME bool

	// Advertise DSN (RFC 3461) capability.
	// Should be used only if backend supports it.
	EnableDSN bool

	// Advertise RRVS (RFC 7293) capability.
	// Should be used only if backend supports it.
	EnableRRVS bool

	// Advertise DELIVERBY (RFC 2852) capability.
	// Should be used only if backend supports it.
	EnableDELIVERBY bool
	// The minimum time, with seconds precision, that a client
	// may specify in the BY argument with return mode.
	// A zero value indicates no set minimum.
	// Only use if DELIVERBY is enabled.
	MinimumDeliverByTime time.Duration

	// Advertise MT-PRIORITY (RFC 6710) capability.
	// Should only be used if backend supports it.
	EnableMTPRIORITY bool
	// The priority profile mapping as defined
	// in RFC 6710 section 10.2.
	//
	// Default value of NONE to advertise no specific profile.
	MtPriorityProfile PriorityProfile

	// The server backend.
	Backend Backend

	wg   sync.WaitGroup
	done chan struct{}
	// idle hands a new connection to a goroutine that served one before
	// and waits for the next (see serveConns).
	idle chan net.Conn

	locker    sync.Mutex
	listeners []net.Listener
	conns     map[*Conn]struct{}

	// limMu guards the limit fields (MaxMessageBytes, MaxLineLength,
	// MaxRecipients, MaxErrors, ReadTimeout, WriteTimeout) and Domain once
	// serving: see SetConnLimits and SetDomain (mailhop patch).
	limMu sync.Mutex
	// draining is set by Shutdown: sessions waiting for a command outside
	// a transaction get 421 4.3.2 at once (mailhop patch).
	draining atomic.Bool
}

// DefaultMaxCommandLength is the default Server.MaxCommandLength. RFC 5321
// §4.5.3.1.4 allows 512 octets for a command line, which ESMTP parameters
// (RFC 5321 §4.5.3.1.4 allows extensions to raise it) can exceed; 2048 is
// what Postfix accepts (line_length_limit).
const DefaultMaxCommandLength = 2048

// DefaultMaxErrors is the default Server.MaxErrors (Postfix:
// smtpd_hard_error_limit is 20, 10 under stress).
const DefaultMaxErrors = 10

// New creates a new SMTP server.
func NewServer(be Backend) *Server {
	return &Server{
		// Doubled maximum line length per RFC 5321 (Section 4.5.3.1.6)
		MaxLineLength: 2000,

		Backend:  be,
		done:     make(chan struct{}, 1),
		idle:     make(chan net.Conn),
		ErrorLog: log.New(os.Stderr, "smtp/server ", log.LstdFlags),
		conns:    make(map[*Conn]struct{}),
	}
}

// Serve accepts incoming connections on the Listener l.
func (s *Server) Serve(l net.Listener) error {
	s.locker.Lock()
	s.listeners = append(s.listeners, l)
	s.locker.Unlock()

	var tempDelay time.Duration // how long to sleep on accept failure

	for {
		c, err := l.Accept()
		if err != nil {
			select {
			case <-s.done:
				// we called Close()
				return nil
			default:
			}
			if ne, ok := err.(net.Error); ok && ne.Temporary() {
				if tempDelay == 0 {
					tempDelay = 5 * time.Millisecond
				} else {
					tempDelay *= 2
				}
				if max := 1 * time.Second; tempDelay > max {
					tempDelay = max
				}
				s.ErrorLog.Printf("accept error: %s; retrying in %s", err, tempDelay)
				time.Sleep(tempDelay)
				continue
			}
			return err
		}

		// mailhop patch: counted under the lock and only while the server
		// is not shutting down, so that no Add comes after Shutdown's Wait
		// has begun (a connection accepted as the listener closed raced
		// with it).
		s.locker.Lock()
		select {
		case <-s.done:
			s.locker.Unlock()
			c.Close()
			return nil
		default:
		}
		s.wg.Add(1)
		s.locker.Unlock()
		select {
		case s.idle <- c:
		default:
			go s.serveConns(c)
		}
	}
}

// connWorkerIdle is how long a connection goroutine waits for another
// connection before it exits.
const connWorkerIdle = 10 * time.Second

// serveConns serves c, then waits (at most connWorkerIdle) for more
// connections from Serve. A goroutine that has served a session has grown
// its stack to what a session needs: reusing it saves growing (copying) a
// fresh 8 KiB stack for every connection, a few percent of the CPU of a
// busy server with short sessions.
func (s *Server) serveConns(c net.Conn) {
	var t *time.Timer
	for {
		if err := s.handleConn(newConn(c, s)); err != nil {
			s.ErrorLog.Printf("error handling %v: %s", c.RemoteAddr(), err)
		}
		s.wg.Done()
		if t == nil {
			t = time.NewTimer(connWorkerIdle)
		} else {
			t.Reset(connWorkerIdle)
		}
		select {
		case c = <-s.idle:
		case <-t.C:
			return
		case <-s.done:
			t.Stop()
			return
		}
	}
}

func (s *Server) handleConn(c *Conn) error {
	s.locker.Lock()
	s.conns[c] = struct{}{}
	s.locker.Unlock()

	defer func() {
		c.Close()

		s.locker.Lock()
		delete(s.conns, c)
		s.locker.Unlock()
		c.release()
	}()

	if tlsConn, ok := c.conn.(*tls.Conn); ok {
		if d := c.lim.ReadTimeout; d != 0 {
			c.conn.SetReadDeadline(time.Now().Add(d))
		}
		if d := c.lim.WriteTimeout; d != 0 {
			c.conn.SetWriteDeadline(time.Now().Add(d))
		}
		if err := tlsConn.Handshake(); err != nil {
			return fmt.Errorf("TLS handshake: %w", err)
		}
	}

	c.greet()

	for !c.closing {
		idle := !c.fromReceived && c.bdatPipe == nil
		if idle && s.draining.Load() {
			c.writeResponse(421, EnhancedCode{4, 3, 2}, c.greetingName()+" Service shutting down, closing connection")
			return nil
		}
		c.setWaiting(idle)
		line, err := c.readLine()
		c.setWaiting(false)
		switch {
		case err == errDraining:
			c.writeResponse(421, EnhancedCode{4, 3, 2}, c.greetingName()+" Service shutting down, closing connection")
			return nil
		case err == nil:
			if verb, ok := httpRequest(line); ok {
				// mailhop patch: an HTTP request (a browser made to
				// post to the SMTP port, whose body would be read as
				// commands) ends the session, as Postfix's
				// smtpd_forbidden_commands does.
				c.writeResponse(221, EnhancedCode{2, 7, 0}, "Error: this is an SMTP server, not HTTP")
				c.closing, c.closeErr = true, fmt.Errorf("non-SMTP command %s: an HTTP request", verb)
				continue
			}
			cmd, arg, err := parseCmd(line)
			if err != nil {
				// mailhop patch: a line that is no command ("FOO",
				// "MAILX") is an unrecognized command, 500 like an
				// unknown four-letter one (RFC 5321 §4.2.4), not 501.
				c.writeResponse(500, EnhancedCode{5, 5, 2}, "Syntax error, command unrecognized")
			} else {
				c.handle(cmd, arg)
			}
		case err == errLineTooLong:
			c.writeResponse(500, EnhancedCode{5, 5, 2}, "Line too long")
		case err == io.EOF || errors.Is(err, net.ErrClosed):
			return nil
		default:
			if neterr, ok := err.(net.Error); ok && neterr.Timeout() && idle && s.draining.Load() {
				c.writeResponse(421, EnhancedCode{4, 3, 2}, c.greetingName()+" Service shutting down, closing connection")
				return nil
			}
			if neterr, ok := err.(net.Error); ok && neterr.Timeout() {
				c.abortData(err)
				c.writeTimeout()
				return nil
			}

			c.writeResponse(421, EnhancedCode{4, 4, 0}, "Connection error, sorry")
			return err
		}
		if !c.closing && c.tooManyErrors() {
			c.writeResponse(421, EnhancedCode{4, 7, 0}, "Too many errors, closing connection")
		}
	}
	return c.closeErr
}

func (s *Server) network() string {
	if s.Network != "" {
		return s.Network
	}
	if s.LMTP {
		return "unix"
	}
	return "tcp"
}

// ListenAndServe listens on the network address s.Addr and then calls Serve
// to handle requests on incoming connections.
//
// If s.Addr is blank and LMTP is disabled, ":smtp" is used.
func (s *Server) ListenAndServe() error {
	network := s.network()

	addr := s.Addr
	if !s.LMTP && addr == "" {
		addr = ":smtp"
	}

	l, err := net.Listen(network, addr)
	if err != nil {
		return err
	}

	return s.Serve(l)
}

// ListenAndServeTLS listens on the TCP network address s.Addr and then calls
// Serve to handle requests on incoming TLS connections.
//
// If s.Addr is blank and LMTP is disabled, ":smtps" is used.
func (s *Server) ListenAndServeTLS() error {
	network := s.network()

	addr := s.Addr
	if !s.LMTP && addr == "" {
		addr = ":smtps"
	}

	l, err := tls.Listen(network, addr, s.TLSConfig)
	if err != nil {
		return err
	}

	return s.Serve(l)
}

// closeDone closes s.done once and reports whether this call did it
// (mailhop patch: two concurrent Shutdown or Close calls both passed the
// check and closed it twice, a panic).
// ConnLimits are the limits a connection applies. A connection takes them
// from its Server when it is accepted and keeps them to its end (mailhop
// patch).
type ConnLimits struct {
	MaxMessageBytes int64
	MaxLineLength   int
	MaxRecipients   int
	MaxErrors       int
	ReadTimeout     time.Duration
	WriteTimeout    time.Duration
}

// SetConnLimits changes the Server's limit fields for the connections
// accepted afterwards; open connections keep theirs. Unlike assigning the
// fields, it is safe while the Server is serving (a configuration reload).
func (s *Server) SetConnLimits(l ConnLimits) {
	s.limMu.Lock()
	defer s.limMu.Unlock()
	s.MaxMessageBytes, s.MaxLineLength, s.MaxRecipients, s.MaxErrors = l.MaxMessageBytes, l.MaxLineLength, l.MaxRecipients, l.MaxErrors
	s.ReadTimeout, s.WriteTimeout = l.ReadTimeout, l.WriteTimeout
}

func (s *Server) connLimits() ConnLimits {
	s.limMu.Lock()
	defer s.limMu.Unlock()
	return ConnLimits{s.MaxMessageBytes, s.MaxLineLength, s.MaxRecipients, s.MaxErrors, s.ReadTimeout, s.WriteTimeout}
}

// SetDomain changes Domain for the connections accepted afterwards; open
// connections keep the name they greeted with. Unlike assigning the field,
// it is safe while the Server is serving (a configuration reload).
func (s *Server) SetDomain(name string) {
	s.limMu.Lock()
	defer s.limMu.Unlock()
	s.Domain = name
}

func (s *Server) domain() string {
	s.limMu.Lock()
	defer s.limMu.Unlock()
	return s.Domain
}

// greetingName is the name the server gives for itself: Domain, or
// "localhost" when it is empty.
func (s *Server) greetingName() string {
	return nameOrLocalhost(s.domain())
}

// greetingName is the name the server gives for itself on c: the one it
// had when c was accepted.
func (c *Conn) greetingName() string {
	return nameOrLocalhost(c.domain)
}

func nameOrLocalhost(domain string) string {
	if domain == "" {
		return "localhost"
	}
	return domain
}

func (s *Server) closeDone() bool {
	s.locker.Lock()
	defer s.locker.Unlock()
	select {
	case <-s.done:
		return false
	default:
		close(s.done)
		return true
	}
}

// Close immediately closes all active listeners and connections.
//
// Close returns any error returned from closing the server's underlying
// listener(s).
func (s *Server) Close() error {
	if !s.closeDone() {
		return ErrServerClosed
	}

	var err error
	s.locker.Lock()
	for _, l := range s.listeners {
		if lerr := l.Close(); lerr != nil && err == nil {
			err = lerr
		}
	}

	for conn := range s.conns {
		conn.Close()
	}
	s.locker.Unlock()

	return err
}

// AbortConns ends every open session after a Shutdown whose deadline
// passed: each client is sent "421 4.3.2 … Service shutting down" (RFC 5321
// §3.8: a server that must close says so), waiting at most a second, and
// its connection is closed; an unfinished message was never acknowledged.
// Close cannot do this after Shutdown (mailhop patch).
func (s *Server) AbortConns() {
	s.locker.Lock()
	conns := make([]*Conn, 0, len(s.conns))
	for c := range s.conns {
		conns = append(conns, c)
	}
	s.locker.Unlock()
	line := "421 4.3.2 " + s.greetingName() + " Service shutting down, closing connection\r\n"
	var wg sync.WaitGroup
	for _, c := range conns {
		wg.Add(1)
		go func(c *Conn) {
			defer wg.Done()
			// A TLS connection whose handshake is under way (a client
			// that connected to an implicit-TLS port and sent nothing)
			// holds the write below until the handshake ends, which the
			// write deadline does not bound: the connection underneath is
			// closed after a second, as a write that does not go out.
			raw := c.conn
			if tc, ok := raw.(*tls.Conn); ok {
				raw = tc.NetConn()
			}
			stop := time.AfterFunc(time.Second, func() { raw.Close() })
			defer stop.Stop()
			// Straight to the connection: the session goroutine may be in
			// the middle of reading a message, and net.Conn writes are
			// safe to make from another goroutine.
			c.conn.SetWriteDeadline(time.Now().Add(time.Second))
			io.WriteString(c.conn, line)
			c.conn.Close()
		}(c)
	}
	wg.Wait()
}

// Shutdown gracefully shuts down the server without interrupting any
// active connections. Shutdown works by first closing all open
// listeners and then waiting indefinitely for connections to return to
// idle and then shut down.
// If the provided context expires before the shutdown is complete,
// Shutdown returns the context's error, otherwise it returns any
// error returned from closing the Server's underlying Listener(s).
func (s *Server) Shutdown(ctx context.Context) error {
	if !s.closeDone() {
		return ErrServerClosed
	}

	var err error
	s.locker.Lock()
	for _, l := range s.listeners {
		if lerr := l.Close(); lerr != nil && err == nil {
			err = lerr
		}
	}
	// mailhop patch: a session waiting for a command outside a
	// transaction is told at once (421 4.3.2, RFC 5321 §3.8) instead of
	// holding the shutdown until it sends something or times out; a
	// session in a transaction may finish it, then gets the same 421.
	s.draining.Store(true)
	for c := range s.conns {
		c.interruptIdle()
	}
	s.locker.Unlock()

	connDone := make(chan struct{})
	go func() {
		defer close(connDone)
		s.wg.Wait()
	}()

	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-connDone:
		return err
	}
}
