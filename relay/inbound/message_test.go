package inbound

import (
	"io"
	"strings"
	"testing"
	"time"

	"github.com/mailhop/mailhop/internal/testlog"
	"github.com/mailhop/mailhop/relay/config"
	"github.com/mailhop/mailhop/relay/mailhdr"
)

func TestIDSniffer(t *testing.T) {
	for _, tc := range []struct{ msg, want string }{
		{"Subject: x\r\nMessage-ID: <a@b>\r\n\r\nbody\r\n", "<a@b>"},
		{"message-id:\r\n <folded@x>\r\nSubject: y\r\n\r\n", "<folded@x>"},
		{"Subject: x\r\n\r\nMessage-ID: <in-body@x>\r\n", ""},
		{"\r\nMessage-ID: <after-empty-header@x>\r\n", ""},
		{"Subject: " + strings.Repeat("x", 40000) + "\r\nMessage-ID: <too-far@x>\r\n\r\n", ""},
	} {
		sn := &idSniffer{HeadKeeper: mailhdr.HeadKeeper{R: strings.NewReader(tc.msg)}}
		data, err := io.ReadAll(sn)
		if err != nil || string(data) != tc.msg {
			t.Fatalf("sniffer changed the data: %v", err)
		}
		if got := sn.messageID(); got != tc.want {
			t.Errorf("%.40q: Message-ID %q, want %q", tc.msg, got, tc.want)
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
	// The transaction's line gives the size of the data that came, not 0.
	if l := testlog.Lines(ts.logs.String(), "message refused"); len(l) != 1 || strings.Contains(l[0], " size=0 ") {
		t.Errorf("refusal logged as %q", l)
	}
}

// Data without a header (plain text or base64 from a script, even with a
// colon on its first line) is all body, however long: it is queued behind an
// empty line, not refused as a header over limits.max_header_size.
func TestTextWithoutHeader_NotHeaderSize(t *testing.T) {
	ts := startServer(t, trustLoopback, func(c *config.Config) { c.Limits.MaxHeaderSize = 4096 })
	d := dial(t, ts.addr[config.ModeRelay])
	d.script("S: 220 ", "C: EHLO client.test", "S: 250 ")
	for _, text := range []string{
		strings.Repeat("base64 or plain text, no header at all\r\n", 500),
		strings.Repeat("disk usage: "+strings.Repeat("y", 90)+"\r\n", 50),
	} {
		d.script("C: MAIL FROM:<a@b.example>", "S: 250 ",
			"C: RCPT TO:<c@d.example>", "S: 250 ",
			"C: DATA", "S: 354 ")
		d.write(text + ".\r\n")
		d.expect("250 2.0.0 ")
	}
	if n := len(ts.q.List()); n != 2 {
		t.Fatalf("%d messages queued, want 2", n)
	}
}

// A refused message's line carries its Message-ID once the header gave it,
// as an accepted one's does (README, Logs: `message accepted` / `message
// refused` ... `message_id`): grep of the ID shows why it never arrived.
func TestRefusedMessageLogsMessageID(t *testing.T) {
	ts := startServer(t, trustLoopback)
	d := inData(t, ts.addr[config.ModeRelay])
	d.write("Message-ID: <refused-1@client.test>\r\nSubject: x\r\n\r\na bare\nline feed\r\n.\r\n")
	d.expect("550 5.6.11 ")
	d.script("C: NOOP", "S: 250 ")
	line := ts.logs.WaitLine(5*time.Second, "message refused")
	if !strings.Contains(line, "reason=bare_line_ending") || !strings.Contains(line, "message_id=<refused-1@client.test>") {
		t.Errorf("refusal logged as %q, want its reason and message_id=<refused-1@client.test>", line)
	}
}
