// Package sendmail is sendmail-compatible local submission: the message and
// envelope a sendmail invocation means, and the SMTP dialog of -bs.
//
// mailhop sendmail is the sendmail(8) command line that cron, PHP's mail(),
// mail(1), monitoring scripts and most Unix software call to send mail. Send
// reads one message on stdin, completes its header (From, Date, Message-ID
// when missing; Bcc removed; with -t the recipients read from To, Cc and Bcc,
// or their Resent- forms) and hands it to the running relay over the admin
// socket (POST /v1/inject); when the relay is not running it leaves the
// message in data_dir/pickup, which the relay queues when it starts. If
// neither works it fails with EX_TEMPFAIL and says so: the caller keeps the
// message. A failure is an *Error carrying sendmail's exit code, from
// sysexits.h. cmd/mailhop parses the command line and reads the
// configuration; this package does the rest.
package sendmail

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/mail"
	"os"
	"os/user"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/mailhop/mailhop/relay/admin"
	"github.com/mailhop/mailhop/relay/mailhdr"
	"github.com/mailhop/mailhop/relay/msglimit"
)

// The exit codes of sendmail (sysexits.h) that cmd/mailhop uses; an
// Error's Code is one of these or of the unexported others.
const (
	ExOK          = 0
	ExUsage       = 64
	ExDataErr     = 65
	exNoInput     = 66
	exUnavailable = 69
	ExSoftware    = 70
	exIOErr       = 74
	exTempFail    = 75
	ExNoPerm      = 77
	ExConfig      = 78
)

// Options are what the command line asks of one sendmail invocation.
type Options struct {
	Extract  bool     // -t: recipients from the header too
	NoDot    bool     // -i: a lone "." does not end input
	From     string   // -f or -r, as given: "addr", "Name <addr>", "<>"
	FromSet  bool     // -f or -r was given (else login@hostname)
	FullName string   // -F (else $NAME): the name in an added From:
	Verbose  bool     // -v: print what happened on stdout
	SMTP     bool     // -bs: SMTP on stdin and stdout
	Rcpts    []string // the arguments, each an address list
	// DSN (RFC 3461): -N, -R, -V
	Notify, Ret, EnvID string
	// -bs: NOTIFY and ORCPT of each of rcpts (nil: none given), and
	// whether MAIL carried SMTPUTF8.
	rcptDSN []rcptDSN
	utf8    bool
}

// Config is what sendmail needs of the relay's configuration, with its
// defaults applied.
type Config struct {
	Hostname string          // qualifies local names; in Message-ID and the -bs greeting
	DataDir  string          // the pickup directory is in it
	Socket   string          // the admin socket
	Limits   msglimit.Limits // checked before a message is left in the pickup directory
}

// rcptDSN is what RCPT gave for one recipient in -bs: NOTIFY, and ORCPT
// as "TYPE;address" (decoded); "" when not given.
type rcptDSN struct{ notify, orcpt string }

// Error is a failure with its exit code.
type Error struct {
	Code int    // the exit status (sysexits.h)
	Msg  string // one line for stderr
}

// Error returns the message.
func (e *Error) Error() string { return e.Msg }

// Errorf returns the failure with exit code code and a message formatted
// as fmt.Sprintf does.
func Errorf(code int, format string, args ...any) *Error {
	return &Error{Code: code, Msg: fmt.Sprintf(format, args...)}
}

// Send submits the message on stdin as o asks, or with o.SMTP runs the
// -bs dialog on stdin and stdout, for the user running the process. A
// failure is an *Error with its exit code; any other error (-bs could not
// write a reply) is EX_SOFTWARE's.
func Send(cfg *Config, o *Options, stdin io.Reader, stdout io.Writer) error {
	login, uid := localUser()
	if o.FullName == "" {
		o.FullName = os.Getenv("NAME") // as Postfix's sendmail: -F overrides it
	}
	sender := login + "@" + cfg.Hostname
	if o.FromSet {
		sender = strings.TrimSpace(o.From)
		if i := strings.LastIndexByte(sender, '<'); i > 0 && strings.HasSuffix(sender, ">") {
			sender = sender[i:] // "Name <addr>", as Postfix reads it: the address
		}
		if sender == "<>" || sender == "" {
			sender = ""
		} else {
			sender = qualify(strings.Trim(sender, "<>"), cfg.Hostname)
		}
	}
	if o.SMTP {
		return smtpOnStdio(cfg, o, login, uid, stdin, stdout)
	}
	msg, err := readMessage(stdin, !o.NoDot, cfg.Limits.MaxMessageSize)
	if err != nil {
		return err
	}
	id, err := submit(cfg, o, login, uid, sender, msg)
	if err != nil {
		return err
	}
	if o.Verbose {
		fmt.Fprintln(stdout, id)
	}
	return nil
}

// submit adds what msg lacks (rewriteHeaders), collects the recipients
// (o.Rcpts, and the header's with -t) and hands the message over. It
// returns what happened, for -v.
func submit(cfg *Config, o *Options, login string, uid int, sender string, msg []byte) (string, error) {
	headerFrom := sender
	if headerFrom == "" {
		headerFrom = login + "@" + cfg.Hostname
	}
	out, found, err := rewriteHeaders(msg, o.Extract, headerFields{
		from: headerFrom, fullName: o.FullName, hostname: cfg.Hostname, now: time.Now()})
	if err != nil {
		return "", err
	}
	var rcpts []string
	var dsnOf map[string]rcptDSN // -bs: by address in lower case, the first given
	if o.rcptDSN != nil {
		dsnOf = make(map[string]rcptDSN, len(o.Rcpts))
	}
	for i, r := range o.Rcpts {
		// Each argument is an address list, as Postfix reads it:
		// "a@x, b@y", "Name <a@x>", "root".
		addrs, err := parseAddrs(r, cfg.Hostname)
		if err != nil {
			return "", Errorf(ExDataErr, "message refused, not sent: recipient %q: %v", r, err)
		}
		rcpts = append(rcpts, addrs...)
		for _, a := range addrs {
			if k := strings.ToLower(qualify(a, cfg.Hostname)); dsnOf != nil {
				if _, ok := dsnOf[k]; !ok {
					dsnOf[k] = o.rcptDSN[i]
				}
			}
		}
	}
	rcpts = append(rcpts, found...)
	rcpts = dedupe(rcpts, cfg.Hostname)
	if len(rcpts) == 0 {
		if o.Extract {
			return "", Errorf(ExDataErr, "no recipients: none given and no To, Cc or Bcc header")
		}
		return "", Errorf(ExDataErr, "no recipients given (name them as arguments, or use -t)")
	}
	env := &admin.InjectEnvelope{From: sender, Recipients: rcpts, User: login, UID: uid,
		Notify: o.Notify, Ret: o.Ret, EnvID: o.EnvID, SMTPUTF8: o.utf8}
	// Each list goes only when some recipient has a value: a relay from
	// before them (still running after an upgrade of the binary) refuses
	// an envelope with fields it does not know, so plain -bs mail must not
	// carry them.
	for i, r := range rcpts {
		d := dsnOf[strings.ToLower(r)]
		if d.notify != "" && env.RcptNotify == nil {
			env.RcptNotify = make([]string, len(rcpts))
		}
		if d.orcpt != "" && env.ORCPT == nil {
			env.ORCPT = make([]string, len(rcpts))
		}
		if env.RcptNotify != nil {
			env.RcptNotify[i] = d.notify
		}
		if env.ORCPT != nil {
			env.ORCPT[i] = d.orcpt
		}
	}
	if err := admin.CheckEnvelope(env); err != nil {
		return "", Errorf(ExDataErr, "message refused, not sent: %v", err)
	}
	return handOver(cfg, env, out)
}

// handOver gives the message to the relay, or to the pickup directory when
// the relay is not running. It returns what happened, for -v. The relay
// checks the message against the limits of its running configuration (a
// refusal is EX_DATAERR); the pickup directory gets only a message that meets
// those of the configuration file, which the relay checks again when it
// queues the file.
func handOver(cfg *Config, env *admin.InjectEnvelope, msg []byte) (string, error) {
	c, err := net.DialTimeout("unix", cfg.Socket, 10*time.Second)
	if err == nil {
		c.Close()
		id, err := admin.NewClient(cfg.Socket).Inject(env, bytes.NewReader(msg))
		if err == nil {
			return "queued as " + id, nil
		}
		var st *admin.StatusError
		if errors.As(err, &st) {
			return "", statusExit(st)
		}
		// The relay went away in the middle: whether it queued the message is
		// unknown. A second copy beats none (at least once).
		return pickup(cfg, env, msg, err)
	}
	if errors.Is(err, syscall.EACCES) || errors.Is(err, syscall.EPERM) {
		return "", Errorf(ExNoPerm, "no permission to use the relay's socket %s (the relay's admin.socket_group may use it)", cfg.Socket)
	}
	return pickup(cfg, env, msg, err)
}

func pickup(cfg *Config, env *admin.InjectEnvelope, msg []byte, why error) (string, error) {
	if err := admin.CheckLimits(bytes.NewReader(msg), cfg.Limits); err != nil {
		return "", refused(err.Error())
	}
	dir := filepath.Join(cfg.DataDir, admin.PickupDirName)
	path, err := admin.WritePickup(dir, env, bytes.NewReader(msg))
	if err != nil {
		return "", Errorf(exTempFail, "the relay is not running (%v), and the message could not be left in %s: %v; message NOT sent",
			why, dir, err)
	}
	return "relay not running; left in " + path + " to be queued when it starts", nil
}

func statusExit(st *admin.StatusError) error {
	switch st.Code {
	case http.StatusBadRequest, http.StatusRequestEntityTooLarge:
		return refused(strings.TrimPrefix(st.Msg, "inject: "))
	case http.StatusForbidden:
		return Errorf(ExNoPerm, "refused: %s", st.Msg)
	case http.StatusServiceUnavailable:
		return Errorf(exTempFail, "the relay cannot take the message now: %s; message NOT sent", st.Msg)
	case http.StatusNotFound, http.StatusMethodNotAllowed:
		return Errorf(exUnavailable, "the running relay does not accept local mail (too old?): %s", st.Msg)
	}
	return Errorf(ExSoftware, "the relay answered %d: %s", st.Code, st.Msg)
}

// refused is a message the relay would not take (EX_DATAERR): the same
// line whether the running relay or sendmail itself found the problem.
func refused(why string) error {
	return Errorf(ExDataErr, "message refused, not sent: %s", why)
}

// localUser returns the caller's login name and uid.
func localUser() (string, int) {
	uid := os.Getuid()
	if u, err := user.Current(); err == nil && u.Username != "" {
		return u.Username, uid
	}
	for _, k := range []string{"LOGNAME", "USER"} {
		if v := os.Getenv(k); v != "" {
			return v, uid
		}
	}
	return fmt.Sprintf("uid%d", uid), uid
}

// qualify appends @hostname to an address without a domain ("root").
func qualify(addr, hostname string) string {
	if strings.Contains(addr, "@") {
		return addr
	}
	return addr + "@" + hostname
}

func dedupe(addrs []string, hostname string) []string {
	seen := map[string]bool{}
	var out []string
	for _, a := range addrs {
		a = qualify(a, hostname)
		k := strings.ToLower(a)
		if !seen[k] {
			seen[k] = true
			out = append(out, a)
		}
	}
	return out
}

// readMessage reads the message from r. With dotEnds, a line holding only
// "." ends it, as in sendmail without -i. More than max bytes is an error.
func readMessage(r io.Reader, dotEnds bool, max int64) ([]byte, error) {
	if r == nil {
		return nil, Errorf(exNoInput, "no message on standard input")
	}
	br := bufio.NewReaderSize(r, 64<<10)
	var buf bytes.Buffer
	for {
		line, err := br.ReadSlice('\n')
		if err == bufio.ErrBufferFull {
			buf.Write(line)
			if int64(buf.Len()) > max {
				return nil, tooLarge(max)
			}
			continue
		}
		if dotEnds && (string(line) == ".\n" || string(line) == ".\r\n" || (err == io.EOF && string(line) == ".")) {
			break
		}
		buf.Write(line)
		if int64(buf.Len()) > max {
			return nil, tooLarge(max)
		}
		if err == io.EOF {
			break
		}
		if err != nil {
			return nil, Errorf(exNoInput, "reading the message: %v", err)
		}
	}
	return buf.Bytes(), nil
}

func tooLarge(max int64) error {
	return refused((&msglimit.Error{Key: msglimit.KeyMaxMessageSize, Limit: max}).Error())
}

// headerFields are what rewriteHeaders adds when missing.
type headerFields struct {
	from, fullName, hostname string
	now                      time.Time
}

// rewriteHeaders removes Bcc and Resent-Bcc, adds From, Date and Message-ID
// when missing (Resent-From, -Date and -Message-ID for a message with
// Resent- fields), and with extract returns the addresses of To, Cc and Bcc (of
// Resent-To, -Cc and -Bcc when the message has Resent- fields). A message that
// does not start with a header gets the added fields and a blank line in
// front of it. Line ends in the result are LF (see lfLineEnds).
func rewriteHeaders(msg []byte, extract bool, hf headerFields) ([]byte, []string, error) {
	msg = lfLineEnds(msg)
	// An mbox "From " line at the top is not a header field; drop it.
	if bytes.HasPrefix(msg, []byte("From ")) {
		if i := bytes.IndexByte(msg, '\n'); i >= 0 {
			msg = msg[i+1:]
		} else {
			msg = nil
		}
	}
	fields, body := splitHeader(msg)
	// A message being resent (RFC 5322 §3.6.6) goes to its Resent-To, -Cc
	// and -Bcc, not to the original recipients, as Postfix's cleanup reads it.
	prefix := ""
	for _, f := range fields {
		if strings.HasPrefix(strings.ToLower(f.name), "resent-") {
			prefix = "resent-"
			break
		}
	}
	var out bytes.Buffer
	var rcpts []string
	has := map[string]bool{}
	for _, f := range fields {
		name := strings.ToLower(f.name)
		has[name] = true
		if addressFields[name] || name == "bcc" || name == "resent-bcc" {
			// "From: root (Cron Daemon)" leaves as root@hostname, as the
			// envelope does (Postfix's append_at_myorigin rewrites the
			// header of local mail too): a From without a domain is not
			// RFC 5322, and receivers refuse it.
			f.raw = qualifyAddrs(f.raw, f.colon+1, hf.hostname)
		}
		if extract && (name == prefix+"to" || name == prefix+"cc" || name == prefix+"bcc") {
			addrs, err := parseAddrs(f.value(), hf.hostname)
			if err != nil {
				return nil, nil, Errorf(ExDataErr, "%s: header: %v", f.name, err)
			}
			rcpts = append(rcpts, addrs...)
		}
		if name == "bcc" || name == "resent-bcc" {
			continue // RFC 5322 §3.6.3, §3.6.6: blind copies do not show
		}
		out.Write(f.raw)
	}
	var add bytes.Buffer
	// A resent message gets the Resent- forms (RFC 5322 §3.6.6), as
	// Postfix's cleanup adds them.
	tag := ""
	if prefix != "" {
		tag = "Resent-"
	}
	if !has[prefix+"from"] {
		if hf.fullName != "" {
			add.WriteString(tag + "From: " + (&mail.Address{Name: hf.fullName, Address: hf.from}).String() + "\n")
		} else {
			add.WriteString(tag + "From: " + hf.from + "\n")
		}
	}
	if !has[prefix+"date"] {
		add.WriteString(tag + "Date: " + hf.now.Format(time.RFC1123Z) + "\n")
	}
	if !has[prefix+"message-id"] {
		add.WriteString(fmt.Sprintf("%sMessage-ID: <%s.%s@%s>\n", tag, hf.now.UTC().Format("20060102150405"), mailhdr.Token(8), hf.hostname))
	}
	res := append(out.Bytes(), add.Bytes()...)
	if len(fields) == 0 && !bytes.HasPrefix(body, []byte("\n")) {
		res = append(res, '\n') // (a message that starts with the empty line has it)
	}
	return append(res, body...), rcpts, nil
}

// lfLineEnds makes every line end LF: CRLF, and a CR alone, which the relay
// also takes for a line end when it queues the message (admin's crlfReader
// makes each CRLF). The header is read from the result, so the fields
// sendmail finds, removes (Bcc) and adds are the fields the relay queues:
// read with CR left inside lines, "Subject: x\rBcc: y" hid a Bcc field that
// was then delivered, and "From: a\r\r\n" (a CRLF file converted twice)
// put the added fields below the empty line the relay saw there.
func lfLineEnds(msg []byte) []byte {
	if bytes.IndexByte(msg, '\r') < 0 {
		return msg
	}
	out := make([]byte, 0, len(msg))
	for i := 0; i < len(msg); i++ {
		c := msg[i]
		if c == '\r' {
			if i+1 < len(msg) && msg[i+1] == '\n' {
				i++
			}
			c = '\n'
		}
		out = append(out, c)
	}
	return out
}

// field is one header field, with its continuation lines.
type field struct {
	name  string // without the white space the obsolete syntax allows before the colon
	colon int    // where the colon is in raw
	raw   []byte // every line, with line endings
}

// value is the field body, unfolded (RFC 5322 §2.2.3).
func (f field) value() string {
	v := string(f.raw[f.colon+1:])
	v = strings.NewReplacer("\r\n", "", "\n", "").Replace(v)
	return strings.TrimSpace(v)
}

// splitHeader returns the header fields and the rest (blank line included).
// When the message does not start with a field, there is no header. A
// field is what the relay takes for one (mailhdr.StartsWithField): white
// space between the name and the colon (RFC 5322 §4.5.3, "Bcc : x") is
// allowed, as Postfix allows it; read as the end of the header, such a Bcc
// went into the body, shown to every recipient, and with -t neither it nor
// the To and Cc below it were sent to.
func splitHeader(msg []byte) ([]field, []byte) {
	var fields []field
	rest := msg
	for len(rest) > 0 {
		end := bytes.IndexByte(rest, '\n')
		line := rest
		if end >= 0 {
			line = rest[:end+1]
		}
		trim := bytes.TrimRight(line, "\r\n")
		if len(trim) == 0 {
			return fields, rest // the blank line and the body
		}
		if (trim[0] == ' ' || trim[0] == '\t') && len(fields) > 0 {
			fields[len(fields)-1].raw = append(fields[len(fields)-1].raw, line...)
			rest = rest[len(line):]
			continue
		}
		if !mailhdr.StartsWithField(trim) {
			if len(fields) == 0 {
				return nil, msg
			}
			// Not a field: the header ends here without a blank line.
			return fields, append([]byte("\n"), rest...)
		}
		colon := bytes.IndexByte(trim, ':')
		fields = append(fields, field{name: string(bytes.TrimRight(trim[:colon], " \t")), colon: colon, raw: append([]byte(nil), line...)})
		rest = rest[len(line):]
		if end < 0 {
			break
		}
	}
	if len(fields) > 0 && len(rest) == 0 && !bytes.HasSuffix(fields[len(fields)-1].raw, []byte("\n")) {
		fields[len(fields)-1].raw = append(fields[len(fields)-1].raw, '\n')
	}
	return fields, rest
}

// addressFields are the header fields that hold addresses (RFC 5322 §3.6.2,
// §3.6.3, §3.6.6), lower case; Bcc and Resent-Bcc are removed instead.
var addressFields = map[string]bool{
	"from": true, "sender": true, "reply-to": true, "to": true, "cc": true,
	"resent-from": true, "resent-sender": true, "resent-to": true, "resent-cc": true,
}

// qualifyAddrs appends "@"+hostname to every address without a domain in
// the address list raw[start:] ("root", "root (Cron Daemon)", "Admin
// <root>"); the rest of the field is kept as written. A mailbox that is
// more than one word without angle brackets ("John Smith") is left alone:
// it is no address to qualify.
func qualifyAddrs(raw []byte, start int, hostname string) []byte {
	var at []int // where "@hostname" goes, in order
	var (
		depth        int  // comment nesting
		quoted       bool // in a quoted string
		angle        int  // index of '<' of the current mailbox, or -1
		words        int  // words of the current mailbox outside comments
		inWord       bool
		wordEnd      int  // end of the last such word
		hasAt, route bool // an '@' (':' in angle brackets) in the address
	)
	reset := func() { angle, words, inWord, hasAt, route = -1, 0, false, false, false }
	reset()
	for i := start; i < len(raw); i++ {
		c := raw[i]
		switch {
		case quoted:
			if c == '\\' {
				i++
			} else if c == '"' {
				quoted = false
			}
			if angle < 0 {
				wordEnd = i + 1
			}
			continue
		case depth > 0:
			if c == '\\' {
				i++
			} else if c == '(' {
				depth++
			} else if c == ')' {
				depth--
			}
			continue
		}
		switch c {
		case '(':
			depth++
			inWord = false
		case '"':
			quoted = true
			if angle < 0 && !inWord {
				words++
				inWord = true
			}
		case '<':
			angle = i
		case '>':
			if angle >= 0 && !hasAt && !route && len(bytes.TrimSpace(raw[angle+1:i])) > 0 {
				at = append(at, i)
			}
			angle = -2 // the address is done; what follows is not it
		case ',', ';':
			if angle == -1 && words == 1 && !hasAt {
				at = append(at, wordEnd)
			}
			reset()
		case ':':
			if angle >= 0 {
				route = true
			} else {
				reset() // a group's display name
			}
		case ' ', '\t', '\r', '\n':
			inWord = false
		default:
			if c == '@' {
				hasAt = true
			}
			if angle == -1 {
				if !inWord {
					words++
					inWord = true
				}
				wordEnd = i + 1
			}
		}
	}
	if angle == -1 && words == 1 && !hasAt && !quoted && depth == 0 {
		at = append(at, wordEnd)
	}
	if len(at) == 0 {
		return raw
	}
	out := make([]byte, 0, len(raw)+len(at)*(len(hostname)+1))
	prev := 0
	for _, p := range at {
		out = append(append(append(out, raw[prev:p]...), '@'), hostname...)
		prev = p
	}
	return append(out, raw[prev:]...)
}

// parseAddrs reads an address list leniently: RFC 5322 lists, and the bare
// local names cron and scripts write ("root"), which get @hostname.
func parseAddrs(v, hostname string) ([]string, error) {
	if strings.TrimSpace(v) == "" {
		return nil, nil
	}
	if list, err := mail.ParseAddressList(v); err == nil {
		out := make([]string, len(list))
		for i, a := range list {
			out[i] = envelopeAddr(a.Address)
		}
		return out, nil
	}
	var out []string
	for _, p := range strings.Split(v, ",") {
		p = strings.TrimSpace(p)
		if p == "" {
			continue
		}
		if a, err := mail.ParseAddress(p); err == nil {
			out = append(out, envelopeAddr(a.Address))
			continue
		}
		// "Name <root>" or "root": a local name.
		if i := strings.LastIndexByte(p, '<'); i >= 0 && strings.HasSuffix(p, ">") {
			p = p[i+1 : len(p)-1]
		}
		if p == "" || strings.ContainsAny(p, " \t<>()\",;") {
			return nil, fmt.Errorf("cannot read the address %q", p)
		}
		out = append(out, qualify(p, hostname))
	}
	return out, nil
}

// envelopeAddr quotes the local part of an address net/mail has read, when
// it needs quotes: net/mail gives "john smith"@example.com as
// john smith@example.com, which is no address.
func envelopeAddr(addr string) string {
	return strings.TrimSuffix(strings.TrimPrefix((&mail.Address{Address: addr}).String(), "<"), ">")
}
