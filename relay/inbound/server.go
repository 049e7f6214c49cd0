package inbound

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	"github.com/emersion/go-smtp"

	"github.com/mailhop/mailhop/queue"
	"github.com/mailhop/mailhop/relay/config"
	"github.com/mailhop/mailhop/relay/dkimsign"
)

// Server is mailhop's inbound SMTP server: one go-smtp server per
// configured listener, sharing the configuration, the queue, the TLS
// certificate and the connection and AUTH limits.
type Server struct {
	// Slowing down of AUTH failures per client address; set before serving
	// (tests shorten them). See the Default* constants. How many failures
	// block the address, and for how long, are [limits] max_auth_failures
	// and auth_block_time.
	AuthDelayAfter int
	AuthDelayStep  time.Duration

	cfg  atomic.Pointer[config.Config]
	cert atomic.Pointer[tls.Certificate]
	dkim atomic.Pointer[dkimsign.Signer] // signs at enqueue ([[dkim]])
	q    *queue.Queue
	log  *slog.Logger
	tls  *tls.Config

	conns     connLimits
	authFails authFailures
	stats     counters

	mu        sync.Mutex
	servers   []*smtp.Server
	listeners []net.Listener
	closing   atomic.Bool

	// The first Shutdown does the work; a later one (ServeListeners ends
	// when a listener closes under the first) waits in the Once for it.
	shutOnce sync.Once
	shutErr  error
}

// New returns a server for cfg that queues into q. It loads the TLS
// certificate, or generates a self-signed one in data_dir/tls when none is
// configured (logged as a warning).
func New(cfg *config.Config, q *queue.Queue, log *slog.Logger) (*Server, error) {
	if log == nil {
		log = slog.Default()
	}
	s := &Server{
		AuthDelayAfter: DefaultAuthDelayAfter,
		AuthDelayStep:  DefaultAuthDelayStep,
		q:              q,
		log:            log,
	}
	s.cfg.Store(cfg)
	s.stats.refused = make(map[string]uint64)
	if err := s.ReloadCertificate(); err != nil {
		return nil, err
	}
	if err := s.loadDKIM(cfg); err != nil {
		return nil, err
	}
	s.tls = s.newTLSConfig()
	return s, nil
}

// SetConfig swaps in a reloaded configuration: users, senders, trusted
// networks, recipient limit and connection limits apply to new commands and
// connections at once; message size, line length, idle timeout, error
// limit and the hostname of the greeting to the connections accepted
// afterwards; the certificate is reloaded. The listeners themselves
// (addresses, modes) change at the next start.
func (s *Server) SetConfig(cfg *config.Config) error {
	old := s.cfg.Swap(cfg)
	if err := s.ReloadCertificate(); err != nil {
		s.cfg.Store(old)
		return err
	}
	if err := s.loadDKIM(cfg); err != nil {
		s.cfg.Store(old)
		return err
	}
	s.mu.Lock()
	for _, srv := range s.servers {
		srv.SetConnLimits(sessionLimits(cfg))
		srv.SetDomain(cfg.Hostname)
	}
	s.mu.Unlock()
	return nil
}

// sessionLimits are the per-connection limits go-smtp applies for cfg.
func sessionLimits(cfg *config.Config) smtp.ConnLimits {
	l := smtp.ConnLimits{
		MaxMessageBytes: cfg.Policy.MaxMessageSize,
		MaxErrors:       cfg.Limits.MaxErrors,
		ReadTimeout:     cfg.Limits.IdleTimeout.Duration,
		WriteTimeout:    cfg.Limits.IdleTimeout.Duration,
	}
	if cfg.Limits.MaxLineLength > 0 {
		l.MaxLineLength = cfg.Limits.MaxLineLength + 2 // the config counts without CRLF
	}
	return l
}

// DKIM returns the signer of the running configuration (for other ways
// into the queue, such as sendmail).
func (s *Server) DKIM() *dkimsign.Signer { return s.dkim.Load() }

// loadDKIM loads the [[dkim]] keys and the directory that signing spools
// large messages to.
func (s *Server) loadDKIM(cfg *config.Config) error {
	sg, err := dkimsign.New(cfg.DKIM)
	if err != nil {
		return err
	}
	if sg.Len() > 0 {
		if err := os.MkdirAll(filepath.Join(cfg.DataDir, "tmp"), 0o700); err != nil {
			return fmt.Errorf("dkim: %w", err)
		}
	}
	s.dkim.Store(sg)
	return nil
}

// smtpServer builds the go-smtp server for one listener.
func (s *Server) smtpServer(l config.Listener) *smtp.Server {
	cfg := s.cfg.Load()
	srv := smtp.NewServer(&backend{s: s, mode: l.Mode})
	srv.Domain = cfg.Hostname
	srv.TLSConfig = s.tls
	srv.SetConnLimits(sessionLimits(cfg))
	srv.EnableSMTPUTF8 = true
	srv.EnableDSN = true
	srv.EnableREQUIRETLS = true // RFC 8689; offered over TLS only, kept in Envelope.RequireTLS
	srv.RejectSourceRoutes = true
	srv.RequireAngleBrackets = true
	srv.AllowInsecureAuth = false
	srv.ErrorLog = errorLog{s.log}
	return srv
}

// Serve serves one listener in the mode of l until Shutdown; ln is already
// bound (its address may differ from l.Address, e.g. port 0 in tests). For
// "submissions" the connections are wrapped in TLS here.
func (s *Server) Serve(ln net.Listener, l config.Listener) error {
	switch l.Mode {
	case config.ModeSubmission, config.ModeSubmissions, config.ModeRelay:
	default:
		return fmt.Errorf("inbound: unknown listener mode %q", l.Mode)
	}
	srv := s.smtpServer(l)
	ll := &limitListener{Listener: ln, s: s, rejecting: make(chan struct{}, maxRejecting)}
	var wrapped net.Listener = ll
	if l.Mode == config.ModeSubmissions {
		ll.tls = s.tls
		wrapped = tls.NewListener(wrapped, s.tls)
	}
	s.mu.Lock()
	if s.closing.Load() {
		s.mu.Unlock()
		ln.Close()
		return smtp.ErrServerClosed
	}
	s.servers = append(s.servers, srv)
	s.listeners = append(s.listeners, ln)
	s.mu.Unlock()
	s.log.Info("listening", "address", ln.Addr().String(), "mode", l.Mode)
	err := srv.Serve(wrapped)
	if s.closing.Load() {
		return nil
	}
	return err
}

// ListenAndServe binds every configured listener and serves them until ctx
// is done (then it shuts down, giving running transactions
// limits.shutdown_timeout to finish) or until Shutdown is called.
func (s *Server) ListenAndServe(ctx context.Context) error {
	lns, err := s.Listen(ctx)
	if err != nil {
		return err
	}
	return s.ServeListeners(ctx, lns)
}

// Listen binds every [[listener]] of the configuration, in order; on error
// none stays bound. Connections wait in the backlog until ServeListeners.
func (s *Server) Listen(ctx context.Context) ([]net.Listener, error) {
	cfg := s.cfg.Load()
	var lns []net.Listener
	for _, l := range cfg.Listener {
		// No TCP keep-alive probes: idle and session timeouts end dead
		// sessions, and it saves four system calls per connection.
		lc := net.ListenConfig{KeepAlive: -1}
		ln, err := lc.Listen(ctx, "tcp", l.Address)
		if err != nil {
			for _, o := range lns {
				o.Close()
			}
			return nil, fmt.Errorf("listener %s: %w", l.Address, err)
		}
		lns = append(lns, ln)
	}
	return lns, nil
}

// ServeListeners serves lns (from Listen, one per [[listener]] in order)
// until ctx ends, then shuts down within limits.shutdown_timeout.
func (s *Server) ServeListeners(ctx context.Context, lns []net.Listener) error {
	cfg := s.cfg.Load()
	errc := make(chan error, len(lns))
	for i, l := range cfg.Listener {
		go func() { errc <- s.Serve(lns[i], l) }()
	}
	var err error
	select {
	case <-ctx.Done():
	case err = <-errc:
	}
	grace := cfg.Limits.ShutdownTimeout.Duration
	if grace <= 0 {
		grace = defaultShutdownDeadline
	}
	sctx, cancel := context.WithTimeout(context.Background(), grace)
	defer cancel()
	if serr := s.Shutdown(sctx); err == nil && serr != nil && !errors.Is(serr, smtp.ErrServerClosed) {
		err = serr
	}
	if errors.Is(err, smtp.ErrServerClosed) {
		err = nil
	}
	return err
}

// Addrs returns the addresses of the listeners being served.
func (s *Server) Addrs() []net.Addr {
	s.mu.Lock()
	defer s.mu.Unlock()
	var as []net.Addr
	for _, ln := range s.listeners {
		as = append(as, ln.Addr())
	}
	return as
}

// Shutdown stops accepting connections and refuses new transactions (421),
// lets the transactions under way finish until ctx is done, then closes
// every connection. A second call waits for the first to end: it must not
// return while sessions still run (go-smtp's Shutdown returns at once for a
// server already shut down, and the process would exit under them).
func (s *Server) Shutdown(ctx context.Context) error {
	s.shutOnce.Do(func() { s.shutErr = s.shutdown(ctx) }) // a second call returns when the first's work is done
	return s.shutErr
}

// shutdown is the work of Shutdown.
func (s *Server) shutdown(ctx context.Context) error {
	s.mu.Lock()
	s.closing.Store(true)
	servers := append([]*smtp.Server(nil), s.servers...)
	// Closed here too: a Serve that has not reached go-smtp's Serve yet
	// would otherwise accept forever.
	for _, ln := range s.listeners {
		ln.Close()
	}
	s.mu.Unlock()

	var wg sync.WaitGroup
	errs := make([]error, len(servers))
	for i, srv := range servers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			err := srv.Shutdown(ctx)
			if err == nil || errors.Is(err, smtp.ErrServerClosed) || errors.Is(err, net.ErrClosed) {
				return // (the listeners were closed above)
			}
			srv.AbortConns() // deadline passed: 421 and close what is left
			errs[i] = err
		}()
	}
	wg.Wait()
	return errors.Join(errs...)
}

// errorLog feeds go-smtp's internal error messages (panics, accept errors)
// into slog. A session that ends with a network error (a failed implicit-TLS
// or STARTTLS handshake, a reset connection: what port probes, clients
// without TLS 1.2 and vanishing clients cause) is the client's doing, not
// the server's: it is logged at info level as "connection lost", like
// Postfix's "lost connection". Both name the client as every other inbound
// line does (client=IP), its port in a key of its own.
type errorLog struct{ log *slog.Logger }

func (e errorLog) Printf(format string, v ...any) {
	switch {
	case format == connErrorFormat && len(v) == 2:
		e.log.Info("connection lost", append(clientAttrs(v[0]), "error", fmt.Sprint(v[1]))...)
	case format == panicFormat && len(v) == 3:
		e.log.Error("smtp server error", append(clientAttrs(v[0]), "error", fmt.Sprintf("panic serving: %v\n%s", v[1], v[2]))...)
	default:
		e.log.Error("smtp server error", "error", fmt.Sprintf(format, v...))
	}
}

// clientAttrs names the client of go-smtp's remote address: client=IP and
// port, or the address as it is when it is not an IP address and port.
func clientAttrs(a any) []any {
	if na, ok := a.(net.Addr); ok {
		if ip := remoteIP(na); ip.IsValid() {
			return []any{"client", ip.String(), "port", remotePort(na)}
		}
	}
	return []any{"client", fmt.Sprint(a)}
}

// connErrorFormat is how go-smtp reports a session that ended with an
// error, panicFormat a panic in a session.
const (
	connErrorFormat = "error handling %v: %s"
	panicFormat     = "panic serving %v: %v\n%s"
)

func (e errorLog) Println(v ...any) {
	e.log.Error("smtp server error", "error", fmt.Sprint(v...))
}

// Stats is a snapshot of the server's counters, for metrics.
type Stats struct {
	Accepted            uint64            // messages queued
	Refused             map[string]uint64 // refusals by reason (see reason* constants)
	OpenConnections     int
	RejectedConnections uint64 // refused at connect: limits or a blocked address
	AuthFailures        uint64
	TLSConnections      uint64 // connections that reached TLS (STARTTLS or implicit)
}

type counters struct {
	accepted     atomic.Uint64
	connRejected atomic.Uint64
	authFailures atomic.Uint64
	tlsConns     atomic.Uint64
	mu           sync.Mutex
	refused      map[string]uint64
}

func (c *counters) refuse(reason string) {
	c.mu.Lock()
	c.refused[reason]++
	c.mu.Unlock()
}

// Stats returns the current counters.
func (s *Server) Stats() Stats {
	st := Stats{
		Accepted:            s.stats.accepted.Load(),
		OpenConnections:     s.conns.open(),
		RejectedConnections: s.stats.connRejected.Load(),
		AuthFailures:        s.stats.authFailures.Load(),
		TLSConnections:      s.stats.tlsConns.Load(),
		Refused:             make(map[string]uint64),
	}
	s.stats.mu.Lock()
	for k, v := range s.stats.refused {
		st.Refused[k] = v
	}
	s.stats.mu.Unlock()
	return st
}
