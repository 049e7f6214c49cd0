package smtperr_test

import (
	"errors"
	"io"
	"strings"
	"testing"

	"github.com/emersion/go-smtp"

	"github.com/mailhop/mailhop/internal/testpipe"
	"github.com/mailhop/mailhop/relay/smtperr"
)

// replyTo runs a go-smtp client against a server that greets, answers
// EHLO, and then answers MAIL FROM with reply (bytes as they come from a
// remote server) and ends its output, and returns the client's error for
// MAIL.
func replyTo(t *testing.T, reply string) error {
	client, server := testpipe.Pipe()
	defer server.Close()
	go io.Copy(io.Discard, server) // the client's commands
	go func() {
		io.WriteString(server, "220 mx.test\r\n250 mx.test\r\n"+reply)
		server.CloseWrite() // a reply without its line end is cut short
	}()
	c := smtp.NewClient(client)
	defer c.Close()
	if err := c.Hello("relay.test"); err != nil {
		t.Fatalf("EHLO: %v", err)
	}
	return c.Mail("a@example.test", nil)
}

// FuzzReplyStatus: whatever a remote server answers, the error the relay
// makes of it is classified as its code says (4xx temporary, 5xx
// permanent) and the status it reports (a DSN's Status field, RFC 3464
// §2.3.4) is an RFC 3463 code of the same class.
func FuzzReplyStatus(f *testing.F) {
	for _, s := range []string{
		"550 5.1.1 no such user\r\n",
		"451-4.7.1 greylisted\r\n451 4.7.1 try later\r\n",
		"550 5.1234.1 odd subject\r\n",
		"554 -5.1.1 signed\r\n",
		"421 mx.test closing\r\n",
		"552 5.3.4\r\n",
		"550\r\n",
		"250 2.1.0 ok\r\n",
		"799 7.0.0 odd class\r\n",
		"550 2.0.0 wrong class\r\n",
		"550-5.1.1 first\r\n550-5.1.1 second\r\n550 5.1.1 third\r\n",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, reply string) {
		err := replyTo(t, reply)
		if err == nil {
			return
		}
		e := smtperr.Classify(err)
		st := e.Status()
		if !smtperr.ValidEnhanced(st) {
			t.Fatalf("reply %q: %+v reports status %q", reply, e, st)
		}
		if want := map[bool]string{true: "4.", false: "5."}[e.Temporary()]; !strings.HasPrefix(st, want) {
			t.Fatalf("reply %q: %+v, temporary %v, reports status %q", reply, e, e.Temporary(), st)
		}
		if e.Enhanced != "" && !smtperr.ValidEnhanced(e.Enhanced) {
			t.Fatalf("reply %q: enhanced status %q", reply, e.Enhanced)
		}
		var se *smtp.SMTPError
		if errors.As(err, &se) {
			switch {
			case se.Code >= 400 && se.Code < 500 && !e.Temporary(), se.Code >= 500 && se.Code < 600 && e.Temporary():
				t.Fatalf("reply %q: code %d, temporary %v", reply, se.Code, e.Temporary())
			}
		}
	})
}
