package sendmail

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

	"github.com/emersion/go-smtp"

	"github.com/mailhop/mailhop/queue"
	"github.com/mailhop/mailhop/relay/admin"
	"github.com/mailhop/mailhop/relay/msglimit"
)

// maxBSLine bounds a command line (RFC 5321 §4.5.3.1.4: 512; AUTH is not
// offered, so no longer line is needed).
const maxBSLine = 2048

// smtpOnStdio runs the SMTP dialog until QUIT or the end of input.
func smtpOnStdio(cfg *Config, o *Options, login string, uid int, stdin io.Reader, stdout io.Writer) error {
	if stdin == nil {
		return Errorf(exNoInput, "no input for -bs")
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
		mail   bsParams // of the MAIL command
		rcpts  []string
		dsns   []rcptDSN // NOTIFY and ORCPT of each of rcpts
	)
	for {
		line, err := readBSLine(br)
		if err != nil {
			w.Flush()
			if errors.Is(err, io.EOF) {
				return nil
			}
			return Errorf(exNoInput, "reading SMTP commands: %v", err)
		}
		verb, arg, _ := strings.Cut(line, " ")
		switch strings.ToUpper(verb) {
		case "EHLO":
			open, rcpts = false, nil
			err = reply("250-%s\r\n250-PIPELINING\r\n250-8BITMIME\r\n250-SIZE %d\r\n250-DSN\r\n250-SMTPUTF8\r\n250 ENHANCEDSTATUSCODES",
				cfg.Hostname, cfg.Limits.MaxMessageSize)
		case "HELO":
			open, rcpts = false, nil
			err = reply("250 %s", cfg.Hostname)
		case "MAIL":
			addr, params, ok := bsPath(arg, "FROM:")
			p, refusal := parseBSParams(params, true, cfg.Limits.MaxMessageSize)
			switch {
			case open:
				err = reply("503 5.5.1 Error: nested MAIL command")
			case !ok:
				err = reply("501 5.5.4 Syntax: MAIL FROM:<address>")
			case refusal != "":
				err = reply("%s", refusal)
			case !p.utf8 && !isASCII(addr):
				err = reply("%s", bsNeedsUTF8)
			default:
				if addr != "" {
					addr = qualify(addr, cfg.Hostname)
				}
				if addr != "" && admin.CheckEnvelope(&admin.InjectEnvelope{From: addr, Recipients: []string{addr}}) != nil {
					err = reply("501 5.1.7 Bad sender address syntax")
					break
				}
				open, sender, mail, rcpts, dsns = true, addr, p, nil, nil
				err = reply("250 2.1.0 Ok")
			}
		case "RCPT":
			addr, params, ok := bsPath(arg, "TO:")
			p, refusal := parseBSParams(params, false, 0)
			switch {
			case !open:
				err = reply("503 5.5.1 Error: need MAIL command")
			case !ok || addr == "":
				err = reply("501 5.5.4 Syntax: RCPT TO:<address>")
			case refusal != "":
				err = reply("%s", refusal)
			case !mail.utf8 && !isASCII(addr):
				err = reply("%s", bsNeedsUTF8)
			default:
				addr = qualify(addr, cfg.Hostname)
				if admin.CheckEnvelope(&admin.InjectEnvelope{Recipients: []string{addr}}) != nil {
					err = reply("501 5.1.3 Bad recipient address syntax")
					break
				}
				rcpts, dsns = append(rcpts, addr), append(dsns, rcptDSN{notify: p.notify, orcpt: p.orcpt})
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
				msg, rerr := readBSData(br, cfg.Limits.MaxMessageSize)
				if rerr != nil && !errors.As(rerr, new(*Error)) {
					return Errorf(exNoInput, "reading the message: %v", rerr)
				}
				mo := *o
				mo.Extract, mo.Rcpts, mo.rcptDSN, mo.utf8 = false, rcpts, dsns, mail.utf8
				if mail.ret != "" {
					mo.Ret = mail.ret
				}
				if mail.envid != "" {
					mo.EnvID = mail.envid
				}
				id := ""
				if rerr == nil {
					id, rerr = submit(cfg, &mo, login, uid, sender, msg)
				}
				open, rcpts, dsns = false, nil, nil
				err = reply("%s", bsResult(id, rerr))
			}
		case "RSET":
			if strings.TrimSpace(arg) != "" {
				// RFC 5321 §4.1.1.5: RSET takes no parameter; the
				// transaction stands, as at the listeners (go-smtp
				// patch 65) and in Postfix.
				err = reply("501 5.5.4 Syntax: RSET")
				break
			}
			open, rcpts = false, nil
			err = reply("250 2.0.0 Ok")
		case "NOOP":
			err = reply("250 2.0.0 Ok")
		case "VRFY":
			if strings.TrimSpace(arg) == "" {
				// As at the listeners (go-smtp patch 65) and in Postfix.
				err = reply("501 5.5.4 Syntax: VRFY address")
				break
			}
			err = reply("252 2.0.0 Cannot VRFY user, but will accept message")
		case "QUIT":
			reply("221 2.0.0 Bye")
			return w.Flush()
		default:
			err = reply("502 5.5.2 Error: command not recognized")
		}
		if err != nil {
			return Errorf(exIOErr, "writing SMTP replies: %v", err)
		}
	}
}

// bsResult is the reply to the end of data: the outcome of submit.
func bsResult(id string, err error) string {
	var se *Error
	if err == nil {
		return "250 2.0.0 Ok: " + id
	}
	if !errors.As(err, &se) {
		se = &Error{Code: ExSoftware, Msg: err.Error()}
	}
	msg := strings.ReplaceAll(se.Msg, "\n", " ")
	switch se.Code {
	case ExDataErr:
		// The replies SMTP gives for the same limits.
		switch {
		case strings.Contains(msg, msglimit.KeyMaxMessageSize), strings.Contains(msg, msglimit.KeyMaxHeaderSize):
			return "552 5.3.4 " + msg
		case strings.Contains(msg, msglimit.KeyMaxLineLength):
			return "500 5.5.2 " + msg
		}
		return "554 5.6.0 " + msg
	case ExNoPerm:
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

// bsParams are the parameters of a MAIL or RCPT command that -bs keeps.
type bsParams struct {
	utf8          bool   // MAIL: SMTPUTF8
	ret, envid    string // MAIL: RET and ENVID (decoded)
	notify, orcpt string // RCPT: NOTIFY, and ORCPT as "TYPE;address" (decoded)
}

// bsNeedsUTF8 refuses a UTF-8 address in a transaction without SMTPUTF8
// (RFC 6531 §3.5), as the relay's listeners do.
const bsNeedsUTF8 = "553 5.6.7 Must declare SMTPUTF8 to send unicode address"

// parseBSParams reads the parameters of MAIL (mail) or RCPT, with the
// meanings and replies of the relay's listeners: SIZE, BODY, SMTPUTF8 and
// the DSN parameters (RFC 3461: RET, ENVID; NOTIFY, ORCPT). refusal is the
// reply that refuses them, or "". Any other parameter gets 555 (RFC 5321
// §4.1.1.11) rather than being dropped unseen.
func parseBSParams(params string, mail bool, max int64) (p bsParams, refusal string) {
	seen := map[string]bool{}
	for _, f := range strings.Fields(params) {
		k, v, valued := strings.Cut(f, "=")
		k = strings.ToUpper(k)
		dsn := k == "RET" || k == "ENVID" || k == "NOTIFY" || k == "ORCPT"
		if dsn && seen[k] {
			return p, "501 5.5.4 Duplicate parameter " + k
		}
		seen[k] = true
		switch {
		case mail && k == "SIZE":
			n, err := strconv.ParseInt(v, 10, 64)
			if err != nil || n < 0 {
				return p, "501 5.5.4 Bad SIZE parameter"
			}
			if max > 0 && n > max {
				return p, "552 5.3.4 Message size exceeds fixed limit"
			}
		case mail && k == "BODY" && (strings.EqualFold(v, "7BIT") || strings.EqualFold(v, "8BITMIME")):
		case mail && k == "SMTPUTF8" && valued:
			// A keyword (RFC 6531 §3.4): "SMTPUTF8=" and "SMTPUTF8=no"
			// are not it, as at the listeners (go-smtp patch 63).
			return p, "501 5.5.4 MAIL parameter SMTPUTF8 takes no value"
		case mail && k == "SMTPUTF8":
			p.utf8 = true
		case mail && k == "RET":
			if v == "" || admin.CheckDSN("", v, "") != nil {
				return p, "501 5.5.4 Unknown RET value"
			}
			p.ret = strings.ToUpper(v)
		case mail && k == "ENVID":
			id, err := smtp.DecodeXtext(v)
			if err != nil || id == "" || admin.CheckDSN("", "", id) != nil {
				return p, "501 5.5.4 Malformed ENVID parameter value"
			}
			p.envid = id
		case !mail && k == "NOTIFY":
			if _, err := queue.ParseNotify(v); err != nil || v == "" {
				return p, "501 5.5.4 Malformed NOTIFY parameter value"
			}
			p.notify = strings.ToUpper(v)
		case !mail && k == "ORCPT":
			typ, addr, err := smtp.DecodeTypedAddress(v)
			// A control character (utf-8-addr-xtext may carry one) or
			// an over-long value is refused here, not with the whole
			// message after DATA (see admin.CheckORCPT).
			if err != nil || addr == "" || admin.CheckORCPT(string(typ)+";"+addr) != nil {
				return p, "501 5.5.4 Malformed ORCPT parameter value"
			}
			p.orcpt = string(typ) + ";" + addr
		default:
			return p, "555 5.5.4 Unsupported option: " + f
		}
	}
	return p, ""
}

// isASCII reports whether s has no octet above 127.
func isASCII(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] >= 0x80 {
			return false
		}
	}
	return true
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
