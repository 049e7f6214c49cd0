package outbound

import (
	"strings"
	"testing"
)

// newMemBody is a stored message over s.
func newMemBody(s string) *strings.Reader { return strings.NewReader(s) }

func TestCountReceived(t *testing.T) {
	body := "Received: a\r\nreceived: b\r\n\tcontinued\r\nX-Received: no\r\nSubject: x\r\n\r\nReceived: in the body\r\n"
	if n := scanStored(newMemBody(body)).received; n != 2 {
		t.Errorf("Received fields counted: %d, want 2", n)
	}
	long := "X-Long: " + strings.Repeat("a", 10000) + "\r\nReceived: c\r\n\r\n"
	if n := scanStored(newMemBody(long)).received; n != 1 {
		t.Errorf("after a long line: %d, want 1", n)
	}
	folded := "Subject: x\r\nMessage-ID:\r\n <a.b@c.test>\r\n\r\nMessage-ID: <body@x>\r\n"
	if h := scanStored(newMemBody(folded)); h.messageID != "<a.b@c.test>" || h.tlsOptional {
		t.Errorf("header %+v", h)
	}
	if h := scanStored(newMemBody(body)); h.messageID != "" {
		t.Errorf("Message-ID %q from a message without one", h.messageID)
	}
	if h := scanStored(newMemBody("TLS-Required: No\r\nSubject: x\r\n\r\n")); !h.tlsOptional {
		t.Errorf("TLS-Required: No not seen")
	}
}
