package smtp

import (
	"errors"
	"io"
	"strings"
	"testing"
	"unicode/utf8"
)

// FuzzParseCommand feeds a command line through what the server reads of
// it: the verb, the path of MAIL and RCPT and the parameters. Nothing may
// panic; a path, when parsed, comes from the line and holds no CR or LF.
func FuzzParseCommand(f *testing.F) {
	for _, s := range []string{
		"MAIL FROM:<a@b> SIZE=10 BODY=8BITMIME",
		"RCPT TO:<\"a b\"@c> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;a+40b",
		"RCPT TO:<@x,@y:u@z>",
		"MAIL FROM:<>",
		"EHLO x",
		"STARTTLS x",
		"MAIL FROM:<\"\\",
		"AB",
	} {
		f.Add(s, false)
	}
	f.Fuzz(func(t *testing.T, line string, strict bool) {
		cmd, arg, err := parseCmd(line)
		if err != nil {
			return
		}
		if strings.ContainsAny(cmd+arg, "\r\n") && !strings.ContainsAny(strings.TrimRight(line, "\r\n"), "\r\n") {
			t.Fatalf("parseCmd(%q) = %q, %q", line, cmd, arg)
		}
		for _, kw := range []string{"FROM:", "TO:"} {
			rest, ok := cutPrefixFold(arg, kw)
			if !ok {
				continue
			}
			p := parser{s: strings.TrimSpace(rest), strict: strict}
			var path string
			if kw == "FROM:" {
				path, err = p.parseReversePath()
			} else {
				path, err = p.parsePath()
			}
			if err == nil && !strings.Contains(line, path) && !p.sourceRoute {
				t.Fatalf("path %q not in %q", path, line)
			}
			if args, err := parseArgs(p.s); err == nil {
				for k := range args {
					if strings.ContainsAny(k, " \t\r\n") {
						t.Fatalf("parseArgs(%q): key %q", p.s, k)
					}
				}
			}
		}
		parseHelloArgument(arg)
		parseDeliverByArgument(arg)
	})
}

// FuzzXtext checks the xtext codecs of RFC 3461 §4 and RFC 6533 §3 on
// arbitrary input: no panic, and what the client encodes decodes back to
// the same text and is only printable ASCII (a parameter value holds no
// space, CR or LF).
func FuzzXtext(f *testing.F) {
	for _, s := range []string{"a+2Bb", "+", "+4", "a@b", "\t", "\x01x", "é@ü.de", "\\x{E9}", "a\\x{9}b", "rfc822;x+40y", "utf-8;\\x{10FFFF}"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		decodeXtext(s)
		decodeUTF8AddrXtext(s)
		decodeTypedAddress(s)

		printable := func(what, enc string) {
			for i := 0; i < len(enc); i++ {
				if enc[i] <= ' ' || enc[i] > '~' || enc[i] == '=' {
					t.Fatalf("%s(%q) = %q: octet %#x in a parameter value", what, s, enc, enc[i])
				}
			}
		}
		if isASCII(s) {
			enc := encodeXtext(s)
			printable("encodeXtext", enc)
			if dec, err := decodeXtext(enc); err != nil || dec != s {
				t.Fatalf("decodeXtext(encodeXtext(%q) = %q) = %q, %v", s, enc, dec, err)
			}
		}
		if utf8.ValidString(s) && !strings.ContainsFunc(s, noHexpoint) {
			enc := encodeUTF8AddrXtext(s)
			printable("encodeUTF8AddrXtext", enc)
			if dec, err := decodeUTF8AddrXtext(enc); err != nil || dec != s {
				t.Fatalf("decodeUTF8AddrXtext(encodeUTF8AddrXtext(%q) = %q) = %q, %v", s, enc, dec, err)
			}
			enc = encodeUTF8AddrUnitext(s)
			if strings.ContainsAny(enc, " \r\n=+") {
				t.Fatalf("encodeUTF8AddrUnitext(%q) = %q", s, enc)
			}
			if dec, err := decodeUTF8AddrXtext(enc); err != nil || dec != s {
				t.Fatalf("decodeUTF8AddrXtext(encodeUTF8AddrUnitext(%q) = %q) = %q, %v", s, enc, dec, err)
			}
		}
	})
}

// noHexpoint reports the controls RFC 6533's HEXPOINT cannot write (it
// has 01-09, 10, 11-19 and 7F only).
func noHexpoint(r rune) bool {
	return r == 0 || r >= 0x0A && r <= 0x0F || r >= 0x1A && r <= 0x1F
}

// FuzzClientReplies feeds a server's bytes to the client: the greeting,
// the EHLO reply and replies after it. Nothing may panic; a reply taken as
// a success has the code asked for, an error reply is an *SMTPError with a
// code of 400 or more (a 7xx defers, as in Postfix), and every keyword the EHLO
// reply lists is found by Extension, in any case (RFC 5321 §2.4: extension
// keywords are not case sensitive).
func FuzzClientReplies(f *testing.F) {
	f.Add("250-mx.example\r\n250-PIPELINING\r\n250-size 1000\r\n250 8BITMIME\r\n", "250 2.1.0 ok\r\n550-5.1.1 no\r\n550 5.1.1 such user\r\n")
	f.Add("250-x\r\n250-dsn\r\n250 smtputf8\r\n", "354\r\n250 x\r")
	f.Add("250 x\r\n", "421 4.3.2 bye\r\n")
	f.Fuzz(func(t *testing.T, ehlo, rest string) {
		if !strings.HasSuffix(ehlo, "\n") {
			ehlo += "\r\n" // its lines, not rest's, are checked below
		}
		var fake faker
		fake.ReadWriter = struct {
			io.Reader
			io.Writer
		}{strings.NewReader("220 hi\r\n" + ehlo + rest), io.Discard}
		c := NewClient(fake)
		if err := c.Hello("me.example"); err != nil {
			return
		}
		lines := strings.Split(ehlo, "\n")
		for i, l := range lines {
			l = strings.TrimSuffix(l, "\r")
			if len(l) < 4 || l[3] != '-' {
				break // the last line (Hello succeeded)
			}
			// A line over maxReplyLine is cut; invalid UTF-8 is not
			// kept by strings.ToUpper.
			if kw, _, _ := strings.Cut(l[4:], " "); i > 0 && kw != "" && len(l) <= maxReplyLine && isASCII(kw) {
				if ok, _ := c.Extension(kw); !ok {
					t.Fatalf("EHLO reply %q: Extension(%q) is false", ehlo, kw)
				}
			}
		}
		c.MaxMessageSize()
		c.SupportsAuth("PLAIN")
		for i := 0; i < 4; i++ {
			code, _, err := c.readResponse(250)
			if err == nil {
				if code != 250 {
					t.Fatalf("code %d taken for 250", code)
				}
				continue
			}
			var se *SMTPError
			if errors.As(err, &se) && se.Code < 400 {
				t.Fatalf("error reply %+v", se)
			}
		}
	})
}
