package outbound

import (
	"context"
	"errors"
	"io"
	"net"
	"strings"
	"sync"
	"time"

	"github.com/emersion/go-smtp"

	"github.com/mailhop/mailhop/dnsmx"
	"github.com/mailhop/mailhop/queue"
	"github.com/mailhop/mailhop/relay/mime7bit"
	"github.com/mailhop/mailhop/relay/smtperr"
)

// rcptResult is one recipient's outcome in one attempt.
type rcptResult struct {
	index   int             // into Envelope.Recipients
	state   queue.RcptState // Delivered, Pending or Failed
	reply   *smtperr.Error  // the reply (a 250 when delivered) or the failure
	remote  string          // the host that answered, "" when none did
	relayed bool            // delivered to a server without the DSN extension
	diag    *smtperr.Error  // when reply is ours (expiry): the remote reply before it, for Diagnostic-Code
	// broke is set when the connection failed after the server accepted
	// this recipient and before the final reply to the message: it is
	// pending, and the next address may take it now.
	broke *stageError
	// reported is set when its success report was queued before the
	// attempt's end, with its outcome (recordDelivered).
	reported bool
	// logged is set when its outcome was logged before the attempt's end
	// (recordDelivered).
	logged bool
	// tooMany is set when the server refused it for the number of
	// recipients in the transaction (see limitRefusal): it goes in a
	// further transaction, not to the next address.
	tooMany bool
}

// txn is one SMTP transaction for a domain group.
type txn struct {
	env         *queue.Envelope
	body        queue.Body
	messageID   string // the message's Message-ID, for the log
	rcpts       []int  // indices into env.Recipients
	tlsOptional bool   // the message says TLS-Required: No
	forms       *msgForms
	// progress, when set, records the delivered recipients among its
	// argument when further transactions of the attempt follow — on the
	// same connection, or at the next address (recordDelivered) — marking
	// them reported and logged.
	progress func(rs []rcptResult)
}

// ref names t's message in the log.
func (t *txn) ref() msgRef { return msgRef{queueID: t.env.ID, messageID: t.messageID} }

// msgRef names a message in the log lines about its delivery.
type msgRef struct{ queueID, messageID string }

// attrs returns the keys that name the message, its queue ID and its
// Message-ID ("" when it has none), followed by more: every line about a
// message carries both, so that grep of either shows its whole life.
func (m msgRef) attrs(more ...any) []any {
	return append([]any{"queue_id", m.queueID, "message_id", m.messageID}, more...)
}

// transact runs MAIL, RCPT and DATA on cn. It returns a result per
// recipient, or a *stageError when the connection failed before any
// recipient's fate was decided (the caller tries the next address). broken
// reports that cn must not be reused.
func (a *Agent) transact(ctx context.Context, cn *conn, t *txn, tm stageTimeouts) (res []rcptResult, broken bool, serr *stageError) {
	stop := context.AfterFunc(ctx, func() { cn.raw.Close() })
	defer func() {
		if !stop() {
			broken = true
		}
	}()
	c := cn.c
	if cn.used {
		// A server out of step (two replies to one command) would have
		// its extra reply taken for this transaction's: a new
		// connection instead (Postfix checks a cached session with RSET).
		if data, closed := cn.unsolicited(); data || closed {
			if data {
				a.log.Info("the server sent data no command asked for; connection not reused", t.ref().attrs("mx", cn.host)...)
			}
			return nil, true, &stageError{stage: "mail", err: smtperr.New(0, "4.5.0", "%s sent data no command asked for, or closed, between transactions", cn.host)}
		}
	}
	// carried: the connection ran a transaction before this one (reused
	// from the pool, or an earlier one of this attempt).
	carried := cn.used
	cn.used = true
	c.CommandTimeout = tm.command
	env := t.env
	size := t.body.Size()
	// res holds every recipient's outcome; send are the positions in res
	// (and t.rcpts) of those the transaction is for.
	res = make([]rcptResult, len(t.rcpts))
	send := make([]int, 0, len(t.rcpts))
	for i, idx := range t.rcpts {
		res[i] = rcptResult{index: idx, remote: cn.host}
		send = append(send, i)
	}
	all := func(st queue.RcptState, e *smtperr.Error) []rcptResult {
		for _, i := range send {
			res[i].state, res[i].reply = st, e
		}
		return res
	}
	utf8 := env.SMTPUTF8
	from := env.From
	addrs := make([]string, len(t.rcpts)) // as sent, by position in res
	for i, idx := range t.rcpts {
		addrs[i] = env.Recipients[idx].Address
	}
	if utf8 && !cn.utf8 {
		// RFC 6531 §3.2, §3.4: SMTPUTF8 is needed only for a non-ASCII
		// local part or header; a message that has none goes without it,
		// its domains as A-labels (Postfix's SMTPUTF8_README). There is
		// no downgrade otherwise.
		needs := func(what string) *smtperr.Error {
			return smtperr.New(0, "5.6.7", "message needs SMTPUTF8 (%s), which %s does not support", what, cn.host)
		}
		var ok bool
		if from, ok = dnsmx.ALabelAddress(env.From); !ok {
			return all(queue.Failed, needs("non-ASCII sender address")), false, nil
		}
		if !t.forms.headerASCII() {
			return all(queue.Failed, needs("non-ASCII header")), false, nil
		}
		utf8 = false
		send = send[:0]
		for i := range t.rcpts {
			if addrs[i], ok = dnsmx.ALabelAddress(addrs[i]); ok {
				send = append(send, i)
			} else {
				res[i].state, res[i].reply = queue.Failed, needs("non-ASCII recipient address")
			}
		}
		if len(send) == 0 {
			return res, false, nil
		}
	}
	var seven *mime7bit.Conversion // the 7-bit form sent instead of the stored bytes
	if !cn.eightBit {
		// RFC 6152 §3: a server without 8BITMIME gets 7-bit data only.
		var err error
		seven, err = t.forms.sevenBit()
		var ue *mime7bit.UnconvertibleError
		switch {
		case errors.As(err, &ue):
			a.log.Info("message cannot be converted to 7bit", t.ref().attrs("mx", cn.host, "err", ue.Error())...)
			return all(queue.Failed, smtperr.New(0, "5.6.3", "message needs 8BITMIME, which %s does not support (cannot convert to 7bit: %s)", cn.host, ue.Error())), false, nil
		case err != nil:
			return all(queue.Pending, smtperr.New(0, "4.3.0", "reading the message: %v", err)), false, nil
		case seven != nil:
			a.log.Info("message converted to 7bit", t.ref().attrs("mx", cn.host,
				"parts_encoded", seven.Encoded(), "size", size, "converted_size", seven.Size())...)
			size = seven.Size()
		}
	}
	if cn.maxSize > 0 && size > cn.maxSize {
		// RFC 1870 §6.1: the server said it will not take it.
		return all(queue.Failed, smtperr.New(0, "5.3.4", "message of %d bytes exceeds the %d-byte limit of %s", size, cn.maxSize, cn.host)), false, nil
	}

	// REQUIRETLS goes on only when the plan checked that the server
	// offers it over verified TLS (RFC 8689 §4.2.1).
	opts := &smtp.MailOptions{Size: size, UTF8: utf8, EnvelopeID: env.EnvID, RequireTLS: env.RequireTLS, Body: smtp.Body7Bit}
	if cn.eightBit {
		// BODY=8BITMIME for mail declared 8-bit or holding 8-bit octets
		// (a client may send them without BODY); BODY=7BIT otherwise, as
		// Postfix does (RFC 6152 §2). Without 8BITMIME no BODY goes.
		eight, err := t.forms.eightBit(env)
		if err != nil {
			return all(queue.Pending, smtperr.New(0, "4.3.0", "reading the message: %v", err)), false, nil
		}
		if eight {
			opts.Body = smtp.Body8BitMIME
		}
	}
	switch strings.ToUpper(env.Ret) {
	case "FULL":
		opts.Return = smtp.DSNReturnFull
	case "HDRS":
		opts.Return = smtp.DSNReturnHeaders
	}
	to := make([]string, len(send))
	ropts := make([]*smtp.RcptOptions, len(send))
	for j, i := range send {
		to[j], ropts[j] = addrs[i], rcptOptions(&env.Recipients[t.rcpts[i]])
	}
	// RSET (when the last transaction on this connection did not get as
	// far as the reply to its end of data), MAIL, every RCPT and DATA go
	// out in one write when the server offers PIPELINING (RFC 2920).
	c.CommandTimeout = max(tm.command, tm.dataInit)
	rset := cn.inTxn
	cn.inTxn = true
	cn.txns++
	rep, w, err := c.StartTransaction(rset, from, opts, to, ropts)
	c.CommandTimeout = tm.command
	// midway: some or every RCPT reply came, then the connection failed
	// (or the server said 421) before the rest or instead of a 354 to DATA:
	// the replies that came stand, the recipients without one go on to the
	// next address with the accepted.
	midway := err != nil && rep != nil && rep.RcptRead > 0
	if err != nil && !midway {
		// The network failed, or the server said 421 and closed: nothing
		// was decided, the caller tries the next address. The stage is
		// the command whose reply did not come (with PIPELINING they all
		// went out at once).
		stage := "mail"
		if rep != nil && rep.Awaiting != "" {
			stage = strings.ToLower(rep.Awaiting)
		}
		return nil, true, stageErr(stage, err)
	}
	if rep.Reset != nil {
		return nil, true, stageErr("rset", rep.Reset)
	}
	if se, ok := replyError(rep.Mail); ok {
		if carried && se.Temporary() {
			// A server that takes a few transactions per session refuses
			// the next at MAIL ("451 4.5.3 No more transactions allowed",
			// Oracle Messaging Server; KumoMTA's max_messages_per_connection):
			// not this message's answer, and the session is spent. Nothing
			// is decided: a connection from the pool is dialled afresh, the
			// recipients of a later transaction of the attempt go on as when
			// the connection ends between transactions.
			cn.spent = true
			return nil, true, &stageError{stage: "mail", err: se}
		}
		return all(stateOf(se), se), midway, nil
	}
	// A server whose recipient limit is reached refuses every recipient
	// after it (RFC 5321 §4.5.3.1.10): a refusal followed by a recipient it
	// accepted is not for their number, whatever its code says.
	firstTaken, lastTaken := -1, -1 // in send: the first and last recipients the server accepted
	for j := range send {
		if midway && j >= rep.RcptRead {
			break
		}
		if _, ok := replyError(rep.Rcpt[j]); !ok {
			if firstTaken < 0 {
				firstTaken = j
			}
			lastTaken = j
		}
	}
	var accepted []int // positions in res
	for j, i := range send {
		if midway && j >= rep.RcptRead {
			accepted = append(accepted, i) // no reply came: goes on with the accepted
			continue
		}
		if se, ok := replyError(rep.Rcpt[j]); ok {
			se, res[i].tooMany = limitRefusal(se, j > lastTaken, firstTaken >= 0 && firstTaken < j)
			res[i].state, res[i].reply = stateOf(se), se
			continue
		}
		accepted = append(accepted, i)
	}
	if len(accepted) == 0 {
		return res, midway, nil
	}
	setAccepted := func(st queue.RcptState, e *smtperr.Error) {
		for _, i := range accepted {
			res[i].state, res[i].reply = st, e
		}
	}
	// From here on a dropped connection leaves the accepted recipients
	// Pending (broke): before the end of the data the server cannot have
	// the message; after it, it may (RFC 5321 §6.1 prefers a duplicate to
	// a loss).
	cut := func(stage string, err error) []rcptResult {
		se := stageErr(stage, err) // a 421 keeps its reply
		setAccepted(queue.Pending, se.err)
		for _, i := range accepted {
			res[i].broke = se
		}
		return res
	}
	if midway {
		// The refusals stand; the accepted go on to the next address.
		return cut(strings.ToLower(rep.Awaiting), err), true, nil
	}
	if rep.Data != nil {
		if se, ok := replyError(rep.Data); ok {
			setAccepted(stateOf(se), se)
			// After a protocol error (a reply that does not fit DATA) the
			// session is not trusted for more mail.
			return res, smtp.IsProtocolError(rep.Data), nil
		}
		return cut("data", rep.Data), true, nil
	}
	// data_timeout bounds each write, not the whole body (RFC 5321
	// §4.5.3.2.5): a slow link that keeps moving is not cut off.
	dw := &deadlineWriter{w: w, conn: cn.raw, d: tm.data}
	if seven != nil {
		_, err = seven.WriteTo(dw)
	} else {
		buf := copyBufs.Get().(*[]byte)
		_, err = io.CopyBuffer(dw, io.NewSectionReader(t.body, 0, size), *buf)
		copyBufs.Put(buf)
	}
	if err != nil {
		// The server may have refused the message early and closed (a 552
		// in the middle of a big body): its reply is the outcome.
		var ne net.Error
		if !(errors.As(err, &ne) && ne.Timeout()) {
			if early := c.EarlyReply(2 * time.Second); early != nil {
				se := smtperr.FromSMTP(early)
				setAccepted(stateOf(se), se)
				return res, true, nil
			}
		}
		return cut("data transfer", err), true, nil
	}
	c.SubmissionTimeout = tm.dataEnd
	resp, err := w.CloseWithResponse()
	if _, ok := replyError(err); ok || err == nil {
		cn.inTxn = false // any reply to the end of data ends the transaction
	}
	if err != nil {
		if se, ok := replyError(err); ok {
			if se.Code == 421 {
				// The server is closing and said it does not have the
				// message: the next address may take it now, as after a
				// 421 to any command before.
				return cut("end of data", err), true, nil
			}
			setAccepted(stateOf(se), se)
			return res, false, nil
		}
		return cut("end of data", err), true, nil
	}
	enh, text := smtperr.ParseReply(strings.ReplaceAll(resp.StatusText, "\n", " "))
	ok := &smtperr.Error{Code: 250, Enhanced: enh, Msg: text}
	setAccepted(queue.Delivered, ok)
	for _, i := range accepted {
		res[i].relayed = !cn.dsn
	}
	return res, false, nil
}

// deadlineWriter gives every write to w (and so the flushes of w's buffer to
// conn that it causes) d from now to go through.
type deadlineWriter struct {
	w    io.Writer
	conn net.Conn
	d    time.Duration
}

func (dw *deadlineWriter) Write(p []byte) (int, error) {
	dw.conn.SetDeadline(time.Now().Add(dw.d))
	return dw.w.Write(p)
}

// copyBufs are the buffers bodies are copied to the connection through
// (io.Copy would allocate 32 KiB for every message).
var copyBufs = sync.Pool{New: func() any { b := make([]byte, 32<<10); return &b }}

// replyError reports whether err is a reply from the server (as opposed to
// a network or local error).
func replyError(err error) (*smtperr.Error, bool) {
	var se *smtp.SMTPError
	if errors.As(err, &se) {
		return smtperr.FromSMTP(se), true
	}
	return nil, false
}

// limitRefusal reads a server's refusal of a RCPT: it returns the reply
// the recipient keeps, and whether it refuses the recipient for the number
// of recipients in the transaction (tooManyRecipients), so that it goes in
// a further transaction. last: no recipient after it in the transaction was
// accepted; a refusal followed by an accepted recipient is that
// recipient's own, whatever its code (a bare "452 Mailbox full" from a
// server without enhanced status codes): taken for a limit, it was sent
// again first in every further transaction, each one recipient smaller,
// until they carried only such recipients and the rest of the message
// waited for the next attempt.
//
// RFC 5321 §4.5.3.1.10: 552 to RCPT is how RFC 821 servers say "too many
// recipients"; as the last refusals of a transaction, without an enhanced
// status or with X.5.3, it is taken as 452 so the rest go in a further
// transaction. A 552 that says otherwise (5.2.2 mailbox full, 5.3.4), or
// that came before an accepted recipient, is what it says, as Postfix
// takes every 552 (it keeps the RFC's mapping out: "too much mail data"
// would be retried).
//
// afterAccepted: the server accepted a recipient before this one in the
// transaction. A bare 452 or 552 (no enhanced status to say which) to a
// transaction's first recipients is not a limit on their number (a limit
// of none is no limit): it is that recipient's own, so a "552 Mailbox
// full" to a one-recipient message bounces, as in Postfix, instead of
// waiting, a limit each time, until the message expires.
func limitRefusal(se *smtperr.Error, last, afterAccepted bool) (*smtperr.Error, bool) {
	if !last || se.Enhanced == "" && !afterAccepted {
		return se, false
	}
	if se.Code == 552 && (se.Enhanced == "" || se.Enhanced == "5.5.3") {
		t4 := *se
		t4.Code = 452
		if t4.Enhanced != "" {
			t4.Enhanced = "4.5.3"
		}
		se = &t4
	}
	return se, tooManyRecipients(se)
}

// tooManyRecipients reports whether e, a server's reply to RCPT, refuses
// the recipient for the number of recipients in the transaction (RFC 5321
// §4.5.3.1.10), so that it goes in a further transaction: a 4xx reply with
// the enhanced status X.5.3 (RFC 3463: too many recipients), or a 452
// without an enhanced status (the meaning RFC 5321 gives 452 to RCPT; 552
// of that meaning is taken as 452 already). A 452 with another enhanced
// status — 4.2.2 mailbox full, 4.3.1 insufficient system storage — is an
// ordinary deferral of that recipient: it costs no further transaction, does
// not lower the next one's size, and, like any other 4xx, goes to the next
// address of the attempt. (Postfix's SMTP client gives 452 no meaning of its
// own: a 452 is one recipient's soft error, and its recipient limit is
// delivery requests of at most smtp_destination_recipient_limit.) Only a
// transaction's last refusals are read so (limitRefusal), and never a reply
// to MAIL: a bare 452 there is insufficient system storage (RFC 5321
// §4.3.2), a deferral of the transaction like any 4xx to MAIL.
func tooManyRecipients(e *smtperr.Error) bool {
	if e == nil || e.Code < 400 || e.Code >= 500 {
		return false
	}
	if e.Enhanced != "" {
		return e.Enhanced == "4.5.3"
	}
	return e.Code == 452
}

// stateOf maps a server's reply to a recipient state.
func stateOf(e *smtperr.Error) queue.RcptState {
	switch {
	case e.Code >= 200 && e.Code < 300:
		return queue.Delivered
	case e.Temporary():
		return queue.Pending
	}
	return queue.Failed
}

// rcptOptions carries the recipient's DSN parameters (RFC 3461 §4); go-smtp
// only sends them when the server offers DSN.
func rcptOptions(r *queue.Recipient) *smtp.RcptOptions {
	o := &smtp.RcptOptions{}
	n := r.Notify
	switch {
	case n == 0:
	case n&queue.NotifyNever != 0:
		o.Notify = []smtp.DSNNotify{smtp.DSNNotifyNever}
	default:
		if n&queue.NotifySuccess != 0 {
			o.Notify = append(o.Notify, smtp.DSNNotifySuccess)
		}
		if n&queue.NotifyFailure != 0 {
			o.Notify = append(o.Notify, smtp.DSNNotifyFailure)
		}
		if n&queue.NotifyDelay != 0 {
			o.Notify = append(o.Notify, smtp.DSNNotifyDelayed)
		}
	}
	if typ, addr, ok := strings.Cut(r.ORCPT, ";"); ok && addr != "" {
		switch strings.ToLower(strings.TrimSpace(typ)) {
		case "rfc822":
			if mime7bit.IsASCII([]byte(addr)) { // xtext carries a space too
				o.OriginalRecipientType, o.OriginalRecipient = smtp.DSNAddressTypeRFC822, addr
			}
		case "utf-8":
			o.OriginalRecipientType, o.OriginalRecipient = smtp.DSNAddressTypeUTF8, addr
		}
	}
	return o
}
