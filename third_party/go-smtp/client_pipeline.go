package smtp

// mailhop patch: PIPELINING (RFC 2920) for the client, and a dot-stuffing
// writer that copies runs of bytes instead of writing byte by byte.

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net/textproto"
	"strings"
	"sync"
	"time"
)

// TransactionReplies holds the replies to the commands StartTransaction
// sent. Each is nil for a 2xx (or 354) reply, an *SMTPError otherwise.
type TransactionReplies struct {
	Reset error   // RSET, when asked for
	Mail  error   // MAIL FROM
	Rcpt  []error // RCPT TO, one per recipient, in order
	Data  error   // DATA; nil means the returned DataCommand takes the body
	// Awaiting names the command ("RSET", "MAIL", "RCPT" or "DATA") whose
	// reply was being read when StartTransaction returned an error after
	// sending: the stage a timeout or a dropped connection happened at.
	Awaiting string
	// RcptRead is how many RCPT replies came (Rcpt[:RcptRead]) before an
	// error: their recipients' replies stand, a 421 not among them.
	RcptRead int
}

// StartTransaction begins a mail transaction: RSET (when reset is true),
// MAIL FROM, one RCPT TO per recipient and DATA. Replies are read by their
// first digit (RFC 5321 §4.2; mailhop patch): any 2xx accepts RSET, MAIL and
// RCPT, any 3xx DATA, as a client MUST read codes RFC 5321 does not list;
// a positive reply of the other kind (250 to DATA) is a protocol error. When the server offers
// PIPELINING they go out in one write and their replies are read in order
// (RFC 2920 §3.1); otherwise one at a time, stopping after a failed MAIL or
// when no recipient was accepted. When the replies allow, the returned
// DataCommand takes the body. The error is for failures other than replies
// (network, protocol); replies are in TransactionReplies.
func (c *Client) StartTransaction(reset bool, from string, mopts *MailOptions, rcpts []string, ropts []*RcptOptions) (*TransactionReplies, *DataCommand, error) {
	if err := c.hello(); err != nil {
		return nil, nil, err
	}
	mail, err := c.mailCmd(from, mopts)
	if err != nil {
		return nil, nil, err
	}
	lines := make([]string, 0, len(rcpts)+3)
	if reset {
		lines = append(lines, "RSET")
	}
	lines = append(lines, mail)
	for i, to := range rcpts {
		var o *RcptOptions
		if i < len(ropts) {
			o = ropts[i]
		}
		line, err := c.rcptCmd(to, o)
		if err != nil {
			return nil, nil, err
		}
		lines = append(lines, line)
	}
	lines = append(lines, "DATA")

	rep := &TransactionReplies{Rcpt: make([]error, len(rcpts))}
	c.rcpts = nil
	if _, ok := c.ext["PIPELINING"]; !ok {
		return c.stepTransaction(reset, lines, rcpts, rep)
	}

	if c.text.R.Buffered() > 0 {
		return rep, nil, errOutOfStep
	}
	c.conn.SetDeadline(time.Now().Add(c.CommandTimeout))
	defer c.conn.SetDeadline(time.Time{})
	for _, l := range lines {
		c.text.W.WriteString(l)
		c.text.W.WriteString("\r\n")
	}
	if err := c.text.W.Flush(); err != nil {
		return nil, nil, err
	}
	read := func(expect int, verb string) (error, error) {
		rep.Awaiting = verb
		_, _, err := c.readResponse(expect)
		var se *SMTPError
		if err != nil && !errors.As(err, &se) {
			return nil, err // not a reply
		}
		if se != nil && se.Code == 421 {
			return se, se // the server is closing: no more replies
		}
		return err, nil
	}
	if reset {
		if rep.Reset, err = read(2, "RSET"); err != nil {
			return rep, nil, err
		}
	}
	if rep.Mail, err = read(2, "MAIL"); err != nil {
		return rep, nil, err
	}
	accepted := 0
	for i, to := range rcpts {
		if rep.Rcpt[i], err = read(2, "RCPT"); err != nil {
			return rep, nil, err
		}
		rep.RcptRead = i + 1
		if rep.Rcpt[i] == nil {
			c.rcpts = append(c.rcpts, to)
			accepted++
		}
	}
	if rep.Data, err = read(3, "DATA"); err != nil {
		return rep, nil, err
	}
	if c.text.R.Buffered() > 0 {
		// More replies than commands: which reply was whose is not
		// known, so none stands.
		rep.RcptRead = 0
		return rep, nil, errOutOfStep
	}
	if rep.Data != nil {
		return rep, nil, nil
	}
	if rep.Mail != nil || accepted == 0 {
		// A server that says 354 with no valid recipient (RFC 2920 §3.1
		// forbids it) gets an empty message ended at once.
		w := newDotWriter(c.text.W)
		if err := w.Close(); err != nil {
			return rep, nil, err
		}
		_, _, err := c.readResponse(2)
		rep.Data = fmt.Errorf("smtp: DATA accepted without recipients: %w", errOrNoRcpt(err))
		return rep, nil, nil
	}
	return rep, &DataCommand{client: c, wc: newDotWriter(c.text.W)}, nil
}

// errOutOfStep: the server sent more than the replies to the commands so
// far (two replies to one command), so the replies read next would not be
// those of the commands sent; the transaction is not trusted (mailhop
// patch). Checked before each command and after a pipelined group.
var errOutOfStep = textproto.ProtocolError("server out of step: it sent more replies than commands")

func errOrNoRcpt(err error) error {
	if err != nil {
		return err
	}
	return errors.New("no recipient")
}

// stepTransaction is StartTransaction for a server without PIPELINING.
func (c *Client) stepTransaction(reset bool, lines, rcpts []string, rep *TransactionReplies) (*TransactionReplies, *DataCommand, error) {
	cmd := func(expect int, line string) (error, error) {
		rep.Awaiting, _, _ = strings.Cut(line, " ")
		if c.text.R.Buffered() > 0 {
			return nil, errOutOfStep
		}
		_, _, err := c.cmd(expect, "%s", line)
		var se *SMTPError
		if err != nil && !errors.As(err, &se) {
			return nil, err
		}
		if se != nil && se.Code == 421 {
			return se, se
		}
		return err, nil
	}
	var err error
	if reset {
		if rep.Reset, err = cmd(2, lines[0]); err != nil {
			return rep, nil, err
		}
		lines = lines[1:]
	}
	if rep.Mail, err = cmd(2, lines[0]); err != nil || rep.Mail != nil {
		return rep, nil, err
	}
	for i, to := range rcpts {
		if rep.Rcpt[i], err = cmd(2, lines[1+i]); err != nil {
			return rep, nil, err
		}
		rep.RcptRead = i + 1
		if rep.Rcpt[i] == nil {
			c.rcpts = append(c.rcpts, to)
		}
	}
	if len(c.rcpts) == 0 {
		rep.Data = errors.New("smtp: no recipient accepted")
		return rep, nil, nil
	}
	if rep.Data, err = cmd(3, "DATA"); err != nil || rep.Data != nil {
		return rep, nil, err
	}
	return rep, &DataCommand{client: c, wc: newDotWriter(c.text.W)}, nil
}

// dotWriter dot-stuffs a message (RFC 5321 §4.5.2) and makes every line
// end in CRLF: a bare LF or a bare CR becomes CRLF, so no bare line ending
// ever reaches the next server. Close writes the end marker.
type dotWriter struct {
	w         *bufio.Writer // a pooled buffer over under
	under     *bufio.Writer // the connection's writer
	lineStart bool          // the next byte starts a line
	cr        bool          // the last byte was a CR not yet known to be part of CRLF
	closed    bool
}

func newDotWriter(under *bufio.Writer) *dotWriter {
	w := bodyBufs.Get().(*bufio.Writer)
	w.Reset(under)
	return &dotWriter{w: w, under: under, lineStart: true}
}

func (d *dotWriter) Write(b []byte) (int, error) {
	if d.closed {
		return 0, errors.New("smtp: write after close")
	}
	for i := 0; i < len(b); {
		if d.cr {
			d.cr = false
			d.w.WriteString("\r\n")
			d.lineStart = true
			if b[i] == '\n' {
				i++
				continue
			}
		}
		if d.lineStart && b[i] == '.' {
			d.w.WriteByte('.')
		}
		d.lineStart = false
		j := indexCRLF(b[i:])
		if j < 0 {
			d.w.Write(b[i:])
			break
		}
		d.w.Write(b[i : i+j])
		if b[i+j] == '\n' {
			d.w.WriteString("\r\n")
			d.lineStart = true
		} else {
			d.cr = true
		}
		i += j + 1
	}
	if err := writerErr(d.w); err != nil {
		return 0, err
	}
	return len(b), nil
}

// writerErr returns the sticky error of a bufio.Writer, if any.
func writerErr(w *bufio.Writer) error {
	_, err := w.Write(nil)
	return err
}

func (d *dotWriter) Close() error {
	if d.closed {
		return nil
	}
	d.closed = true
	if d.cr || !d.lineStart {
		d.w.WriteString("\r\n")
	}
	d.w.WriteString(".\r\n")
	err := d.w.Flush()
	if err == nil {
		err = d.under.Flush()
	}
	d.w.Reset(nil)
	bodyBufs.Put(d.w)
	return err
}

var _ io.WriteCloser = (*dotWriter)(nil)

// bodyBufs are the 32 KiB buffers a dotWriter collects a body in, so that
// a typical message goes out in one write system call.
var bodyBufs = sync.Pool{New: func() any { return bufio.NewWriterSize(nil, 32<<10) }}
