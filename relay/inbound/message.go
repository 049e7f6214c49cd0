package inbound

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"net/netip"
	"strings"
	"time"

	"github.com/emersion/go-smtp"

	"github.com/mailhop/mailhop/dnsmx"
	"github.com/mailhop/mailhop/queue"
	"github.com/mailhop/mailhop/relay/config"
	"github.com/mailhop/mailhop/relay/mailhdr"
)

// maxHeaderScan is how much of a submitted message is searched for its
// Message-ID and Date fields. A longer header is not an error: nothing is
// added then.
const maxHeaderScan = 64 << 10

// message returns the body to queue: the Received field, on submission
// listeners Message-ID and Date when the message has none (RFC 6409 §8.2,
// §8.3), then the data as received, byte for byte.
// The returned sniffer gives the message's Message-ID, once the body has
// been read, for the log.
//
// Data that does not start with a header field (a continuation line, text
// without a header) is the body: an empty line goes between mailhop's
// fields and it, so that no client line can join the Received field.
func (ss *session) message(cfg *config.Config, env *queue.Envelope, data io.Reader, now time.Time) (io.Reader, *idSniffer) {
	var prefix bytes.Buffer
	prefix.WriteString(ss.receivedField(cfg.Hostname, env, now))
	sn := &idSniffer{HeadKeeper: mailhdr.HeadKeeper{R: data}}
	if ss.mode == config.ModeRelay {
		br := bufio.NewReaderSize(sn, firstLineScan)
		head, _ := br.Peek(firstLineScan) // an error shows again when br is read
		if !mailhdr.StartsWithField(head) {
			prefix.WriteString("\r\n")
		}
		return io.MultiReader(&prefix, br), sn
	}
	br := bufio.NewReaderSize(sn, maxHeaderScan)
	head, _ := br.Peek(maxHeaderScan) // an error shows again when br is read
	hasID, hasDate, ok := scanHeader(head, len(head) < maxHeaderScan)
	noHeader := !mailhdr.StartsWithField(head)
	if noHeader {
		hasID, hasDate, ok = false, false, true
	}
	if ok && !hasID {
		sn.id = fmt.Sprintf("<%s.%s@%s>", env.ID, mailhdr.Token(8), cfg.Hostname)
		fmt.Fprintf(&prefix, "Message-ID: %s\r\n", sn.id)
	}
	if ok && !hasDate {
		fmt.Fprintf(&prefix, "Date: %s\r\n", now.Format(time.RFC1123Z))
	}
	if noHeader {
		prefix.WriteString("\r\n")
	}
	return io.MultiReader(&prefix, br), sn
}

// firstLineScan is how much of a relayed message is read ahead to see
// whether it starts with a header field: a first line's worth.
const firstLineScan = 1024

// idSniffer passes a message through and keeps its header, for the
// Message-ID of the log and the Received fields counted at its end.
type idSniffer struct {
	mailhdr.HeadKeeper
	id string // set when mailhop added the field itself
}

// errTooManyHops refuses a message that has been around too often: a loop.
// Refusing it at the end of DATA (as Postfix does) tells the client, where
// accepting it would mean a bounce to a sender that may be forged.
var errTooManyHops = smtpErr(554, smtp.EnhancedCode{5, 4, 6},
	fmt.Sprintf("Too many hops: mail loop (relayed %d times already)", mailhdr.MaxReceived))

func (s *idSniffer) Read(p []byte) (int, error) {
	n, err := s.HeadKeeper.Read(p)
	if err == io.EOF && countReceived(s.Head())+1 > mailhdr.MaxReceived {
		return n, errTooManyHops // at the end of the data, the whole head seen
	}
	return n, err
}

// countReceived counts the Received fields in the header block at the
// start of msg.
func countReceived(msg []byte) int {
	n := 0
	mailhdr.Fields(msg, func(name, _ []byte) bool {
		if mailhdr.Is(name, "received") {
			n++
		}
		return true
	})
	return n
}

// messageID returns the Message-ID field's value ("" when none was seen).
func (s *idSniffer) messageID() string {
	if s.id != "" {
		return s.id
	}
	return s.MessageID()
}

// scanHeader looks for Message-ID and Date fields in the header block at
// the start of msg (RFC 5322 §2.1: it ends at the first empty line). ok is
// false when the header's end was not seen in msg and msg is not the whole
// message.
func scanHeader(msg []byte, whole bool) (hasID, hasDate, ok bool) {
	end := bytes.Index(msg, []byte("\r\n\r\n"))
	switch {
	case bytes.HasPrefix(msg, []byte("\r\n")):
		return false, false, true // no header at all
	case end >= 0:
		msg = msg[:end+2]
	case !whole:
		return false, false, false
	}
	mailhdr.Fields(msg, func(name, _ []byte) bool {
		hasID = hasID || mailhdr.Is(name, "Message-ID")
		hasDate = hasDate || mailhdr.Is(name, "Date")
		return true
	})
	return hasID, hasDate, true
}

// receivedField builds the trace field of RFC 5321 §4.4:
//
//	Received: from HELO ([IP])
//		by HOSTNAME (mailhop) with ESMTPSA id QUEUEID
//		for <rcpt>
//		(version=TLS1.3 cipher=TLS_AES_128_GCM_SHA256);
//		Mon, 02 Jan 2006 15:04:05 -0700
//
// "with" follows RFC 3848 (S: TLS, A: authenticated), and RFC 6531 §3.7.3
// for a transaction with SMTPUTF8 (UTF8SMTP, UTF8SMTPS, UTF8SMTPA,
// UTF8SMTPSA). "for" is only given
// for a single recipient, so a message to many does not list them all.
// Each part is on its own folded line, under 78 columns for ordinary
// values.
func (ss *session) receivedField(hostname string, env *queue.Envelope, now time.Time) string {
	proto := "ESMTP"
	if ss.tls != nil {
		proto += "S"
	}
	if ss.user != "" {
		proto += "A"
	}
	if !ss.conn.ESMTP() && proto == "ESMTP" {
		proto = "SMTP" // HELO: RFC 3848 has names only for EHLO with TLS or AUTH
	}
	if env.SMTPUTF8 {
		proto = "UTF8SMTP" + strings.TrimPrefix(proto, "ESMTP")
	}
	lines := []string{
		fmt.Sprintf("Received: from %s (%s)", sanitizeHelo(ss.helo), addressLiteral(ss.ip)),
		fmt.Sprintf("by %s (mailhop) with %s id %s", hostname, proto, env.ID),
	}
	if len(env.Recipients) == 1 {
		lines = append(lines, "for <"+traceAddress(env.Recipients[0].Address)+">")
	}
	if ss.tls != nil {
		lines = append(lines, fmt.Sprintf("(version=%s cipher=%s)",
			tls13Name(ss.tls.Version), cipherName(ss.tls.CipherSuite)))
	}
	lines[len(lines)-1] += ";"
	lines = append(lines, now.Format(time.RFC1123Z))
	return strings.Join(lines, "\r\n\t") + "\r\n"
}

// traceAddress is addr for the Received field: a domain written in
// Unicode as A-labels when the local part is ASCII, so the field stays
// ASCII and the message can go to a next hop without SMTPUTF8 (delivery
// sends such addresses with A-labels there).
func traceAddress(addr string) string {
	if a, ok := dnsmx.ALabelAddress(addr); ok {
		return a
	}
	return addr
}

// addressLiteral writes ip as RFC 5321 §4.1.3 does: [192.0.2.1],
// [IPv6:2001:db8::1].
func addressLiteral(ip netip.Addr) string {
	if ip.Is6() {
		return "[IPv6:" + ip.String() + "]"
	}
	return "[" + ip.String() + "]"
}

// sanitizeHelo keeps the client's HELO name from breaking the header: only
// printable ASCII without spaces or parentheses, at most 255 octets.
func sanitizeHelo(h string) string {
	if h == "" {
		return "unknown"
	}
	var b strings.Builder
	for i := 0; i < len(h) && i < 255; i++ {
		c := h[i]
		if c <= ' ' || c >= 127 || c == '(' || c == ')' || c == '\\' || c == ';' {
			c = '?'
		}
		b.WriteByte(c)
	}
	return b.String()
}
