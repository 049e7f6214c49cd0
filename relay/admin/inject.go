package admin

// Local injection: how `mailhop sendmail` hands a message to the relay.
//
// The running relay takes it on the admin socket:
//
//	POST /v1/inject
//	{"from":"root@host","recipients":["ops@example.com"],"user":"root","uid":0}\n
//	<the message, as the application wrote it>
//
// The first line is the envelope as JSON; everything after it is the
// message. The relay does not believe the user the client names: it asks the
// kernel who is on the other end of the socket (SO_PEERCRED, see
// PeerCredListener) and writes that user into its Received header and the
// queue envelope. Line endings are normalised to CRLF, the limits SMTP
// applies are checked with the same meaning (package msglimit), the Received header is
// prepended, and the message is queued; the reply names the queue ID:
//
//	200 {"id":"..."}
//	400 malformed envelope or message, or a line over limits.max_line_length
//	403 peer unknown
//	413 over policy.max_message_size or limits.max_header_size
//	503 the queue could not store it
//
// When the relay is not running, sendmail writes the same bytes (envelope
// line, then message) as one file into data_dir/pickup (WritePickup:
// temporary file, fsync, rename, fsync of the directory), and the relay
// queues and then deletes each such file when it starts (DrainPickup). The
// file's owner names the user there, as the peer's credentials do on the
// socket. A file that cannot be read as an injection, or whose message
// breaks a limit, is moved to pickup/bad and logged, never deleted. A
// temporary file that a sendmail killed while writing left behind is
// deleted once it is an hour old (staleTemp).

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/mailhop/mailhop/queue"
	"github.com/mailhop/mailhop/relay/config"
	"github.com/mailhop/mailhop/relay/dkimsign"
	"github.com/mailhop/mailhop/relay/inbound"
	"github.com/mailhop/mailhop/relay/mailhdr"
	"github.com/mailhop/mailhop/relay/msglimit"
)

// InjectPath is where the injection endpoint is mounted on the admin socket.
const InjectPath = "POST /v1/inject"

// PickupDirName is the pickup directory's name inside data_dir.
const PickupDirName = "pickup"

// maxEnvelopeLine bounds the JSON envelope line of an injection.
const maxEnvelopeLine = 1 << 20

// maxInjectRecipients bounds the recipients of one injection. It is a
// sanity bound, not policy.max_recipients: sendmail -t on a long Cc list is
// normal, and local users are trusted.
const maxInjectRecipients = 10000

// InjectEnvelope is the envelope of a locally submitted message.
type InjectEnvelope struct {
	From       string   `json:"from"` // "" is the null sender
	Recipients []string `json:"recipients"`
	// User and UID are what the client says it is. The relay uses them only
	// for pickup files owned by root or by the relay's own user (written by
	// sendmail running as root, which hands the file to the relay's user).
	User string `json:"user,omitempty"`
	UID  int    `json:"uid"`
	// DSN (RFC 3461), as sendmail's -N, -R and -V give them: Notify is
	// "NEVER" or a list of SUCCESS, FAILURE, DELAY for every recipient, Ret
	// "FULL" or "HDRS", EnvID the envelope identifier. Empty: not given.
	Notify string `json:"notify,omitempty"`
	Ret    string `json:"ret,omitempty"`
	EnvID  string `json:"envid,omitempty"`
	// Per recipient, as SMTP gives them with RCPT (sendmail -bs): when set,
	// one for each of Recipients. A NOTIFY there is that recipient's ("":
	// Notify's); an ORCPT is "TYPE;address", decoded ("": none).
	RcptNotify []string `json:"rcpt_notify,omitempty"`
	ORCPT      []string `json:"orcpt,omitempty"`
	// SMTPUTF8: submitted with SMTPUTF8 (sendmail -bs); an address that
	// is not ASCII sets it too.
	SMTPUTF8 bool `json:"smtputf8,omitempty"`
}

// InjectResult is the reply to a successful injection.
type InjectResult struct {
	ID string `json:"id"`
}

// InjectError is a refused injection, with the HTTP status that says why.
type InjectError struct {
	Status int
	Msg    string
}

func (e *InjectError) Error() string { return e.Msg }

func injectErr(status int, format string, args ...any) *InjectError {
	return &InjectError{Status: status, Msg: fmt.Sprintf(format, args...)}
}

// Injector queues locally submitted messages, from the admin socket and from
// the pickup directory.
type Injector struct {
	Queue *queue.Queue
	// Config returns the running configuration (hostname, size limit).
	Config func() *config.Config
	Log    *slog.Logger
	// Now is the clock; nil: time.Now.
	Now func() time.Time
	// Signer returns the DKIM signer of the running configuration (nil:
	// no signing). Local mail is signed for any configured domain, like
	// mail from a trusted network.
	Signer func() *dkimsign.Signer

	injected atomic.Uint64
}

// Injected returns how many messages were queued through the injector.
func (in *Injector) Injected() uint64 { return in.injected.Load() }

func (in *Injector) now() time.Time {
	if in.Now != nil {
		return in.Now()
	}
	return time.Now()
}

// ServeHTTP handles POST /v1/inject.
func (in *Injector) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	uid, ok := parsePeerAddr(r.RemoteAddr)
	if !ok {
		writeJSON(w, http.StatusForbidden, apiError{Error: "inject: the peer's credentials are unknown"})
		return
	}
	br := bufio.NewReaderSize(r.Body, 64<<10)
	env, err := readEnvelopeLine(br)
	if err != nil {
		writeJSON(w, http.StatusBadRequest, apiError{Error: err.Error()})
		return
	}
	id, _, err := in.Inject(env, uid, br, "socket")
	if err != nil {
		status := http.StatusServiceUnavailable
		var ie *InjectError
		if errors.As(err, &ie) {
			status = ie.Status
		}
		writeJSON(w, status, apiError{Error: err.Error()})
		return
	}
	writeJSON(w, http.StatusOK, InjectResult{ID: id})
}

// readEnvelopeLine reads and decodes the JSON envelope line.
func readEnvelopeLine(br *bufio.Reader) (*InjectEnvelope, error) {
	var line []byte
	for {
		chunk, err := br.ReadSlice('\n')
		line = append(line, chunk...)
		if len(line) > maxEnvelopeLine {
			return nil, injectErr(http.StatusBadRequest, "inject: envelope line longer than %d bytes", maxEnvelopeLine)
		}
		if err == nil {
			break
		}
		if err != bufio.ErrBufferFull {
			return nil, injectErr(http.StatusBadRequest, "inject: no envelope line")
		}
	}
	var env InjectEnvelope
	dec := json.NewDecoder(bytes.NewReader(line))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&env); err != nil {
		return nil, injectErr(http.StatusBadRequest, "inject: envelope: %v", err)
	}
	return &env, nil
}

// Inject checks env, prepends a Received header naming the local user uid,
// and queues the message read from body. via ("socket", "pickup") is logged.
// It returns the queue ID and, for the log, the message's Message-ID.
func (in *Injector) Inject(env *InjectEnvelope, uid int, body io.Reader, via string) (string, string, error) {
	cfg := in.Config()
	if err := checkInjectEnvelope(env); err != nil {
		return "", "", err
	}
	name := userName(uid)
	qe := &queue.Envelope{
		ID:         in.Queue.NewID(),
		From:       env.From,
		User:       name,
		ClientAddr: "127.0.0.1",
		ClientHelo: "localhost",
		Arrived:    in.now(),
		Ret:        strings.ToUpper(env.Ret),
		EnvID:      env.EnvID,
		SMTPUTF8:   env.SMTPUTF8 || needsUTF8(env),
	}
	notify, _ := queue.ParseNotify(env.Notify) // checked above
	seen := make(map[string]bool, len(env.Recipients))
	for i, r := range env.Recipients {
		qr := queue.Recipient{Address: r, Notify: notify}
		if i < len(env.RcptNotify) && env.RcptNotify[i] != "" {
			qr.Notify, _ = queue.ParseNotify(env.RcptNotify[i]) // checked above
		}
		if i < len(env.ORCPT) {
			qr.ORCPT = env.ORCPT[i]
		}
		a, _ := inbound.ParseAddress(r, true) // checked above
		if cfg.Postmaster != "" && strings.EqualFold(a.Local, "postmaster") && strings.EqualFold(a.Domain, cfg.Hostname) {
			// postmaster@hostname goes to the configured mailbox, as it
			// does from SMTP; sent on, it would come back to this relay.
			qr.Address = cfg.Postmaster
			if qr.ORCPT == "" {
				qr.ORCPT = "rfc822;" + r
			}
			a, _ = inbound.ParseAddress(cfg.Postmaster, true)
		}
		if !seen[a.Key()] {
			seen[a.Key()] = true
			qe.Recipients = append(qe.Recipients, qr)
		}
	}
	hdr := receivedHeader(name, uid, cfg.Hostname, qe.ID, qe.Arrived)
	// The limits SMTP applies, from the running configuration.
	lim := msglimit.NewReader(&crlfReader{r: bufio.NewReaderSize(body, 32<<10)}, msglimit.Of(cfg))
	head := &mailhdr.HeadKeeper{R: lim}
	var msg io.Reader = io.MultiReader(strings.NewReader(hdr), head)
	var err error
	if in.Signer != nil {
		if sg := in.Signer(); sg != nil && sg.Len() > 0 {
			// Signed once, as it is queued (like SMTP submissions).
			var signed *dkimsign.Signed
			if signed, err = sg.Spool(msg, filepath.Join(cfg.DataDir, "tmp")); err == nil {
				defer signed.Close()
				msg = signed
			}
		}
	}
	if err == nil {
		err = in.Queue.Enqueue(qe, msg)
	}
	if err != nil {
		if le := lim.Err(); le != nil {
			in.Log.Info("inject: message refused", "queue_id", qe.ID, "message_id", head.MessageID(), "from", qe.From,
				"user", name, "uid", uid, "via", via, "limit", le.Key, "err", le.Error())
			return "", "", injectErr(limitStatus(le), "inject: %v", le)
		}
		in.Log.Error("inject: queueing failed", "queue_id", qe.ID, "user", name, "uid", uid, "via", via, "err", err)
		return "", "", injectErr(http.StatusServiceUnavailable, "inject: the queue could not store the message; try again later")
	}
	in.injected.Add(1)
	messageID := head.MessageID()
	in.Log.Info("queued", "queue_id", qe.ID, "from", qe.From, "rcpts", len(qe.Recipients), "size", qe.Size,
		"user", name, "uid", uid, "via", via, "message_id", messageID)
	return qe.ID, messageID, nil
}

// CheckEnvelope is what the relay checks of an injection's envelope, for
// sendmail to check before it hands a message over (also to the pickup
// directory, whose bad files would otherwise only be found at the start):
// no recipient, an address that is not one (RFC 5321), bad DSN parameters.
func CheckEnvelope(env *InjectEnvelope) error {
	if len(env.Recipients) == 0 {
		return errors.New("no recipients")
	}
	if len(env.Recipients) > maxInjectRecipients {
		return fmt.Errorf("more than %d recipients", maxInjectRecipients)
	}
	if env.From != "" {
		if err := checkAddress(env.From); err != nil {
			return fmt.Errorf("sender %q: %v", env.From, err)
		}
	}
	for _, r := range env.Recipients {
		if err := checkAddress(r); err != nil {
			return fmt.Errorf("recipient %q: %v", r, err)
		}
	}
	if err := checkRcptDSN(env); err != nil {
		return err
	}
	return CheckDSN(env.Notify, env.Ret, env.EnvID)
}

// checkRcptDSN checks the per-recipient NOTIFY and ORCPT of env: one for
// each recipient, NOTIFY as SMTP takes it, ORCPT a type and an address
// without control characters (it is written into delivery status
// notifications).
func checkRcptDSN(env *InjectEnvelope) error {
	if n := len(env.RcptNotify); n > 0 && n != len(env.Recipients) {
		return fmt.Errorf("%d rcpt_notify for %d recipients", n, len(env.Recipients))
	}
	if n := len(env.ORCPT); n > 0 && n != len(env.Recipients) {
		return fmt.Errorf("%d orcpt for %d recipients", n, len(env.Recipients))
	}
	for _, n := range env.RcptNotify {
		if _, err := queue.ParseNotify(n); err != nil {
			return err
		}
	}
	for _, o := range env.ORCPT {
		if o == "" {
			continue
		}
		if err := CheckORCPT(o); err != nil {
			return err
		}
	}
	return nil
}

// CheckORCPT checks one ORCPT as an injection carries it, "TYPE;address"
// decoded: a type and an address without control characters (it is
// written into delivery status notifications), for sendmail -bs to refuse
// at RCPT what the relay would refuse of the whole message.
func CheckORCPT(o string) error {
	typ, addr, ok := strings.Cut(o, ";")
	if !ok || typ == "" || addr == "" || len(o) > 1000 || strings.ContainsFunc(o, func(r rune) bool { return r < 0x20 || r == 0x7f }) {
		return fmt.Errorf("ORCPT %q is not \"type;address\" in printable characters", o)
	}
	return nil
}

// checkInjectEnvelope is CheckEnvelope as the relay answers it: 400.
func checkInjectEnvelope(env *InjectEnvelope) error {
	if err := CheckEnvelope(env); err != nil {
		return injectErr(http.StatusBadRequest, "inject: %v", err)
	}
	return nil
}

// CheckDSN checks the DSN parameters of a local submission (sendmail's -N,
// -R, -V): what SMTP's NOTIFY, RET and ENVID would accept (RFC 3461 §4.1,
// §4.3, §4.4: an ENVID is at most 100 printable ASCII characters).
func CheckDSN(notify, ret, envid string) error {
	if _, err := queue.ParseNotify(notify); err != nil {
		return err
	}
	if ret != "" && !strings.EqualFold(ret, "FULL") && !strings.EqualFold(ret, "HDRS") {
		return fmt.Errorf("RET %q is not FULL or HDRS", ret)
	}
	if len(envid) > 100 {
		return errors.New("ENVID longer than 100 characters")
	}
	for _, c := range []byte(envid) {
		if c < 0x20 || c > 0x7e {
			return fmt.Errorf("ENVID %q: only printable ASCII", envid)
		}
	}
	return nil
}

// checkAddress accepts local@domain with no spaces, controls or brackets.
func checkAddress(a string) error {
	if _, err := inbound.ParseAddress(a, true); err != nil {
		return errors.New("not a valid address (RFC 5321 §4.1.2: local@domain, no source route, one @ outside quotes, no trailing dot)")
	}
	return nil
}

// needsUTF8 reports whether an envelope address is not ASCII: such mail
// travels only with SMTPUTF8 (RFC 6531).
func needsUTF8(env *InjectEnvelope) bool {
	for _, a := range append([]string{env.From}, env.Recipients...) {
		for i := 0; i < len(a); i++ {
			if a[i] >= 0x80 {
				return true
			}
		}
	}
	return false
}

// receivedHeader is the trace field for a local submission (RFC 5321
// §4.4; "from" names the local user, as MTAs do for local mail).
func receivedHeader(name string, uid int, host, id string, t time.Time) string {
	return fmt.Sprintf("Received: from local user %s (uid %d)\r\n\tby %s (mailhop) with local id %s;\r\n\t%s\r\n",
		name, uid, host, id, t.Format(time.RFC1123Z))
}

// userName returns the login name of uid, or "#uid" when it has none.
func userName(uid int) string {
	if u, err := user.LookupId(strconv.Itoa(uid)); err == nil {
		return u.Username
	}
	return "#" + strconv.Itoa(uid)
}

// crlfReader turns every line ending (LF, CRLF, or a CR alone) into CRLF and
// makes the message end with one, so what is queued is a valid SMTP body.
type crlfReader struct {
	r       *bufio.Reader
	pending []byte
	lastNL  bool // the last byte produced was LF (or nothing was produced)
	started bool
	done    bool
}

func (c *crlfReader) Read(p []byte) (int, error) {
	n := 0
	for n < len(p) {
		if len(c.pending) > 0 {
			k := copy(p[n:], c.pending)
			c.pending = c.pending[k:]
			n += k
			continue
		}
		if c.done {
			break
		}
		b, err := c.r.ReadByte()
		if err != nil {
			c.done = true
			if err != io.EOF {
				return n, err
			}
			if c.started && !c.lastNL {
				c.pending = []byte("\r\n")
			}
			continue
		}
		c.started = true
		switch b {
		case '\r':
			if next, err := c.r.Peek(1); err == nil && next[0] == '\n' {
				c.r.ReadByte()
			}
			c.pending = []byte("\r\n")
			c.lastNL = true
		case '\n':
			c.pending = []byte("\r\n")
			c.lastNL = true
		default:
			p[n] = b
			n++
			c.lastNL = false
		}
	}
	if n == 0 && c.done && len(c.pending) == 0 {
		return 0, io.EOF
	}
	return n, nil
}

// CheckLimits reads msg as Inject would queue it and returns the
// *msglimit.Error of the first limit it breaks, or nil. sendmail checks a
// message with it before leaving it in the pickup directory.
func CheckLimits(msg io.Reader, lim msglimit.Limits) error {
	lr := msglimit.NewReader(&crlfReader{r: bufio.NewReaderSize(msg, 32<<10)}, lim)
	if _, err := io.Copy(io.Discard, lr); err != nil {
		if le := lr.Err(); le != nil {
			return le
		}
		return err
	}
	return nil
}

// limitStatus is the HTTP status of the refusal: 413 for the sizes (SMTP's
// 552 5.3.4), 400 for a line (500 5.5.2).
func limitStatus(e *msglimit.Error) int {
	if e.Key == msglimit.KeyMaxLineLength {
		return http.StatusBadRequest
	}
	return http.StatusRequestEntityTooLarge
}

// PeerCredListener wraps the admin socket's listener so that each accepted
// connection's RemoteAddr carries the peer's pid, uid and gid as the kernel
// reports them (SO_PEERCRED). The inject handler reads the uid from
// http.Request.RemoteAddr; a connection whose credentials cannot be read
// keeps its plain address, and injection is then refused.
func PeerCredListener(ln net.Listener) net.Listener { return &credListener{ln} }

type credListener struct{ net.Listener }

func (l *credListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	uc, ok := c.(*net.UnixConn)
	if !ok {
		return c, nil
	}
	raw, err := uc.SyscallConn()
	if err != nil {
		return c, nil
	}
	var cred *unix.Ucred
	var cerr error
	if err := raw.Control(func(fd uintptr) {
		cred, cerr = unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED)
	}); err != nil || cerr != nil {
		return c, nil
	}
	return &credConn{Conn: c, addr: peerAddr{pid: int(cred.Pid), uid: int(cred.Uid), gid: int(cred.Gid)}}, nil
}

type credConn struct {
	net.Conn
	addr peerAddr
}

func (c *credConn) RemoteAddr() net.Addr { return c.addr }

// peerAddr is a unix socket peer identified by its credentials.
type peerAddr struct{ pid, uid, gid int }

func (a peerAddr) Network() string { return "unix" }
func (a peerAddr) String() string {
	return fmt.Sprintf("peercred:pid=%d,uid=%d,gid=%d", a.pid, a.uid, a.gid)
}

// parsePeerAddr returns the uid from a peerAddr's String form.
func parsePeerAddr(s string) (uid int, ok bool) {
	var a peerAddr
	if _, err := fmt.Sscanf(s, "peercred:pid=%d,uid=%d,gid=%d", &a.pid, &a.uid, &a.gid); err != nil {
		return 0, false
	}
	return a.uid, a.String() == s
}

// SetSocketGroup gives the socket at path to group and makes it mode 0660,
// so members of the group may use the admin API (and sendmail).
func SetSocketGroup(path, group string) error {
	gid, err := lookupGID(group)
	if err != nil {
		return err
	}
	if err := os.Chown(path, -1, gid); err != nil {
		return fmt.Errorf("admin.socket_group: %w", err)
	}
	if err := os.Chmod(path, 0o660); err != nil {
		return fmt.Errorf("admin.socket_group: %w", err)
	}
	return nil
}

func lookupGID(group string) (int, error) {
	g, err := user.LookupGroup(group)
	if err != nil {
		return 0, fmt.Errorf("admin.socket_group: %w", err)
	}
	gid, err := strconv.Atoi(g.Gid)
	if err != nil {
		return 0, fmt.Errorf("admin.socket_group: gid %q: %w", g.Gid, err)
	}
	return gid, nil
}

// PreparePickup creates data_dir/pickup and returns its path. Without a
// group it is mode 0700 (only the relay's user and root drop files there);
// with one, data_dir becomes 0710 and pickup 02730 with that group, so the
// group's members can reach the socket and drop files they cannot list,
// which the relay's user can read (the setgid bit gives them the group).
func PreparePickup(dataDir, group string) (string, error) {
	dir := filepath.Join(dataDir, PickupDirName)
	if err := os.MkdirAll(filepath.Join(dir, "bad"), 0o700); err != nil {
		return "", fmt.Errorf("pickup: %w", err)
	}
	if group == "" {
		return dir, nil
	}
	gid, err := lookupGID(group)
	if err != nil {
		return "", err
	}
	for _, d := range []struct {
		path string
		mode os.FileMode
	}{{dataDir, 0o710}, {dir, 0o730 | os.ModeSetgid}} {
		if err := os.Chown(d.path, -1, gid); err != nil {
			return "", fmt.Errorf("pickup: %w", err)
		}
		if err := os.Chmod(d.path, d.mode); err != nil {
			return "", fmt.Errorf("pickup: %w", err)
		}
	}
	return dir, nil
}

// WritePickup stores an injection as one file in dir, atomically: it is
// written to a temporary name (starting with a dot, which DrainPickup skips),
// synced, renamed, and the directory synced. It returns the file's path.
// When the caller is root the file is given to the directory's owner, so
// the relay's user can read and delete it.
func WritePickup(dir string, env *InjectEnvelope, msg io.Reader) (string, error) {
	line, err := json.Marshal(env)
	if err != nil {
		return "", err
	}
	name := fmt.Sprintf("%d.%d.%s", time.Now().UnixNano(), os.Getpid(), mailhdr.Token(8))
	tmp := filepath.Join(dir, "."+name+".tmp")
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o640)
	if err != nil {
		return "", err
	}
	fail := func(err error) (string, error) {
		f.Close()
		os.Remove(tmp)
		return "", err
	}
	if _, err := f.Write(append(line, '\n')); err != nil {
		return fail(err)
	}
	if _, err := io.Copy(f, msg); err != nil {
		return fail(err)
	}
	if os.Geteuid() == 0 {
		if st, err := os.Stat(dir); err == nil {
			if sys, ok := st.Sys().(*syscall.Stat_t); ok && sys.Uid != 0 {
				if err := f.Chown(int(sys.Uid), int(sys.Gid)); err != nil {
					return fail(err)
				}
			}
		}
	}
	if err := f.Sync(); err != nil {
		return fail(err)
	}
	if err := f.Close(); err != nil {
		os.Remove(tmp)
		return "", err
	}
	final := filepath.Join(dir, name)
	if err := os.Rename(tmp, final); err != nil {
		os.Remove(tmp)
		return "", err
	}
	// The message is handed over: its data is on disk and its name in the
	// directory. Syncing the directory makes the name survive a power loss
	// at once; a member of admin.socket_group may not open the directory
	// (mode 02730), and the journal commits it within seconds anyway. Any
	// failure here must not be reported as "not sent": the relay will queue
	// the file, and a caller that retried would send the message twice.
	_ = syncDir(dir)
	return final, nil
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}

// DrainPickup queues every file in the pickup directory dir and deletes it
// once queued. A file that is not a valid injection moves to dir/bad (and
// is logged); a queue failure leaves the file for the next drain and is
// returned; a temporary file unchanged for staleTemp is deleted. It returns
// how many messages were queued.
func (in *Injector) DrainPickup(dir string) (int, error) {
	ents, err := os.ReadDir(dir)
	if err != nil {
		return 0, fmt.Errorf("pickup: %w", err)
	}
	n := 0
	for _, e := range ents {
		if !e.Type().IsRegular() {
			continue
		}
		if strings.HasPrefix(e.Name(), ".") {
			if strings.HasSuffix(e.Name(), ".tmp") {
				in.removeStaleTemp(dir, e)
			}
			continue
		}
		path := filepath.Join(dir, e.Name())
		id, err := in.pickupOne(path)
		if err != nil {
			var ie *InjectError
			if errors.As(err, &ie) && ie.Status != http.StatusServiceUnavailable {
				bad := filepath.Join(dir, "bad", e.Name())
				in.Log.Error("pickup: file refused; moved aside", "file", path, "to", bad, "err", err)
				if rerr := os.Rename(path, bad); rerr != nil {
					in.Log.Error("pickup: cannot move refused file", "file", path, "err", rerr)
				}
				continue
			}
			return n, err
		}
		if err := os.Remove(path); err != nil {
			in.Log.Error("pickup: queued but cannot delete the file; it will be queued again",
				"queue_id", id, "file", path, "err", err)
			continue
		}
		n++
	}
	if n > 0 {
		syncDir(dir)
	}
	return n, nil
}

// staleTemp is how long a temporary pickup file may go unchanged before
// DrainPickup takes it for what a sendmail left when it died while writing
// (kill -9, a crash): WritePickup writes and renames it within moments, so
// one this old is never renamed, and nothing else would ever delete it.
const staleTemp = time.Hour

// removeStaleTemp deletes e, a temporary file of WritePickup in dir, when
// it has gone unchanged for staleTemp (as Postfix's postsuper -p purges the
// temporary files a crash left); a younger one may be written right now.
func (in *Injector) removeStaleTemp(dir string, e os.DirEntry) {
	fi, err := e.Info()
	if err != nil || in.now().Sub(fi.ModTime()) < staleTemp {
		return
	}
	path := filepath.Join(dir, e.Name())
	if err := os.Remove(path); err != nil {
		if !os.IsNotExist(err) {
			in.Log.Error("pickup: cannot remove a stale temporary file", "file", path, "err", err)
		}
		return
	}
	in.Log.Warn("pickup: removed a temporary file a sendmail left unfinished", "file", path,
		"size", fi.Size(), "modified", fi.ModTime().UTC().Format(time.RFC3339))
}

func (in *Injector) pickupOne(path string) (string, error) {
	// Not through a symlink, and without waiting for a writer: the file
	// may have been swapped since the directory was read (by a member of
	// admin.socket_group), and opening a FIFO blocked the relay's loop.
	f, err := os.OpenFile(path, os.O_RDONLY|syscall.O_NOFOLLOW|syscall.O_NONBLOCK, 0)
	if err != nil {
		if errors.Is(err, syscall.ELOOP) {
			return "", injectErr(http.StatusForbidden, "pickup: a symbolic link, not a file")
		}
		return "", fmt.Errorf("pickup: %w", err)
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return "", fmt.Errorf("pickup: %w", err)
	}
	if !st.Mode().IsRegular() {
		return "", injectErr(http.StatusForbidden, "pickup: not a regular file")
	}
	sys, ok := st.Sys().(*syscall.Stat_t)
	if !ok {
		return "", injectErr(http.StatusForbidden, "pickup: cannot tell the file's owner")
	}
	br := bufio.NewReaderSize(f, 64<<10)
	env, err := readEnvelopeLine(br)
	if err != nil {
		return "", err
	}
	uid := int(sys.Uid)
	if uid == 0 || uid == os.Geteuid() {
		// Written by root (and handed to us) or by our own user: the
		// envelope's word on who submitted it is trusted.
		uid = env.UID
	}
	id, messageID, err := in.Inject(env, uid, br, "pickup")
	if err != nil {
		return "", err
	}
	in.Log.Info("pickup: queued", "queue_id", id, "message_id", messageID, "file", filepath.Base(path))
	return id, nil
}

// Inject hands a message to the running relay; it returns the queue ID.
func (c *Client) Inject(env *InjectEnvelope, msg io.Reader) (string, error) {
	line, err := json.Marshal(env)
	if err != nil {
		return "", err
	}
	var r InjectResult
	body := io.MultiReader(bytes.NewReader(append(line, '\n')), msg)
	if err := c.Do("POST", "/v1/inject", nil, body, &r); err != nil {
		return "", err
	}
	return r.ID, nil
}
