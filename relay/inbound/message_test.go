package inbound

import (
	"io"
	"strings"
	"testing"
	"testing/iotest"

	"github.com/mailhop/mailhop/relay/config"
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

func TestHeaderLimit(t *testing.T) {
	big := "X-Big: " + strings.Repeat("a", 300) + "\r\n"
	for _, tc := range []struct {
		name string
		msg  string
		ok   bool
	}{
		{"small", "Subject: x\r\n\r\n" + strings.Repeat("body\r\n", 500), true},
		{"no header", "\r\n" + strings.Repeat("b", 5000), true},
		{"at the limit", strings.Repeat(big, 3) + "\r\nbody", true},
		{"over", strings.Repeat(big, 4) + "\r\nbody", false},
		{"never ends", strings.Repeat(big, 10), false},
		// Without the empty line the whole message is header.
		{"no empty line, at the limit", strings.Repeat(big, 3), true},
		{"no empty line, one over", strings.Repeat(big, 3) + "X", false},
		{"no empty line, two over", strings.Repeat(big, 3) + "X:", false},
	} {
		for _, oneByte := range []bool{false, true} {
			var r io.Reader = strings.NewReader(tc.msg)
			if oneByte {
				r = iotest.OneByteReader(r)
			}
			_, err := io.ReadAll(&headerLimit{r: r, limit: 3 * len(big)})
			if tc.ok != (err == nil) || err != nil && err != errHeaderTooLarge {
				t.Errorf("%s (one byte at a time: %v): %v", tc.name, oneByte, err)
			}
		}
	}
}

func TestHeaderTooLarge_552(t *testing.T) {
	ts := startServer(t, trustLoopback, func(c *config.Config) { c.Limits.MaxHeaderSize = 4096 })
	d := dial(t, ts.addr[config.ModeRelay])
	d.script(
		"S: 220 ",
		"C: EHLO client.test", "S: 250 ",
		"C: MAIL FROM:<a@b.example>", "S: 250 ",
		"C: RCPT TO:<c@d.example>", "S: 250 ",
		"C: DATA", "S: 354 ",
	)
	d.write(strings.Repeat("X-Long: "+strings.Repeat("y", 90)+"\r\n", 50) + "\r\nbody\r\n.\r\n")
	d.expect("552 5.3.4 ")
	d.script("C: NOOP", "S: 250 ")
	if n := len(ts.q.List()); n != 0 {
		t.Fatalf("%d messages queued", n)
	}
	if !strings.Contains(ts.logs.String(), "reason=header_size") {
		t.Error("refusal not logged with its reason")
	}
}
