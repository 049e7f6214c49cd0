package dsn

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"mime"
	"mime/multipart"
	"net/mail"
	"net/textproto"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/mailhop/mailhop/queue"
	"github.com/mailhop/mailhop/relay/mailhdr"
	"github.com/mailhop/mailhop/relay/mime7bit"
	"github.com/mailhop/mailhop/relay/smtperr"
)

// Outcome is one recipient in a delivery status notification: Rcpt as
// queued (address, ORCPT), and Reply, the reply that decided its Action,
// a server's or the relay's own (Code 0), nil when there is none.
type Outcome struct {
	Rcpt   *queue.Recipient
	Action string // failed, delayed, delivered, relayed
	Reply  *smtperr.Error
	Diag   *smtperr.Error // the remote reply for Diagnostic-Code when Reply is ours; nil: Reply
	Remote string         // Remote-MTA host, "" when none answered
	Until  time.Time      // a delayed recipient's Will-Retry-Until, zero: none
}

// Input is what a report is built from.
type Input struct {
	Hostname string          // the relay's name: Reporting-MTA, From and Message-ID
	Env      *queue.Envelope // the original message's envelope (sender, RET, ENVID, SMTPUTF8)
	Body     queue.Body      // the original message, nil: none to return
	Outcomes []Outcome       // all with the same kind of action
	Now      time.Time       // Date and Last-Attempt-Date
}

// Message is a generated report: head and tail around the original
// message (when it is returned whole), so a large message is streamed from
// the queue rather than held in memory.
type Message struct {
	head, tail []byte
	full       queue.Body // nil: headers only, already in head
	BodyType   string     // "" or "8BITMIME"
}

// Reader returns a reader of the whole report, a new one each call.
func (m *Message) Reader() io.Reader {
	if m.full == nil {
		return io.MultiReader(bytes.NewReader(m.head), bytes.NewReader(m.tail))
	}
	return io.MultiReader(bytes.NewReader(m.head), io.NewSectionReader(m.full, 0, m.full.Size()), bytes.NewReader(m.tail))
}

// maxReturnedSize is the largest message a failure report with RET=FULL
// returns whole; of a larger one it returns the header, as Postfix does
// (bounce_size_limit), so the report does not exceed the sender's size
// limit and get lost (a report about a report is never sent).
const maxReturnedSize = 50000

// Build writes an RFC 3464 report: multipart/report with a readable
// explanation, a message/delivery-status part and the original headers (or
// the whole original for a failure report with RET=FULL, up to
// maxReturnedSize). Lines end in CRLF.
func Build(in *Input) (*Message, error) {
	if len(in.Outcomes) == 0 {
		return nil, errors.New("dsn: no recipients")
	}
	env := in.Env
	kind := in.Outcomes[0].Action
	subject := "Undelivered Mail Returned to Sender"
	switch kind {
	case "delayed":
		subject = "Delayed Mail (still being retried)"
	case "delivered", "relayed":
		subject = "Successful Mail Delivery Report"
	}
	boundary := mailhdr.Token(12) + "/" + in.Hostname
	var b bytes.Buffer
	w := func(format string, args ...any) { fmt.Fprintf(&b, format+"\r\n", args...) }

	w("From: Mail Delivery System <MAILER-DAEMON@%s>", in.Hostname)
	w("To: <%s>", env.From)
	w("Subject: %s", subject)
	w("Date: %s", in.Now.Format(time.RFC1123Z))
	w("Message-ID: <%d.%s@%s>", in.Now.UnixNano(), mailhdr.Token(8), in.Hostname)
	w("Auto-Submitted: auto-replied")
	w("MIME-Version: 1.0")
	w("Content-Type: multipart/report; report-type=delivery-status;")
	w("\tboundary=\"%s\"", boundary)
	w("")
	w("This is a MIME-encapsulated message.")
	w("")

	// (1) The explanation for a person, written apart first: it is
	// labelled 8bit only when it holds UTF-8.
	var ex bytes.Buffer
	w = func(format string, args ...any) { fmt.Fprintf(&ex, format+"\r\n", args...) }
	w("This is the mail system at host %s.", in.Hostname)
	w("")
	switch kind {
	case "failed":
		w("I'm sorry to have to inform you that your message could not be")
		w("delivered to one or more recipients. The details are below.")
	case "delayed":
		w("Your message could not be delivered yet to one or more recipients.")
		w("Delivery is still being retried; you do not need to send it again.")
	default:
		w("Your message was successfully delivered to the destination(s)")
		w("listed below.")
	}
	w("")
	for _, r := range in.Outcomes {
		line := "<" + r.Rcpt.Address + ">: "
		if r.Reply != nil {
			line += sanitize(r.Reply.Error())
		} else {
			line += r.Action
		}
		if r.Remote != "" {
			line += " (host " + r.Remote + ")"
		}
		w("%s", cutUTF8(line, maxLine))
	}
	w("")
	w = func(format string, args ...any) { fmt.Fprintf(&b, format+"\r\n", args...) }
	w("--%s", boundary)
	w("Content-Type: text/plain; charset=utf-8")
	if mime7bit.IsASCII(ex.Bytes()) {
		w("Content-Transfer-Encoding: 7bit")
	} else {
		w("Content-Transfer-Encoding: 8bit")
	}
	w("Content-Description: Notification")
	w("")
	b.Write(ex.Bytes())

	// (2) The machine-readable report (RFC 3464 §2.2, §2.3). As Postfix
	// does, only a report about an SMTPUTF8 message is a
	// message/global-delivery-status, which may hold UTF-8 (RFC 6533 §6);
	// any other report's is ASCII, so that it goes to a server without
	// SMTPUTF8 or 8BITMIME as it is: a non-ASCII character of its text is
	// written \x{HEX} and an address of the utf-8 type in its
	// utf-8-addr-xtext form (RFC 6533 §3).
	global := env.SMTPUTF8
	text, utf8Addr := sanitize, sanitize
	if !global {
		text, utf8Addr = asciiText, utf8AddrXtext
	}
	var st bytes.Buffer
	w = func(format string, args ...any) { fmt.Fprintf(&st, format+"\r\n", args...) }
	w("Reporting-MTA: dns; %s", text(in.Hostname))
	if env.EnvID != "" {
		w("Original-Envelope-Id: %s", text(env.EnvID))
	}
	if !env.Arrived.IsZero() {
		w("Arrival-Date: %s", env.Arrived.Format(time.RFC1123Z))
	}
	for _, r := range in.Outcomes {
		w("")
		if typ, addr, ok := strings.Cut(r.Rcpt.ORCPT, ";"); ok {
			typ = strings.ToLower(strings.TrimSpace(typ))
			if typ == "utf-8" {
				addr = utf8Addr(strings.TrimSpace(addr))
			} else {
				addr = text(addr)
			}
			if addr = strings.TrimSpace(addr); isAddrType(typ) && addr != "" {
				w("Original-Recipient: %s; %s", typ, addr)
			}
		}
		if typ := addrType(r.Rcpt.Address); typ == "utf-8" {
			w("Final-Recipient: utf-8; %s", utf8Addr(r.Rcpt.Address))
		} else {
			w("Final-Recipient: rfc822; %s", text(r.Rcpt.Address))
		}
		w("Action: %s", r.Action)
		w("Status: %s", dsnStatus(r))
		if r.Remote != "" {
			w("Remote-MTA: dns; %s", text(r.Remote))
		}
		diag := r.Reply
		if r.Diag != nil {
			diag = r.Diag
		}
		switch {
		case diag != nil && diag.Code != 0:
			w("Diagnostic-Code: smtp; %s", text(diag.Error()))
		case diag != nil && r.Action != "delivered" && r.Action != "relayed":
			// No server said it (NXDOMAIN, null MX, a SIZE too big):
			// the relay's own reason, typed as Postfix types its
			// X-Postfix (RFC 3464 §2.3.6 allows an X- type).
			w("Diagnostic-Code: X-mailhop; %s", text(diag.Error()))
		}
		if r.Action != "delivered" && r.Action != "relayed" || r.Remote != "" {
			w("Last-Attempt-Date: %s", in.Now.Format(time.RFC1123Z))
		}
		if r.Action == "delayed" && !r.Until.IsZero() {
			w("Will-Retry-Until: %s", r.Until.Format(time.RFC1123Z))
		}
	}
	w("")
	w = func(format string, args ...any) { fmt.Fprintf(&b, format+"\r\n", args...) }
	statusType := "message/delivery-status"
	if global {
		statusType = "message/global-delivery-status"
	}
	w("--%s", boundary)
	w("Content-Type: %s", statusType)
	w("Content-Description: Delivery report")
	w("")
	b.Write(st.Bytes())

	// (3) The original: headers, or the whole message for RET=FULL; an
	// SMTPUTF8 one whose header is not ASCII is message/global-headers or
	// message/global (RFC 6532 §3.7, RFC 6533 §6.3). A part holding 8-bit
	// octets is labelled 8bit (RFC 2045 §6.1: unlabelled means 7bit), as
	// Postfix labels it.
	var hdr []byte
	if in.Body != nil {
		hdr = mailhdr.Block(in.Body, in.Body.Size())
	}
	globalHdr := env.SMTPUTF8 && !mime7bit.IsASCII(hdr)
	m := &Message{}
	w("--%s", boundary)
	if kind == "failed" && strings.EqualFold(env.Ret, "FULL") && in.Body != nil && in.Body.Size() <= maxReturnedSize {
		if !globalHdr {
			w("Content-Type: message/rfc822")
		} else {
			w("Content-Type: message/global")
		}
		eight := strings.EqualFold(env.BodyType, "8BITMIME") || strings.EqualFold(env.BodyType, "BINARYMIME")
		if !eight {
			var err error
			if eight, err = mime7bit.Has8bit(in.Body, in.Body.Size()); err != nil {
				return nil, fmt.Errorf("dsn: reading the original: %w", err)
			}
		}
		if eight {
			w("Content-Transfer-Encoding: 8bit")
			m.BodyType = "8BITMIME"
		}
		w("Content-Description: Undelivered Message")
		w("")
		m.full = in.Body
	} else {
		if !globalHdr {
			w("Content-Type: text/rfc822-headers")
		} else {
			w("Content-Type: message/global-headers")
		}
		if !mime7bit.IsASCII(hdr) {
			w("Content-Transfer-Encoding: 8bit")
		}
		w("Content-Description: Headers of the original message")
		w("")
		b.Write(hdr)
		if len(hdr) > 0 && !bytes.HasSuffix(hdr, []byte("\r\n")) {
			b.WriteString("\r\n")
		}
	}
	m.head = append([]byte(nil), b.Bytes()...)
	var t bytes.Buffer
	if m.full != nil && in.Body.Size() > 0 && !endsWithCRLF(in.Body) {
		t.WriteString("\r\n")
	}
	fmt.Fprintf(&t, "\r\n--%s--\r\n", boundary)
	m.tail = t.Bytes()
	if m.BodyType == "" && !mime7bit.IsASCII(m.head) {
		m.BodyType = "8BITMIME"
	}
	return m, nil
}

// dsnStatus is the Status field: the reply's enhanced code when its class
// fits the action, else a generic one.
func dsnStatus(r Outcome) string {
	switch r.Action {
	case "delivered", "relayed":
		if r.Reply != nil && strings.HasPrefix(r.Reply.Enhanced, "2.") {
			return r.Reply.Enhanced
		}
		return "2.0.0"
	case "delayed":
		if r.Reply != nil && strings.HasPrefix(r.Reply.Enhanced, "4.") {
			return r.Reply.Enhanced
		}
		return "4.0.0"
	}
	if r.Reply == nil {
		return "5.0.0"
	}
	return r.Reply.Status()
}

func addrType(addr string) string {
	if mime7bit.IsASCII([]byte(addr)) {
		return "rfc822"
	}
	return "utf-8" // RFC 6533 §3
}

func endsWithCRLF(b queue.Body) bool {
	if b.Size() < 2 {
		return false
	}
	var p [2]byte
	if _, err := b.ReadAt(p[:], b.Size()-2); err != nil {
		return false
	}
	return p == [2]byte{'\r', '\n'}
}

// isAddrType reports whether s can be an address type (RFC 3461 §4.2:
// "rfc822", "utf-8", an "x-" type): letters, digits and hyphens. An
// ORCPT of another type (from SMTP it cannot be) gives no
// Original-Recipient field rather than a malformed one.
func isAddrType(s string) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c == '-' || '0' <= c && c <= '9' || 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z') {
			return false
		}
	}
	return true
}

// sanitize makes s safe for one header line: no control characters, at
// most 900 bytes (not cutting a UTF-8 character in two).
func sanitize(s string) string {
	return cutUTF8(noControls(s), 900)
}

// noControls is s with each control character a space.
func noControls(s string) string {
	return strings.Map(func(r rune) rune {
		if r < 0x20 || r == 0x7f {
			return ' '
		}
		return r
	}, s)
}

// asciiText is sanitize's line in ASCII, for a message/delivery-status
// (RFC 3464 §2.1.2): each non-ASCII character is written \x{HEX}, as RFC
// 6533 §3 writes one in an address (an octet that is not UTF-8 as
// \x{FFFD}).
func asciiText(s string) string {
	if mime7bit.IsASCII([]byte(s)) {
		return sanitize(s)
	}
	return embedded(noControls(s), func(r rune) bool { return r < 0x80 })
}

// utf8AddrXtext is an address of the utf-8 type in its ASCII form,
// utf-8-addr-xtext (RFC 6533 §3): what is not a QCHAR (printable ASCII
// but '+', '=' and '\\') is written \x{HEX}.
func utf8AddrXtext(addr string) string {
	return embedded(addr, func(r rune) bool { return '!' <= r && r <= '~' && r != '+' && r != '=' && r != '\\' })
}

// embedded is s with each character keep refuses written \x{HEX} (RFC
// 6533 §3's EmbeddedUnicodeChar, at least two digits), cut to at most 900
// bytes between characters.
func embedded(s string, keep func(rune) bool) string {
	var b strings.Builder
	for _, r := range s {
		piece := string(r)
		if !keep(r) {
			piece = fmt.Sprintf("\\x{%02X}", r)
		}
		if b.Len()+len(piece) > 900 {
			break
		}
		b.WriteString(piece)
	}
	return b.String()
}

// maxLine is the longest line of a message (RFC 5322 §2.1.1: 998 octets
// without CRLF); a next hop may refuse a longer one, as mailhop does at
// limits.max_line_length.
const maxLine = 998

// cutUTF8 returns s cut to at most n bytes, not within a UTF-8 sequence.
func cutUTF8(s string, n int) string {
	if len(s) <= n {
		return s
	}
	for n > 0 && !utf8.RuneStart(s[n]) {
		n--
	}
	return s[:n]
}

// Report is a parsed RFC 3464 delivery status notification.
type Report struct {
	Header       mail.Header // the report's own header (From, To, Subject, ...)
	Human        string      // the first part, for a person
	ReportingMTA string      // "dns; relay.example.com"
	EnvelopeID   string      // Original-Envelope-Id, or ""
	ArrivalDate  string      // Arrival-Date, or ""
	Recipients   []Recipient
	OriginalType string // content type of the third part ("" when absent)
	Original     []byte // its content
}

// Recipient is one per-recipient block of a message/delivery-status.
type Recipient struct {
	OriginalRecipient string // "rfc822; a@example.com", or ""
	FinalRecipient    string // "rfc822; a@example.com"
	Action            string // failed, delayed, delivered, relayed, expanded
	Status            string // "5.1.1"
	RemoteMTA         string // "dns; mx.example.com", or ""
	DiagnosticCode    string // "smtp; 550 5.1.1 no such user", or ""
	LastAttemptDate   string
	WillRetryUntil    string
}

// Address returns the address of FinalRecipient, without its type.
func (r *Recipient) Address() string {
	_, a, _ := strings.Cut(r.FinalRecipient, ";")
	return strings.TrimSpace(a)
}

// maxDSNBytes bounds what Parse reads from one part.
const maxDSNBytes = 64 << 20

// Parse parses and checks a multipart/report; report-type=delivery-status
// message (RFC 3464, RFC 6522). It fails when a required field is missing
// or malformed: Reporting-MTA, and per recipient Final-Recipient, Action and
// Status.
func Parse(r io.Reader) (*Report, error) {
	msg, err := mail.ReadMessage(bufio.NewReader(r))
	if err != nil {
		return nil, fmt.Errorf("dsn: %w", err)
	}
	mt, params, err := mime.ParseMediaType(msg.Header.Get("Content-Type"))
	if err != nil {
		return nil, fmt.Errorf("dsn: content-type: %w", err)
	}
	if mt != "multipart/report" || !strings.EqualFold(params["report-type"], "delivery-status") {
		return nil, fmt.Errorf("dsn: not a delivery report: %s report-type=%q", mt, params["report-type"])
	}
	if params["boundary"] == "" {
		return nil, errors.New("dsn: no boundary")
	}
	d := &Report{Header: msg.Header}
	mr := multipart.NewReader(msg.Body, params["boundary"])
	sawStatus := false
	for i := 0; ; i++ {
		p, err := mr.NextRawPart()
		if err == io.EOF {
			break
		}
		if err != nil {
			return nil, fmt.Errorf("dsn: part %d: %w", i+1, err)
		}
		content, err := io.ReadAll(io.LimitReader(p, maxDSNBytes))
		if err != nil {
			return nil, fmt.Errorf("dsn: part %d: %w", i+1, err)
		}
		ct := p.Header.Get("Content-Type")
		pt := "text/plain"
		if ct != "" {
			if pt, _, err = mime.ParseMediaType(ct); err != nil {
				return nil, fmt.Errorf("dsn: part %d content-type: %w", i+1, err)
			}
		}
		switch {
		case i == 0:
			d.Human = string(content)
		case pt == "message/delivery-status" || pt == "message/global-delivery-status":
			if sawStatus {
				return nil, errors.New("dsn: two delivery-status parts")
			}
			sawStatus = true
			if err := d.parseStatus(content); err != nil {
				return nil, err
			}
		case sawStatus && d.OriginalType == "":
			d.OriginalType, d.Original = pt, content
		}
	}
	if !sawStatus {
		return nil, errors.New("dsn: no message/delivery-status part")
	}
	return d, nil
}

func (d *Report) parseStatus(content []byte) error {
	tr := textproto.NewReader(bufio.NewReader(bytes.NewReader(content)))
	for block := 0; ; block++ {
		h, err := tr.ReadMIMEHeader()
		if err != nil && err != io.EOF {
			return fmt.Errorf("dsn: delivery-status block %d: %w", block+1, err)
		}
		if len(h) == 0 {
			if err == io.EOF {
				break
			}
			continue
		}
		if block == 0 {
			d.ReportingMTA = h.Get("Reporting-Mta")
			d.EnvelopeID = h.Get("Original-Envelope-Id")
			d.ArrivalDate = h.Get("Arrival-Date")
			if !typed(d.ReportingMTA) {
				return fmt.Errorf("dsn: bad or missing Reporting-MTA %q", d.ReportingMTA)
			}
		} else {
			r := Recipient{
				OriginalRecipient: h.Get("Original-Recipient"),
				FinalRecipient:    h.Get("Final-Recipient"),
				Action:            strings.ToLower(h.Get("Action")),
				Status:            h.Get("Status"),
				RemoteMTA:         h.Get("Remote-Mta"),
				DiagnosticCode:    h.Get("Diagnostic-Code"),
				LastAttemptDate:   h.Get("Last-Attempt-Date"),
				WillRetryUntil:    h.Get("Will-Retry-Until"),
			}
			if err := r.check(); err != nil {
				return fmt.Errorf("dsn: recipient %d: %w", len(d.Recipients)+1, err)
			}
			d.Recipients = append(d.Recipients, r)
		}
		if err == io.EOF {
			break
		}
	}
	if d.ReportingMTA == "" {
		return errors.New("dsn: no per-message fields")
	}
	if len(d.Recipients) == 0 {
		return errors.New("dsn: no per-recipient fields")
	}
	return nil
}

func (r *Recipient) check() error {
	if !typed(r.FinalRecipient) {
		return fmt.Errorf("bad or missing Final-Recipient %q", r.FinalRecipient)
	}
	switch r.Action {
	case "failed", "delayed", "delivered", "relayed", "expanded":
	default:
		return fmt.Errorf("bad Action %q", r.Action)
	}
	st, _, _ := strings.Cut(r.Status, " ")
	if !smtperr.ValidEnhanced(st) {
		return fmt.Errorf("bad Status %q", r.Status)
	}
	for _, f := range []string{r.OriginalRecipient, r.RemoteMTA, r.DiagnosticCode} {
		if f != "" && !typed(f) {
			return fmt.Errorf("field without a type: %q", f)
		}
	}
	return nil
}

// typed reports whether v has the "type; value" shape of RFC 3464 fields.
func typed(v string) bool {
	t, rest, ok := strings.Cut(v, ";")
	return ok && strings.TrimSpace(t) != "" && !strings.ContainsAny(strings.TrimSpace(t), " \t") && strings.TrimSpace(rest) != ""
}
