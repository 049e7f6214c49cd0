package smtp

import (
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"
)

// cutPrefixFold is a version of strings.CutPrefix which is case-insensitive.
func cutPrefixFold(s, prefix string) (string, bool) {
	if len(s) < len(prefix) || !strings.EqualFold(s[:len(prefix)], prefix) {
		return "", false
	}
	return s[len(prefix):], true
}

func parseCmd(line string) (cmd string, arg string, err error) {
	line = strings.TrimRight(line, "\r\n")

	l := len(line)
	switch {
	case strings.EqualFold(line, "STARTTLS"):
		return "STARTTLS", "", nil
	case l > 8 && strings.EqualFold(line[:9], "STARTTLS "):
		// mailhop patch: the parameters are kept, for the 501 RFC 3207
		// wants (upstream dropped them and started TLS).
		return "STARTTLS", strings.TrimSpace(line[9:]), nil
	case l == 0:
		return "", "", nil
	case l < 4:
		return "", "", fmt.Errorf("command too short: %q", line)
	case l == 4:
		return strings.ToUpper(line), "", nil
	case l == 5:
		// Too long to be only command, too short to have args
		return "", "", fmt.Errorf("mangled command: %q", line)
	}

	// If we made it here, command is long enough to have args
	if line[4] != ' ' {
		// There wasn't a space after the command?
		return "", "", fmt.Errorf("mangled command: %q", line)
	}

	return strings.ToUpper(line[0:4]), strings.TrimSpace(line[5:]), nil
}

// httpRequest reports whether line is the first line of an HTTP request:
// CONNECT, GET or POST first (Postfix's smtpd_forbidden_commands), or any
// "METHOD target HTTP/x.y". verb is the method as it may be logged.
func httpRequest(line string) (verb string, ok bool) {
	// It runs for every command line: no allocation for an SMTP one.
	first, rest := cutField(line)
	switch {
	case strings.EqualFold(first, "CONNECT") || strings.EqualFold(first, "GET") || strings.EqualFold(first, "POST"):
	default:
		target, rest := cutField(rest)
		version, rest := cutField(rest)
		if target == "" || !strings.HasPrefix(version, "HTTP/") || rest != "" {
			return "", false
		}
	}
	return printable(strings.ToUpper(first)), true
}

// cutField returns the first field of s, split at spaces and tabs, and what
// follows it.
func cutField(s string) (field, rest string) {
	s = strings.TrimLeft(s, " \t")
	if i := strings.IndexAny(s, " \t"); i >= 0 {
		return s[:i], strings.TrimLeft(s[i:], " \t")
	}
	return s, ""
}

// Takes the arguments proceeding a command and files them
// into a map[string]string after uppercasing each key.  Sample arg
// string:
//
//	" BODY=8BITMIME SIZE=1024 SMTPUTF8"
//
// The leading space is mandatory.
//
// mailhop patch: a parameter given twice is an error (*duplicateArgError):
// RFC 5321 §4.1.2 does not allow it and RFC 3461 §4 says each DSN
// parameter appears at most once; upstream kept the last one. A repeat
// that says the same again of a parameter other than the DSN ones (Python's
// smtplib send_message adds SMTPUTF8 and BODY=8BITMIME to those the caller
// gave) is taken once, as Postfix takes it.
func parseArgs(s string) (map[string]string, error) {
	argMap := map[string]string{}
	for _, arg := range strings.Fields(s) {
		m := strings.Split(arg, "=")
		key := strings.ToUpper(m[0])
		var value string
		switch len(m) {
		case 2:
			value = m[1]
			if keywordParam(key) {
				// mailhop patch: "SMTPUTF8=no" is not SMTPUTF8.
				return nil, &valueArgError{key}
			}
		case 1:
		default:
			return nil, fmt.Errorf("failed to parse arg string: %q", arg)
		}
		if prev, dup := argMap[key]; dup {
			if dsnParam(key) || !strings.EqualFold(prev, value) || len(m) == 2 && value == "" {
				return nil, &duplicateArgError{key}
			}
			continue
		}
		argMap[key] = value
	}
	return argMap, nil
}

// dsnParam reports whether key is a parameter of the DSN extension, which
// may appear only once (RFC 3461 §4).
func dsnParam(key string) bool {
	switch key {
	case "RET", "ENVID", "NOTIFY", "ORCPT":
		return true
	}
	return false
}

// keywordParam reports whether key is a parameter that takes no value:
// SMTPUTF8 (RFC 6531 §3.4) and REQUIRETLS (RFC 8689 §3).
func keywordParam(key string) bool {
	return key == "SMTPUTF8" || key == "REQUIRETLS"
}

// valueArgError is a value given to a parameter that takes none.
type valueArgError struct{ key string }

func (e *valueArgError) Error() string { return "parameter " + e.key + " takes no value" }

// duplicateArgError is a MAIL or RCPT parameter given more than once.
type duplicateArgError struct{ key string }

func (e *duplicateArgError) Error() string { return "duplicate parameter " + e.key }

// argsError is the reply text for a parameter list parseArgs refused.
func argsError(cmd string, err error) string {
	var de *duplicateArgError
	if errors.As(err, &de) {
		return "Duplicate " + cmd + " parameter " + de.key
	}
	var ve *valueArgError
	if errors.As(err, &ve) {
		return cmd + " parameter " + ve.key + " takes no value"
	}
	return "Unable to parse " + cmd + " ESMTP parameters"
}

func parseHelloArgument(arg string) (string, error) {
	domain := arg
	if idx := strings.IndexRune(arg, ' '); idx >= 0 {
		domain = arg[:idx]
	}
	if domain == "" {
		return "", fmt.Errorf("invalid domain")
	}
	return domain, nil
}

// Parses the BY argument defined in RFC2852 section 4.
// Returns pointer to options or nil if invalid.
func parseDeliverByArgument(arg string) *DeliverByOptions {
	secondsStr, modeStr, ok := strings.Cut(arg, ";")
	if !ok {
		return nil
	}
	modeStr, traceValue := strings.CutSuffix(modeStr, "T")
	if modeStr != string(DeliverByNotify) && modeStr != string(DeliverByReturn) {
		return nil
	}
	modeValue := DeliverByMode(modeStr)
	secondsValue, err := strconv.Atoi(secondsStr)
	if err != nil || (modeValue == DeliverByReturn && secondsValue < 1) {
		return nil
	}
	return &DeliverByOptions{
		Time:  time.Duration(secondsValue) * time.Second,
		Mode:  modeValue,
		Trace: traceValue,
	}
}

// parser parses command arguments defined in RFC 5321 section 4.1.2.
type parser struct {
	s string

	// sourceRoute is set when parsePath met (and skipped) a source route.
	sourceRoute bool
	// strict: a path must be in angle brackets (Server.RequireAngleBrackets).
	strict bool
}

var errSourceRoute = fmt.Errorf("source route")

func (p *parser) peekByte() (byte, bool) {
	if len(p.s) == 0 {
		return 0, false
	}
	return p.s[0], true
}

func (p *parser) readByte() (byte, bool) {
	ch, ok := p.peekByte()
	if ok {
		p.s = p.s[1:]
	}
	return ch, ok
}

func (p *parser) acceptByte(ch byte) bool {
	got, ok := p.peekByte()
	if !ok || got != ch {
		return false
	}
	p.readByte()
	return true
}

func (p *parser) expectByte(ch byte) error {
	if !p.acceptByte(ch) {
		if len(p.s) == 0 {
			return fmt.Errorf("expected '%v', got EOF", string(ch))
		} else {
			return fmt.Errorf("expected '%v', got '%v'", string(ch), string(p.s[0]))
		}
	}
	return nil
}

func (p *parser) parseReversePath() (string, error) {
	if strings.HasPrefix(p.s, "<>") {
		p.s = strings.TrimPrefix(p.s, "<>")
		return "", nil
	}
	return p.parsePath()
}

func (p *parser) parsePath() (string, error) {
	hasBracket := p.acceptByte('<')
	if !hasBracket && p.strict {
		return "", fmt.Errorf("path not in angle brackets")
	}
	if p.acceptByte('@') {
		i := strings.IndexByte(p.s, ':')
		if i < 0 {
			return "", fmt.Errorf("malformed a-d-l")
		}
		p.s = p.s[i+1:]
		p.sourceRoute = true
	}
	mbox, err := p.parseMailbox()
	if err != nil {
		return "", fmt.Errorf("in mailbox: %v", err)
	}
	if hasBracket {
		if err := p.expectByte('>'); err != nil {
			return "", err
		}
	}
	return mbox, nil
}

func (p *parser) parseMailbox() (string, error) {
	localPart, err := p.parseLocalPart()
	if err != nil {
		return "", fmt.Errorf("in local-part: %v", err)
	} else if localPart == "" {
		return "", fmt.Errorf("local-part is empty")
	}

	if err := p.expectByte('@'); err != nil {
		return "", err
	}

	var sb strings.Builder
	sb.WriteString(localPart)
	sb.WriteByte('@')

	for {
		ch, ok := p.peekByte()
		if !ok {
			break
		}
		if ch == ' ' || ch == '\t' || ch == '>' {
			break
		}
		p.readByte()
		sb.WriteByte(ch)
	}

	if strings.HasSuffix(sb.String(), "@") {
		return "", fmt.Errorf("domain is empty")
	}

	return sb.String(), nil
}

func (p *parser) parseLocalPart() (string, error) {
	var sb strings.Builder

	if p.acceptByte('"') { // quoted-string
		// Kept quoted, as sent: unquoting would change the address
		// ("a@b"@c is not a@b@c).
		sb.WriteByte('"')
		for {
			ch, ok := p.readByte()
			if !ok {
				return "", fmt.Errorf("malformed quoted-string")
			}
			sb.WriteByte(ch)
			switch ch {
			case '\\':
				ch, ok = p.readByte()
				if !ok {
					return "", fmt.Errorf("malformed quoted-string")
				}
				sb.WriteByte(ch)
			case '"':
				return sb.String(), nil
			}
		}
	} else { // dot-string
		for {
			ch, ok := p.peekByte()
			if !ok {
				return sb.String(), nil
			}
			switch ch {
			case '@':
				return sb.String(), nil
			case '(', ')', '<', '>', '[', ']', ':', ';', '\\', ',', '"', ' ', '\t':
				return "", fmt.Errorf("malformed dot-string")
			}
			p.readByte()
			sb.WriteByte(ch)
		}
	}
}
