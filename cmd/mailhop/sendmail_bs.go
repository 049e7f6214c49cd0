package main

// sendmail -bs: SMTP on stdin and stdout (RFC 5321 without the network), as
// Postfix's and Sendmail's -bs speak it. Symfony Mailer's sendmail transport
// and Laravel's default sendmail path ("/usr/sbin/sendmail -bs -i") run it.
// Each message goes the way of a message on stdin: its header is completed
// (rewriteHeaders) and it is handed to the relay or the pickup directory.

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"

	"github.com/mailhop/mailhop/relay/admin"
	"github.com/mailhop/mailhop/relay/msglimit"
)

// maxBSLine bounds a command line (RFC 5321 §4.5.3.1.4: 512; AUTH is not
// offered, so no longer line is needed).
const maxBSLine = 2048

// smtpOnStdio runs the SMTP dialog until QUIT or the end of input.
func smtpOnStdio(cfg *clientConfig, o *sendmailOpts, login string, uid int, stdin io.Reader, stdout io.Writer) error {
	if stdin == nil {
		return sendmailFail(exNoInput, "no input for -bs")
	}
	br := bufio.NewReaderSize(stdin, 64<<10)
	w := bufio.NewWriter(stdout)
	reply := func(format string, args ...any) error {
		fmt.Fprintf(w, format+"\r\n", args...)
		if next, _ := br.Peek(br.Buffered()); bytes.IndexByte(next, '\n') >= 0 {
			return nil // a pipelined command waits: the replies go out together (RFC 2920)
		}
		return w.Flush()
	}
	if err := reply("220 %s ESMTP mailhop (sendmail -bs)", cfg.Hostname); err != nil {
		return err
	}
	var (
		open   bool // MAIL was accepted
		sender string
		rcpts  []string
	)
	for {
		line, err := readBSLine(br)
		if err != nil {
			w.Flush()
			if errors.Is(err, io.EOF) {
				return nil
			}
			return sendmailFail(exNoInput, "reading SMTP commands: %v", err)
		}
		verb, arg, _ := strings.Cut(line, " ")
		switch strings.ToUpper(verb) {
		case "EHLO":
			open, rcpts = false, nil
			err = reply("250-%s\r\n250-PIPELINING\r\n250-8BITMIME\r\n250-SIZE %d\r\n250 ENHANCEDSTATUSCODES", cfg.Hostname, cfg.Policy.MaxMessageSize)
		case "HELO":
			open, rcpts = false, nil
			err = reply("250 %s", cfg.Hostname)
		case "MAIL":
			addr, params, ok := bsPath(arg, "FROM:")
			switch {
			case open:
				err = reply("503 5.5.1 Error: nested MAIL command")
			case !ok:
				err = reply("501 5.5.4 Syntax: MAIL FROM:<address>")
			case bsParamsReply(params, true, cfg.Policy.MaxMessageSize) != "":
				err = reply("%s", bsParamsReply(params, true, cfg.Policy.MaxMessageSize))
			default:
				if addr != "" {
					addr = qualify(addr, cfg.Hostname)
				}
				if addr != "" && admin.CheckEnvelope(&admin.InjectEnvelope{From: addr, Recipients: []string{addr}}) != nil {
					err = reply("501 5.1.7 Bad sender address syntax")
					break
				}
				open, sender, rcpts = true, addr, nil
				err = reply("250 2.1.0 Ok")
			}
		case "RCPT":
			addr, params, ok := bsPath(arg, "TO:")
			switch {
			case !open:
				err = reply("503 5.5.1 Error: need MAIL command")
			case !ok || addr == "":
				err = reply("501 5.5.4 Syntax: RCPT TO:<address>")
			case bsParamsReply(params, false, 0) != "":
				err = reply("%s", bsParamsReply(params, false, 0))
			default:
				addr = qualify(addr, cfg.Hostname)
				if admin.CheckEnvelope(&admin.InjectEnvelope{Recipients: []string{addr}}) != nil {
					err = reply("501 5.1.3 Bad recipient address syntax")
					break
				}
				rcpts = append(rcpts, addr)
				err = reply("250 2.1.5 Ok")
			}
		case "DATA":
			switch {
			case !open:
				err = reply("503 5.5.1 Error: need MAIL command")
			case len(rcpts) == 0:
				err = reply("554 5.5.1 Error: no valid recipients")
			default:
				if err = reply("354 End data with <CR><LF>.<CR><LF>"); err != nil {
					break
				}
				msg, rerr := readBSData(br, cfg.Policy.MaxMessageSize)
				if rerr != nil && !errors.As(rerr, new(*sendmailErr)) {
					return sendmailFail(exNoInput, "reading the message: %v", rerr)
				}
				mo := *o
				mo.extract, mo.rcpts = false, rcpts
				id := ""
				if rerr == nil {
					id, rerr = submit(cfg, &mo, login, uid, sender, msg)
				}
				open, rcpts = false, nil
				err = reply("%s", bsResult(id, rerr))
			}
		case "RSET":
			open, rcpts = false, nil
			err = reply("250 2.0.0 Ok")
		case "NOOP":
			err = reply("250 2.0.0 Ok")
		case "VRFY":
			err = reply("252 2.0.0 Cannot VRFY user, but will accept message")
		case "QUIT":
			reply("221 2.0.0 Bye")
			return w.Flush()
		default:
			err = reply("502 5.5.2 Error: command not recognized")
		}
		if err != nil {
			return sendmailFail(exIOErr, "writing SMTP replies: %v", err)
		}
	}
}

// bsResult is the reply to the end of data: the outcome of submit.
func bsResult(id string, err error) string {
	var se *sendmailErr
	if err == nil {
		return "250 2.0.0 Ok: " + id
	}
	if !errors.As(err, &se) {
		se = &sendmailErr{code: exSoftware, msg: err.Error()}
	}
	msg := strings.ReplaceAll(se.msg, "\n", " ")
	switch se.code {
	case exDataErr:
		// The replies SMTP gives for the same limits.
		switch {
		case strings.Contains(msg, msglimit.KeyMaxMessageSize), strings.Contains(msg, msglimit.KeyMaxHeaderSize):
			return "552 5.3.4 " + msg
		case strings.Contains(msg, msglimit.KeyMaxLineLength):
			return "500 5.5.2 " + msg
		}
		return "554 5.6.0 " + msg
	case exNoPerm:
		return "554 5.7.1 " + msg
	}
	return "451 4.3.0 " + msg
}

// bsPath reads "FROM:<addr> params" (or TO:): the address without its
// brackets, and the parameters after it. The path ends at the first '>'
// outside a quoted local part ("a>b"@example.net); a parameter is
// separated from it by a space.
func bsPath(arg, keyword string) (addr, params string, ok bool) {
	if len(arg) < len(keyword) || !strings.EqualFold(arg[:len(keyword)], keyword) {
		return "", "", false
	}
	arg = strings.TrimSpace(arg[len(keyword):])
	if strings.HasPrefix(arg, "<") {
		end, quoted := -1, false
		for i := 1; i < len(arg) && end < 0; i++ {
			switch {
			case arg[i] == '\\' && quoted:
				i++ // a quoted pair
			case arg[i] == '"':
				quoted = !quoted
			case arg[i] == '>' && !quoted:
				end = i
			}
		}
		if end < 0 || end+1 < len(arg) && arg[end+1] != ' ' {
			return "", "", false
		}
		return arg[1:end], arg[end+1:], true
	}
	addr, params, _ = strings.Cut(arg, " ")
	return addr, params, addr != ""
}

// bsParamsReply checks the parameters of MAIL (mail) or RCPT and returns
// the reply that refuses them, or "" when they are fine. -bs offers SIZE
// and 8BITMIME only; any other parameter gets 555 (RFC 5321 §4.1.1.11)
// rather than being dropped unseen (a NOTIFY=NEVER would then bounce).
func bsParamsReply(params string, mail bool, max int64) string {
	for _, p := range strings.Fields(params) {
		k, v, _ := strings.Cut(p, "=")
		switch {
		case mail && strings.EqualFold(k, "SIZE"):
			n, err := strconv.ParseInt(v, 10, 64)
			if err != nil || n < 0 {
				return "501 5.5.4 Bad SIZE parameter"
			}
			if max > 0 && n > max {
				return "552 5.3.4 Message size exceeds fixed limit"
			}
		case mail && strings.EqualFold(k, "BODY") && (strings.EqualFold(v, "7BIT") || strings.EqualFold(v, "8BITMIME")):
		default:
			return "555 5.5.4 Unsupported option: " + p
		}
	}
	return ""
}

// readBSLine reads one command line, without its line end (CRLF or LF).
func readBSLine(br *bufio.Reader) (string, error) {
	line, err := br.ReadSlice('\n')
	if err == bufio.ErrBufferFull || len(line) > maxBSLine {
		for err == bufio.ErrBufferFull {
			_, err = br.ReadSlice('\n')
		}
		if err != nil {
			return "", err
		}
		return "", nil // an empty command: 502
	}
	if err != nil {
		return "", err
	}
	return strings.TrimRight(string(line), "\r\n"), nil
}

// readBSData reads the message up to the line ".", removing the dot that
// stuffs lines beginning with one (RFC 5321 §4.5.2). Over max octets it
// reads on to the end and returns the size refusal.
func readBSData(br *bufio.Reader, max int64) ([]byte, error) {
	var buf bytes.Buffer
	bol, over := true, false
	for {
		line, err := br.ReadSlice('\n')
		if err != nil && err != bufio.ErrBufferFull {
			return nil, err
		}
		if bol && (string(line) == ".\r\n" || string(line) == ".\n") {
			break
		}
		if bol && len(line) > 1 && line[0] == '.' {
			line = line[1:]
		}
		bol = err == nil
		if !over {
			buf.Write(line)
			over = int64(buf.Len()) > max
		}
	}
	if over {
		return nil, tooLarge(max)
	}
	return buf.Bytes(), nil
}
