package outbound

import (
	"bytes"
	"io"
	"mime/quotedprintable"
	"net/mail"
	"strings"
	"testing"

	"github.com/emersion/go-smtp"

	"github.com/mailhop/mailhop/internal/testmime"
	"github.com/mailhop/mailhop/queue"
	"github.com/mailhop/mailhop/relay/outbound/smtptest"
)

func TestDelivery_No8BitMIME_MultipartConvertedToQuotedPrintable(t *testing.T) {
	t.Parallel()
	h := newHarness(t, smtptest.Behaviour{No8BitMIME: true}, zone("example.test", "127.0.0.2", "eight.test", "127.0.0.3"))
	eight := h.server("127.0.0.3", smtptest.Behaviour{})
	h.start()
	id := h.submit(testmime.Mixed8bit, []string{"b@example.test", "c@eight.test"}, func(e *queue.Envelope) { e.BodyType = "8BITMIME" })
	m := h.first.Wait(t, 1)[0]
	h.waitRecords(id, 1)
	if h.envelope(id) != nil {
		t.Fatal("message still queued")
	}
	if !testmime.Is7bit(m.Data) {
		t.Fatalf("8-bit octets sent to a server without 8BITMIME:\n%s", m.Data)
	}
	if m.MailOpts.Body != "" {
		t.Errorf("BODY=%s sent to a server without 8BITMIME", m.MailOpts.Body)
	}
	if m.MailOpts.Size != int64(len(m.Data)) {
		t.Errorf("SIZE=%d, but %d bytes were sent", m.MailOpts.Size, len(m.Data))
	}
	msg, err := mail.ReadMessage(bytes.NewReader(m.Data))
	if err != nil {
		t.Fatal(err)
	}
	if got := msg.Header.Get("Content-Transfer-Encoding"); got != "7bit" {
		t.Errorf("top-level Content-Transfer-Encoding %q, want 7bit", got)
	}
	if n := strings.Count(string(m.Data), "Content-Transfer-Encoding:"); n != 4 {
		t.Errorf("%d Content-Transfer-Encoding fields, want 4 (one per labelled or converted entity):\n%s", n, m.Data)
	}
	got := testmime.Parts(t, msg.Header, msg.Body)
	want := [][3]string{
		{"text/plain", "quoted-printable", "Grüße aus Köln, = and a trailing space \r\n.a line with a dot"},
		{"text/plain", "", "plain ascii = stays as it is"},
		{"text/plain", "quoted-printable", "caf\xe9"},
		{"text/html", "7bit", "<p>ascii only</p>"},
	}
	if len(got) != len(want) {
		t.Fatalf("parts:\n%q\nwant\n%q\nmessage:\n%s", got, want, m.Data)
	}
	for i := range want {
		if got[i] != want[i] {
			t.Errorf("part %d: %q, want %q", i, got[i], want[i])
		}
	}
	for _, keep := range []string{"This is a MIME message.\r\n--outer\r\n", "\r\nplain ascii = stays as it is\r\n--outer\r\n", "--outer--\r\nepilogue\r\n"} {
		if !strings.Contains(string(m.Data), keep) {
			t.Errorf("%q not kept as it was", keep)
		}
	}
	if !strings.Contains(h.logs.String(), "msg=\"message converted to 7bit\"") {
		t.Error("conversion not logged")
	}
	// A server with 8BITMIME gets the stored bytes.
	if m := eight.Wait(t, 1)[0]; !bytes.Equal(m.Data, []byte(testmime.Mixed8bit)) || m.MailOpts.Body != smtp.Body8BitMIME {
		t.Errorf("8BITMIME server: BODY=%q, body changed: %v", m.MailOpts.Body, !bytes.Equal(m.Data, []byte(testmime.Mixed8bit)))
	}
}

func TestDelivery_No8BitMIME_PlainMessageGetsMIMEHeaders(t *testing.T) {
	t.Parallel()
	h := newHarness(t, smtptest.Behaviour{No8BitMIME: true}, zone("example.test", "127.0.0.2"))
	h.start()
	// Not declared 8BITMIME: the body is looked at all the same.
	body := "From: a@sender.test\r\nSubject: hi\r\n\r\nsmørrebrød\r\n" + strings.Repeat("x", 200) + "\r\n.\r\nend\r\n"
	h.submit(body, []string{"b@example.test"})
	m := h.first.Wait(t, 1)[0]
	if !testmime.Is7bit(m.Data) {
		t.Fatalf("8-bit octets sent:\n%s", m.Data)
	}
	msg, err := mail.ReadMessage(bytes.NewReader(m.Data))
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range map[string]string{"MIME-Version": "1.0", "Content-Type": "text/plain; charset=unknown-8bit",
		"Content-Transfer-Encoding": "quoted-printable", "Subject": "hi"} {
		if got := msg.Header.Get(k); got != v {
			t.Errorf("%s: %q, want %q", k, got, v)
		}
	}
	dec, err := io.ReadAll(quotedprintable.NewReader(msg.Body))
	if err != nil || string(dec) != "smørrebrød\r\n"+strings.Repeat("x", 200)+"\r\n.\r\nend\r\n" {
		t.Errorf("decoded body %q, %v", dec, err)
	}
	for _, l := range strings.Split(string(m.Data), "\r\n") {
		if len(l) > 78 {
			t.Errorf("line of %d octets: %q", len(l), l)
		}
	}
}

func TestDelivery_No8BitMIME_UnconvertibleBounces563(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct{ name, body string }{
		{"8-bit header", "From: a@sender.test\r\nSubject: Grüße\r\n\r\nhello\r\n"},
		{"8-bit message/rfc822 part", "From: a@sender.test\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=b\r\n\r\n" +
			"--b\r\nContent-Type: text/plain\r\n\r\nsee attached\r\n" +
			"--b\r\nContent-Type: message/rfc822\r\n\r\nSubject: inner\r\n\r\nGrüße\r\n--b--\r\n"},
		{"8-bit part header", "From: a@sender.test\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=b\r\n\r\n" +
			"--b\r\nContent-Type: text/plain; name=\"Grüße.txt\"\r\n\r\nhello\r\n--b--\r\n"},
		{"8-bit in a base64 part", "From: a@sender.test\r\nMIME-Version: 1.0\r\nContent-Transfer-Encoding: base64\r\n\r\naGVsbG8\xff\r\n"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			h := newHarness(t, smtptest.Behaviour{No8BitMIME: true}, zone("example.test", "127.0.0.2"))
			senderMX := h.server("127.0.0.250", smtptest.Behaviour{})
			h.start()
			id := h.submit(tc.body, []string{"b@example.test"}, func(e *queue.Envelope) { e.BodyType = "8BITMIME" })
			h.waitRecords(id, 1)
			d := parseBounce(t, senderMX.Wait(t, 1)[0])
			r := d.Recipients[0]
			if r.Status != "5.6.3" || !strings.Contains(d.Human, "message needs 8BITMIME, which mx.example.test does not support") {
				t.Errorf("bounce: %+v", r)
			}
			if n := len(h.first.Messages()); n != 0 {
				t.Errorf("%d messages delivered", n)
			}
		})
	}
}

// TestDelivery_SMTPUTF8_NotNeeded_SentWithout: a message sent with
// SMTPUTF8 whose addresses and header are ASCII goes to a server without
// SMTPUTF8 without the parameter (RFC 6531 §3.2); a non-ASCII recipient
// alone bounces, a non-ASCII header or sender bounces them all.
func TestDelivery_SMTPUTF8_NotNeeded_SentWithout(t *testing.T) {
	t.Parallel()
	h := newHarness(t, smtptest.Behaviour{}, zone("example.test", "127.0.0.2"))
	senderMX := h.server("127.0.0.250", smtptest.Behaviour{SMTPUTF8: true})
	h.start()
	utf8 := func(e *queue.Envelope) { e.SMTPUTF8, e.BodyType = true, "8BITMIME" }

	body := "From: a@sender.test\r\nSubject: =?utf-8?q?gr=C3=BC=C3=9Fe?=\r\n\r\nGrüße\r\n"
	id := h.submit(body, []string{"a@example.test", "ü@example.test"}, utf8)
	m := h.first.Wait(t, 1)[0]
	h.waitRecords(id, 1)
	if m.MailOpts.UTF8 || len(m.To) != 1 || m.To[0] != "a@example.test" || !bytes.Equal(m.Data, []byte(body)) {
		t.Errorf("delivered: SMTPUTF8 %v, to %q, body %q", m.MailOpts.UTF8, m.To, m.Data)
	}
	d := parseBounce(t, senderMX.Wait(t, 1)[0])
	if len(d.Recipients) != 1 || d.Recipients[0].Address() != "ü@example.test" || d.Recipients[0].Status != "5.6.7" ||
		!strings.Contains(d.Human, "non-ASCII recipient address") {
		t.Errorf("bounce: %+v\n%s", d.Recipients, d.Human)
	}

	id = h.submit("From: a@sender.test\r\nSubject: Grüße\r\n\r\nhi\r\n", []string{"b@example.test"}, utf8)
	h.waitRecords(id, 1)
	d = parseBounce(t, senderMX.Wait(t, 2)[1])
	if d.Recipients[0].Status != "5.6.7" || !strings.Contains(d.Human, "non-ASCII header") {
		t.Errorf("bounce: %+v\n%s", d.Recipients, d.Human)
	}

	id = h.submit("Subject: hi\r\n\r\nhi\r\n", []string{"c@example.test"}, utf8, func(e *queue.Envelope) { e.From = "ü@sender.test" })
	h.waitRecords(id, 1)
	if env := h.envelope(id); env != nil || len(h.first.Messages()) != 1 || !strings.Contains(h.logs.String(), "non-ASCII sender address") {
		t.Errorf("non-ASCII sender: queued %+v, %d delivered", env, len(h.first.Messages()))
	}
}

// TestDelivery_SMTPUTF8_IDNDomainsAsALabels: to a server without SMTPUTF8,
// an address whose only non-ASCII part is its domain goes with the domain
// as A-labels (RFC 5890; Postfix does the same), sender and recipients; a
// non-ASCII local part still bounces.
func TestDelivery_SMTPUTF8_IDNDomainsAsALabels(t *testing.T) {
	t.Parallel()
	z := zone("xn--mnchen-3ya.test", "127.0.0.2")
	h := newHarness(t, smtptest.Behaviour{}, z)
	senderMX := h.server("127.0.0.250", smtptest.Behaviour{SMTPUTF8: true})
	h.start()
	utf8 := func(e *queue.Envelope) { e.SMTPUTF8, e.From = true, "a@bücher.test" }
	body := "From: a@xn--bcher-kva.test\r\nSubject: hi\r\n\r\nhi\r\n"
	id := h.submit(body, []string{"hans@münchen.test", "jürgen@münchen.test"}, func(e *queue.Envelope) { e.SMTPUTF8 = true })
	m := h.first.Wait(t, 1)[0]
	h.waitRecords(id, 1)
	if m.MailOpts.UTF8 || m.From != "sender@sender.test" || len(m.To) != 1 || m.To[0] != "hans@xn--mnchen-3ya.test" {
		t.Errorf("delivered: SMTPUTF8 %v, from %q, to %q", m.MailOpts.UTF8, m.From, m.To)
	}
	d := parseBounce(t, senderMX.Wait(t, 1)[0])
	if len(d.Recipients) != 1 || d.Recipients[0].Status != "5.6.7" {
		t.Errorf("bounce: %+v", d.Recipients)
	}

	id = h.submit(body, []string{"hans@münchen.test"}, utf8)
	m = h.first.Wait(t, 2)[1]
	h.waitRecords(id, 1)
	if m.MailOpts.UTF8 || m.From != "a@xn--bcher-kva.test" || len(m.To) != 1 || m.To[0] != "hans@xn--mnchen-3ya.test" {
		t.Errorf("delivered: SMTPUTF8 %v, from %q, to %q", m.MailOpts.UTF8, m.From, m.To)
	}
}

// The MAIL command says BODY=8BITMIME only for mail that needs it:
// declared 8BITMIME, or holding 8-bit octets without saying so; 7-bit
// mail goes with BODY=7BIT, as Postfix sends it (RFC 6152 §2). A server
// without 8BITMIME gets no BODY parameter at all.
func TestDelivery_BodyParameterFollowsTheMessage(t *testing.T) {
	t.Parallel()
	h := newHarness(t, smtptest.Behaviour{}, zone("example.test", "127.0.0.2", "seven.test", "127.0.0.3"))
	old := h.server("127.0.0.3", smtptest.Behaviour{No8BitMIME: true})
	h.start()
	eight := "From: a@sender.test\r\nSubject: hi\r\n\r\nsmørrebrød\r\n"
	for _, tc := range []struct {
		rcpt, body, declared, want string
	}{
		{"plain@example.test", testBody, "", "BODY=7BIT"},
		{"seven@example.test", testBody, "7BIT", "BODY=7BIT"},
		{"undeclared@example.test", eight, "", "BODY=8BITMIME"},
		{"lying@example.test", eight, "7BIT", "BODY=8BITMIME"},
		{"declared@example.test", testBody, "8BITMIME", "BODY=8BITMIME"},
		{"old@seven.test", testBody, "8BITMIME", ""},
	} {
		h.submit(tc.body, []string{tc.rcpt}, func(e *queue.Envelope) { e.BodyType = tc.declared })
		srv := h.first
		if strings.HasSuffix(tc.rcpt, "@seven.test") {
			srv = old
		}
		srv.WaitReceived(t, "RCPT TO:<"+tc.rcpt+">")
		var mail string
		for _, l := range strings.Split(srv.Received(), "\r\n") {
			if strings.HasPrefix(l, "MAIL FROM:") {
				mail = l // the last one: messages go one after another
			}
		}
		got := ""
		for _, p := range strings.Fields(mail) {
			if strings.HasPrefix(p, "BODY=") {
				got = p
			}
		}
		if got != tc.want {
			t.Errorf("%s (declared %q): MAIL %q, want %q", tc.rcpt, tc.declared, mail, tc.want)
		}
	}
	h.first.Wait(t, 5)
	old.Wait(t, 1)
}
