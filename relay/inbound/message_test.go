package inbound

import (
	"io"
	"strings"
	"testing"
)

func TestIDSniffer(t *testing.T) {
	for _, tc := range []struct{ msg, want string }{
		{"Subject: x\r\nMessage-ID: <a@b>\r\n\r\nbody\r\n", "<a@b>"},
		{"message-id:\r\n <folded@x>\r\nSubject: y\r\n\r\n", "<folded@x>"},
		{"Subject: x\r\n\r\nMessage-ID: <in-body@x>\r\n", ""},
		{"\r\nMessage-ID: <after-empty-header@x>\r\n", ""},
		{"Subject: " + strings.Repeat("x", 40000) + "\r\nMessage-ID: <too-far@x>\r\n\r\n", ""},
	} {
		sn := &idSniffer{r: strings.NewReader(tc.msg)}
		data, err := io.ReadAll(sn)
		if err != nil || string(data) != tc.msg {
			t.Fatalf("sniffer changed the data: %v", err)
		}
		if got := sn.messageID(); got != tc.want {
			t.Errorf("%.40q: Message-ID %q, want %q", tc.msg, got, tc.want)
		}
	}
}
