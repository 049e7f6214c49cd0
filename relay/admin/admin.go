// Package admin is mailhop's local control interface: HTTP with JSON bodies
// on a unix socket (mode 0600), behind every `mailhop queue` command. Only
// processes that can open the socket file can use it, so the file's
// permissions are its access control.
//
// Endpoints:
//
//	GET  /v1/queue                       list (filters: state, domain, sender, rcpt, min_age)
//	GET  /v1/queue/{id}                  one message
//	POST /v1/queue/flush[?domain=D]      retry now
//	POST /v1/queue/{id}/hold|release|delete|bounce
package admin

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/mailhop/mailhop/queue"
	"github.com/mailhop/mailhop/relay/mailhdr"
)

// Bouncer bounces a queued message at once (the delivery agent).
type Bouncer interface {
	BounceNow(id string) error
}

// Server serves the admin API.
type Server struct {
	Queue   *queue.Queue
	Bouncer Bouncer
	Log     *slog.Logger
	// Extra handlers mounted next to the queue API (e.g. sendmail injection).
	Extra map[string]http.Handler

	mu     sync.Mutex
	srv    *http.Server
	closed bool
}

// Recipient is one recipient in the API's JSON.
type Recipient struct {
	Address string `json:"address"`
	State   string `json:"state"`
	Code    int    `json:"code"`
	Reply   string `json:"reply"`
	ORCPT   string `json:"orcpt"`
	Notify  string `json:"notify"`
}

// Message is one queued message in the API's JSON.
type Message struct {
	ID          string      `json:"id"`
	From        string      `json:"from"`
	Recipients  []Recipient `json:"recipients"`
	Arrived     time.Time   `json:"arrived"`
	Size        int64       `json:"size"`
	Attempts    int         `json:"attempts"`
	NextAttempt time.Time   `json:"next_attempt"`
	LastError   string      `json:"last_error"`
	Held        bool        `json:"held"`
	User        string      `json:"user"`
	Client      string      `json:"client"`
	Ret         string      `json:"ret"`
	EnvID       string      `json:"envid"`
	Helo        string      `json:"helo"`       // the client's HELO/EHLO name
	BodyType    string      `json:"body_type"`  // MAIL's BODY=: 7BIT, 8BITMIME, BINARYMIME or ""
	SMTPUTF8    bool        `json:"smtputf8"`   // MAIL carried SMTPUTF8
	RequireTLS  bool        `json:"requiretls"` // MAIL carried REQUIRETLS

	// Delivering: an attempt is under way. Parked: waiting for a
	// connection slot to its domain (per_domain_concurrency), due as soon
	// as one frees; next_attempt is then in the past. Both false when the
	// relay is stopped.
	Delivering bool `json:"delivering"`
	Parked     bool `json:"parked"`
}

// FromEnvelope converts a queue envelope to its API form.
func FromEnvelope(e *queue.Envelope) Message {
	m := Message{ID: e.ID, From: e.From, Arrived: e.Arrived, Size: e.Size, Attempts: e.Attempts,
		NextAttempt: e.NextAttempt, LastError: e.LastError, Held: e.Held, User: e.User,
		Client: e.ClientAddr, Ret: e.Ret, EnvID: e.EnvID, Helo: e.ClientHelo, BodyType: e.BodyType,
		SMTPUTF8: e.SMTPUTF8, RequireTLS: e.RequireTLS, Recipients: make([]Recipient, len(e.Recipients))}
	for i, r := range e.Recipients {
		m.Recipients[i] = Recipient{Address: r.Address, State: r.State.String(), Code: r.Code,
			Reply: r.Reply, ORCPT: r.ORCPT, Notify: r.Notify.String()}
	}
	return m
}

// Filter selects messages for a list.
type Filter struct {
	State  string        // a recipient in this state: pending, delivered, failed; or "held"
	Domain string        // a recipient in this domain
	Sender string        // envelope sender contains this
	Rcpt   string        // a recipient address contains this
	MinAge time.Duration // arrived at least this long ago
}

// States are the values of Filter.State: a recipient's state
// (queue.RcptState's names) or "held".
var States = []string{"pending", "delivered", "failed", "held"}

// ParseState returns v, a Filter.State from a user, in its canonical form
// (matching is case-insensitive), or an error naming the valid values.
// Postfix's "deferred" is deliberately not an alias: it means "tried and
// failed temporarily", while pending also holds recipients never tried and
// those of held messages, so a list under that name would show more than it
// says.
func ParseState(v string) (string, error) {
	for _, s := range States {
		if strings.EqualFold(v, s) {
			return s, nil
		}
	}
	hint := ""
	if strings.EqualFold(v, "deferred") {
		hint = " (for Postfix's deferred use pending, which also lists mail not yet tried)"
	}
	return "", fmt.Errorf("want one of %s%s", strings.Join(States, ", "), hint)
}

// Match reports whether m passes f.
func (f Filter) Match(m *Message, now time.Time) bool {
	if f.Sender == "<>" || strings.EqualFold(f.Sender, "MAILER-DAEMON") {
		if m.From != "" { // "<>": the null sender, bounces and reports
			return false
		}
	} else if f.Sender != "" && !strings.Contains(strings.ToLower(m.From), strings.ToLower(f.Sender)) {
		return false
	}
	if f.MinAge > 0 && now.Sub(m.Arrived) < f.MinAge {
		return false
	}
	if f.State == "held" {
		if !m.Held {
			return false
		}
	}
	if f.Domain == "" && f.Rcpt == "" && (f.State == "" || f.State == "held") {
		return true
	}
	for _, r := range m.Recipients {
		if f.State != "" && f.State != "held" && r.State != f.State {
			continue
		}
		if f.Domain != "" && !strings.EqualFold(domainOf(r.Address), f.Domain) {
			continue
		}
		if f.Rcpt != "" && !strings.Contains(strings.ToLower(r.Address), strings.ToLower(f.Rcpt)) {
			continue
		}
		return true
	}
	return false
}

func domainOf(addr string) string {
	if i := strings.LastIndexByte(addr, '@'); i >= 0 {
		return addr[i+1:]
	}
	return ""
}

// Listen creates the unix socket at path (replacing a stale one) with mode
// 0600. A file at path that is no socket is left alone: an error.
func Listen(path string) (net.Listener, error) {
	if c, err := net.DialTimeout("unix", path, time.Second); err == nil {
		c.Close()
		return nil, fmt.Errorf("admin: %s: another mailhop is running", path)
	}
	if fi, err := os.Lstat(path); err == nil {
		if fi.Mode()&os.ModeSocket == 0 {
			return nil, fmt.Errorf("admin: %s exists and is not a socket", path)
		}
		os.Remove(path)
	}
	ln, err := listenPrivate(path)
	if err != nil {
		return nil, fmt.Errorf("admin: %w", err)
	}
	if err := os.Chmod(path, 0o600); err != nil {
		ln.Close()
		return nil, fmt.Errorf("admin: %w", err)
	}
	return ln, nil
}

// Serve serves the API on ln until Shutdown.
func (s *Server) Serve(ln net.Listener) error {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /v1/queue", s.list)
	mux.HandleFunc("GET /v1/queue/{id}", s.show)
	mux.HandleFunc("GET /v1/queue/{id}/message", s.message)
	mux.HandleFunc("POST /v1/queue/flush", s.flush)
	mux.HandleFunc("POST /v1/queue/{id}/{action}", s.action)
	for p, h := range s.Extra {
		mux.Handle(p, h)
	}
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		ln.Close()
		return nil
	}
	s.srv = srv
	s.mu.Unlock()
	err := srv.Serve(ln)
	if errors.Is(err, http.ErrServerClosed) {
		return nil
	}
	return err
}

// Shutdown stops the API server.
func (s *Server) Shutdown(ctx context.Context) error {
	s.mu.Lock()
	s.closed = true
	srv := s.srv
	s.mu.Unlock()
	if srv == nil {
		return nil
	}
	return srv.Shutdown(ctx)
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	enc.Encode(v)
}

// ArrayWriter writes a JSON array an element at a time, laid out as
// json.Encoder with SetIndent("", "  ") lays out the whole array.
type ArrayWriter struct {
	w   io.Writer
	n   int
	err error
}

// NewArrayWriter returns an ArrayWriter that writes to w.
func NewArrayWriter(w io.Writer) *ArrayWriter { return &ArrayWriter{w: w} }

// Add writes one element; after an error it writes nothing more and
// returns that error.
func (a *ArrayWriter) Add(v any) error {
	if a.err != nil {
		return a.err
	}
	b, err := json.MarshalIndent(v, "  ", "  ")
	if err != nil {
		a.err = err
		return err
	}
	sep := ",\n  "
	if a.n == 0 {
		sep = "[\n  "
	}
	a.n++
	if _, a.err = io.WriteString(a.w, sep); a.err == nil {
		_, a.err = a.w.Write(b)
	}
	return a.err
}

// Close ends the array (an empty one is "[]").
func (a *ArrayWriter) Close() error {
	if a.err != nil {
		return a.err
	}
	end := "\n]\n"
	if a.n == 0 {
		end = "[]\n"
	}
	_, a.err = io.WriteString(a.w, end)
	return a.err
}

// apiError is the body of every error reply.
type apiError struct {
	Error string `json:"error"`
}

func writeErr(w http.ResponseWriter, err error) {
	code := http.StatusInternalServerError
	switch {
	case errors.Is(err, queue.ErrNotFound):
		code = http.StatusNotFound
	case errors.Is(err, queue.ErrBusy):
		code = http.StatusConflict
	}
	writeJSON(w, code, apiError{Error: err.Error()})
}

func (s *Server) list(w http.ResponseWriter, r *http.Request) {
	qv := r.URL.Query()
	f := Filter{State: qv.Get("state"), Domain: qv.Get("domain"), Sender: qv.Get("sender"), Rcpt: qv.Get("rcpt")}
	if f.State != "" {
		st, err := ParseState(f.State)
		if err != nil {
			writeJSON(w, http.StatusBadRequest, apiError{Error: "state: " + err.Error()})
			return
		}
		f.State = st
	}
	if v := qv.Get("min_age"); v != "" {
		d, err := time.ParseDuration(v)
		if err != nil {
			writeJSON(w, http.StatusBadRequest, apiError{Error: "min_age: " + err.Error()})
			return
		}
		f.MinAge = d
	}
	// Streamed a message at a time: a queue of a million recipients is
	// never held in memory a second (and third) time to be listed.
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(http.StatusOK)
	now := time.Now()
	out := NewArrayWriter(w)
	s.Queue.Each(func(e *queue.Envelope) bool {
		m := FromEnvelope(e)
		m.Delivering, m.Parked = s.Queue.Activity(e.ID)
		return !f.Match(&m, now) || out.Add(m) == nil
	})
	out.Close()
}

func (s *Server) show(w http.ResponseWriter, r *http.Request) {
	e, err := s.Queue.Get(r.PathValue("id"))
	if err != nil {
		writeErr(w, err)
		return
	}
	m := FromEnvelope(e)
	m.Delivering, m.Parked = s.Queue.Activity(e.ID)
	writeJSON(w, http.StatusOK, m)
}

// message sends a queued message's content, byte for byte as stored (with
// the Received field mailhop added), as message/rfc822. Reading other
// people's mail is for root and the relay's user, as only they may read
// Postfix's queue files (postcat -q).
func (s *Server) message(w http.ResponseWriter, r *http.Request) {
	id := r.PathValue("id")
	if uid, ok := mayAdminister(r); !ok {
		s.Log.Warn("queue message read refused: not root or the relay's user", "queue_id", id, "message_id", s.messageID(id),
			"uid", uid, "user", userName(uid))
		writeJSON(w, http.StatusForbidden, apiError{Error: "only root or the relay's user may read queued mail"})
		return
	}
	b, err := s.Queue.Body(id)
	if err != nil {
		writeErr(w, err)
		return
	}
	defer b.Close()
	w.Header().Set("Content-Type", "message/rfc822")
	w.Header().Set("Content-Length", strconv.FormatInt(b.Size(), 10))
	io.Copy(w, io.NewSectionReader(b, 0, b.Size()))
}

// Result is the reply to an action.
type Result struct {
	OK      bool   `json:"ok"`
	Count   int    `json:"count,omitempty"`
	Message string `json:"message,omitempty"`
}

func (s *Server) flush(w http.ResponseWriter, r *http.Request) {
	n := s.Queue.Flush(r.URL.Query().Get("domain"))
	s.Log.Info("queue flushed by operator", "domain", r.URL.Query().Get("domain"), "messages", n, "user", peerUser(r))
	writeJSON(w, http.StatusOK, Result{OK: true, Count: n})
}

// mayAdminister reports whether the peer of r may change other people's
// mail (hold, release, delete, bounce): root and the relay's own user, as
// only root may run Postfix's postsuper. Members of admin.socket_group may
// submit mail, list the queue and flush it (Postfix lets anyone run mailq and
// postqueue -f), not more. A connection without peer credentials (a test
// listener that is not a PeerCredListener) is the relay's own.
func mayAdminister(r *http.Request) (uid int, ok bool) {
	uid, known := parsePeerAddr(r.RemoteAddr)
	if !known {
		return os.Getuid(), true
	}
	return uid, uid == 0 || uid == os.Getuid()
}

// peerUser names the peer of r for the log ("" when unknown).
func peerUser(r *http.Request) string {
	uid, ok := parsePeerAddr(r.RemoteAddr)
	if !ok {
		return ""
	}
	return userName(uid)
}

func (s *Server) action(w http.ResponseWriter, r *http.Request) {
	id, act := r.PathValue("id"), r.PathValue("action")
	if act != "hold" && act != "release" && act != "delete" && act != "bounce" {
		writeJSON(w, http.StatusBadRequest, apiError{Error: "unknown action " + act + " (hold, release, delete, bounce)"})
		return
	}
	// Read before the action: a delete takes the content with it.
	mid := s.messageID(id)
	if uid, ok := mayAdminister(r); !ok {
		s.Log.Warn("queue "+act+" refused: not root or the relay's user", "queue_id", id, "message_id", mid, "uid", uid, "user", userName(uid))
		writeJSON(w, http.StatusForbidden, apiError{Error: act + ": only root or the relay's user may change queued mail"})
		return
	}
	var err error
	switch act {
	case "hold":
		err = s.Queue.Hold(id)
	case "release":
		err = s.Queue.Release(id)
	case "delete":
		err = s.Queue.Delete(id)
	case "bounce":
		if s.Bouncer == nil {
			err = errors.New("bounce: no delivery agent")
		} else {
			err = s.Bouncer.BounceNow(id)
		}
	}
	if err != nil {
		writeErr(w, err)
		return
	}
	s.Log.Info("queue "+act+" by operator", "queue_id", id, "message_id", mid, "user", peerUser(r))
	writeJSON(w, http.StatusOK, Result{OK: true, Count: 1})
}

// messageID returns the Message-ID of queued message id, for the log lines
// about it ("" when it has none, or is not queued).
func (s *Server) messageID(id string) string {
	b, err := s.Queue.Body(id)
	if err != nil {
		return ""
	}
	defer b.Close()
	return mailhdr.MessageID(mailhdr.Block(b, b.Size()))
}
