package outbound

import (
	"bytes"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/emersion/go-smtp"

	"github.com/mailhop/mailhop/dnsmx/dnstest"
	"github.com/mailhop/mailhop/internal/testlog"
	"github.com/mailhop/mailhop/queue"
	"github.com/mailhop/mailhop/relay/config"
	"github.com/mailhop/mailhop/relay/outbound/smtptest"
	"github.com/mailhop/mailhop/relay/smtperr"
)

// rcptReplyServer answers RCPT for an address that contains who with
// reply, and everything else as plainReplies does (STARTTLS refused).
func rcptReplyServer(t *testing.T, h *harness, ip, who, reply string) *lockedBuilder {
	t.Helper()
	plain := plainReplies(map[string]string{"STARTTLS": "502 5.5.1 no\r\n"})
	return scriptedServer(t, h, ip, func(verb, line string) string {
		if verb == "RCPT" && strings.Contains(line, who) {
			return reply
		}
		return plain(verb, line)
	})
}

// mailCommands counts the MAIL commands in what a server read: its
// transactions.
func mailCommands(s string) int {
	return strings.Count(strings.ToUpper(s), "MAIL FROM:")
}

// Only a refusal for the number of recipients (X.5.3, or a bare 452) asks
// for a further transaction.
func TestTooManyRecipients(t *testing.T) {
	t.Parallel()
	for _, c := range []struct {
		e    *smtperr.Error
		want bool
	}{
		{&smtperr.Error{Code: 452, Enhanced: "4.5.3", Msg: "too many recipients"}, true},
		{&smtperr.Error{Code: 452, Msg: "too many recipients"}, true},
		{&smtperr.Error{Code: 452, Msg: "requested action not taken: insufficient system storage"}, true}, // without enhanced codes, RFC 5321's meaning
		{&smtperr.Error{Code: 451, Enhanced: "4.5.3", Msg: "too many recipients"}, true},
		{&smtperr.Error{Code: 452, Enhanced: "4.2.2", Msg: "mailbox full"}, false},
		{&smtperr.Error{Code: 452, Enhanced: "4.3.1", Msg: "insufficient system storage"}, false},
		{&smtperr.Error{Code: 450, Msg: "greylisted"}, false},
		{&smtperr.Error{Code: 451, Msg: "local error"}, false},
		{&smtperr.Error{Code: 552, Enhanced: "5.5.3", Msg: "too many recipients"}, false}, // limitRefusal makes it a 452 first
		{&smtperr.Error{Code: 0, Enhanced: "4.5.3", Msg: "ours, not a server's"}, false},
		{nil, false},
	} {
		if got := tooManyRecipients(c.e); got != c.want {
			t.Errorf("tooManyRecipients(%v) = %v, want %v", c.e, got, c.want)
		}
	}
}

// A refusal is for the number of recipients only among a transaction's
// last ones (no recipient after it accepted) and, without an enhanced
// status to say so, only after a recipient it accepted (a bare "552
// Mailbox full" to a one-recipient message is that mailbox's); a 552 of
// that meaning is taken as 452, any other keeps its code.
func TestLimitRefusal(t *testing.T) {
	t.Parallel()
	for _, c := range []struct {
		e           *smtperr.Error
		last, after bool
		code        int
		enhanced    string
		tooMany     bool
	}{
		{&smtperr.Error{Code: 452, Enhanced: "4.5.3"}, true, true, 452, "4.5.3", true},
		{&smtperr.Error{Code: 452, Enhanced: "4.5.3"}, true, false, 452, "4.5.3", true},
		{&smtperr.Error{Code: 452, Enhanced: "4.5.3"}, false, true, 452, "4.5.3", false},
		{&smtperr.Error{Code: 452}, true, true, 452, "", true},
		{&smtperr.Error{Code: 452}, true, false, 452, "", false},
		{&smtperr.Error{Code: 452}, false, true, 452, "", false},
		{&smtperr.Error{Code: 552}, true, true, 452, "", true},
		{&smtperr.Error{Code: 552}, true, false, 552, "", false},
		{&smtperr.Error{Code: 552}, false, true, 552, "", false},
		{&smtperr.Error{Code: 552, Enhanced: "5.5.3"}, true, true, 452, "4.5.3", true},
		{&smtperr.Error{Code: 552, Enhanced: "5.5.3"}, true, false, 452, "4.5.3", true},
		{&smtperr.Error{Code: 552, Enhanced: "5.5.3"}, false, true, 552, "5.5.3", false},
		{&smtperr.Error{Code: 552, Enhanced: "5.2.2"}, true, true, 552, "5.2.2", false},
		{&smtperr.Error{Code: 452, Enhanced: "4.2.2"}, true, true, 452, "4.2.2", false},
		{&smtperr.Error{Code: 550, Enhanced: "5.1.1"}, true, true, 550, "5.1.1", false},
	} {
		e, tooMany := limitRefusal(c.e, c.last, c.after)
		if e.Code != c.code || e.Enhanced != c.enhanced || tooMany != c.tooMany {
			t.Errorf("limitRefusal(%d %s, last %v, after an accepted one %v) = %d %s, %v; want %d %s, %v",
				c.e.Code, c.e.Enhanced, c.last, c.after, e.Code, e.Enhanced, tooMany, c.code, c.enhanced, c.tooMany)
		}
	}
}

// "452 4.2.2 mailbox full" for one recipient is that recipient's deferral:
// no further transaction is spent on it, the others are delivered, and it
// waits for the next attempt with the server's reply. (It was taken for a
// recipient limit: a second transaction for it alone.)
func TestDelivery_452MailboxFull_NoFurtherTransaction(t *testing.T) {
	t.Parallel()
	h := newHarness(t, smtptest.Behaviour{}, zone("example.test", "127.0.0.3"))
	got := rcptReplyServer(t, h, "127.0.0.3", "<b@", "452 4.2.2 Mailbox full\r\n")
	h.start()
	id := h.submit(testBody, []string{"a@example.test", "b@example.test", "c@example.test"})
	h.waitRecords(id, 1)
	if n := mailCommands(got.String()); n != 1 {
		t.Errorf("%d transactions, want 1:\n%s", n, got.String())
	}
	env := h.envelope(id)
	if env == nil {
		t.Fatal("the message left the queue; want b@example.test pending")
	}
	for i, want := range []queue.RcptState{queue.Delivered, queue.Pending, queue.Delivered} {
		if r := env.Recipients[i]; r.State != want {
			t.Errorf("%s: %v %q, want %v", r.Address, r.State, r.Reply, want)
		}
	}
	h.rcptPendingWith(id, 1, "4.2.2 Mailbox full")
}

// "452 4.3.1 insufficient system storage" at the first MX is an ordinary
// 4xx: the recipient goes to the next MX in the same attempt, as a
// greylisting 450 does (it waited for a further transaction at the first).
func TestDelivery_452InsufficientStorage_NextMX(t *testing.T) {
	t.Parallel()
	h := newHarness(t, smtptest.Behaviour{}, mxZone("127.0.0.3", "127.0.0.4"))
	first := rcptReplyServer(t, h, "127.0.0.3", "<b@", "452 4.3.1 Insufficient system storage\r\n")
	second := h.server("127.0.0.4", smtptest.Behaviour{})
	h.start()
	id := h.submit(testBody, []string{"a@example.test", "b@example.test"})
	h.waitRecords(id, 1)
	if env := h.envelope(id); env != nil {
		t.Fatalf("after one attempt the message is still queued: %+v", env.Recipients)
	}
	if n := mailCommands(first.String()); n != 1 {
		t.Errorf("%d transactions at the first MX, want 1:\n%s", n, first.String())
	}
	msgs := second.Messages()
	if len(msgs) != 1 || len(msgs[0].To) != 1 || msgs[0].To[0] != "b@example.test" {
		t.Errorf("the second MX got %+v, want one message to b@example.test", msgs)
	}
	if !strings.Contains(h.logs.String(), "msg=\"host deferred\"") {
		t.Errorf("no host deferred line:\n%s", h.logs.String())
	}
}

// 552 with an enhanced status other than X.5.3 is not RFC 821's "too many
// recipients": "552 5.2.2" to RCPT bounces that recipient, as Postfix has
// it, instead of being retried as a 452.
func TestDelivery_552MailboxFullToRcpt_Bounces(t *testing.T) {
	t.Parallel()
	h := newHarness(t, smtptest.Behaviour{}, zone("example.test", "127.0.0.3"))
	got := rcptReplyServer(t, h, "127.0.0.3", "<b@", "552 5.2.2 Mailbox full, quota exceeded\r\n")
	senderMX := h.server("127.0.0.250", smtptest.Behaviour{})
	h.start()
	id := h.submit(testBody, []string{"a@example.test", "b@example.test"})
	h.waitRecords(id, 1)
	if n := mailCommands(got.String()); n != 1 {
		t.Errorf("%d transactions, want 1:\n%s", n, got.String())
	}
	if env := h.envelope(id); env != nil {
		t.Fatalf("the message is still queued: %+v", env.Recipients)
	}
	if !strings.Contains(h.logs.String(), "msg=bounced") || !strings.Contains(h.logs.String(), "rcpt=b@example.test") {
		t.Errorf("b@example.test not bounced:\n%s", h.logs.String())
	}
	// The bounce gives the server's reply as it was, not a 452.
	d := parseBounce(t, senderMX.Wait(t, 1)[0])
	if len(d.Recipients) != 1 {
		t.Fatalf("bounce for %d recipients, want b@example.test alone", len(d.Recipients))
	}
	r := d.Recipients[0]
	if r.Address() != "b@example.test" || r.Action != "failed" || r.Status != "5.2.2" ||
		r.DiagnosticCode != "smtp; 552 5.2.2 Mailbox full, quota exceeded" || r.RemoteMTA != "dns; mx.example.test" {
		t.Errorf("bounce: %+v, want b@example.test failed, 5.2.2, the server's 552 reply, from mx.example.test", r)
	}
}

// A bare "552 Mailbox full" (no enhanced status) to a one-recipient
// message is that mailbox's refusal, not a limit on the number of
// recipients (there was none before it to be too many): it bounces at
// once, as in Postfix. Taken for a limit, it waited, the transaction
// refused each time, until the message expired.
func TestDelivery_Bare552ToTheOnlyRecipient_Bounces(t *testing.T) {
	t.Parallel()
	h := newHarness(t, smtptest.Behaviour{}, zone("example.test", "127.0.0.3"))
	got := rcptReplyServer(t, h, "127.0.0.3", "<b@", "552 Mailbox full\r\n")
	h.start()
	id := h.submit(testBody, []string{"b@example.test"})
	h.waitRecords(id, 1)
	if env := h.envelope(id); env != nil {
		t.Fatalf("the message is still queued: %+v", env.Recipients)
	}
	if !strings.Contains(h.logs.String(), "msg=bounced") {
		t.Errorf("b@example.test not bounced:\n%s", h.logs.String())
	}
	if n := mailCommands(got.String()); n != 1 {
		t.Errorf("%d transactions, want 1:\n%s", n, got.String())
	}
}

// A bare "452 too many recipients" (no enhanced status) is still a
// recipient limit: the rest go in further transactions at once.
func TestDelivery_452WithoutEnhancedCode_MoreTransactions(t *testing.T) {
	t.Parallel()
	h := newHarness(t, smtptest.Behaviour{}, zone("example.test", "127.0.0.3"))
	got := rcptLimitServer(t, h, "127.0.0.3", 2, "452 Too many recipients\r\n")
	h.start()
	id := h.submit(testBody, []string{"a@example.test", "b@example.test", "c@example.test", "d@example.test", "e@example.test"})
	h.waitRecords(id, 1)
	if env := h.envelope(id); env != nil {
		t.Fatalf("after one attempt the message is still queued: %+v", env.Recipients)
	}
	if n := mailCommands(got.String()); n != 3 {
		t.Errorf("%d transactions, want 3 (2+2+1):\n%s", n, got.String())
	}
}

// manyRcpts returns n addresses in domain: r000@domain, r001@domain, ...
func manyRcpts(n int, domain string) []string {
	out := make([]string, n)
	for i := range out {
		out[i] = fmt.Sprintf("r%03d@%s", i, domain)
	}
	return out
}

// rcptsPerTransaction counts the RCPT commands of each transaction in what
// a scripted server read (a transaction starts at its MAIL).
func rcptsPerTransaction(s string) []int {
	var out []int
	for l := range strings.Lines(strings.ToUpper(s)) {
		switch {
		case strings.HasPrefix(l, "MAIL FROM:"):
			out = append(out, 0)
		case strings.HasPrefix(l, "RCPT TO:") && len(out) > 0:
			out[len(out)-1]++
		}
	}
	return out
}

// 120 recipients in one domain go in three transactions of 50, 50 and 20
// (delivery.max_recipients_per_transaction's default) on one connection,
// each with the same bytes and MAIL parameters and each recipient's own DSN
// parameters; all delivered in one attempt. (All 120 went in one
// transaction.)
func TestDelivery_RcptCap_120RecipientsIn3Transactions(t *testing.T) {
	t.Parallel()
	h := newHarness(t, smtptest.Behaviour{DSN: true, SMTPUTF8: true}, zone("example.test", "127.0.0.2"))
	h.start()
	body := testBody + "caf\xc3\xa9 8-bit line\r\n"
	rcpts := manyRcpts(120, "example.test")
	notify := []queue.Notify{queue.NotifySuccess | queue.NotifyFailure, queue.NotifyNever, queue.NotifyDelay}
	id := h.submit(body, rcpts, func(e *queue.Envelope) {
		e.EnvID, e.Ret, e.SMTPUTF8 = "env-120", "HDRS", true
		for i := range e.Recipients {
			e.Recipients[i].Notify = notify[i%3]
			e.Recipients[i].ORCPT = fmt.Sprintf("rfc822;orig%03d@example.test", i)
		}
	})
	msgs := h.first.Wait(t, 3)
	h.waitRecords(id, 1)
	if env := h.envelope(id); env != nil {
		t.Fatalf("after one attempt the message is still queued: %+v", env.Recipients)
	}
	if len(msgs) != 3 {
		t.Fatalf("%d transactions, want 3", len(msgs))
	}
	var to []string
	for i, m := range msgs {
		if want := []int{50, 50, 20}[i]; len(m.To) != want {
			t.Errorf("transaction %d: %d recipients, want %d", i+1, len(m.To), want)
		}
		if m.Conn != 1 {
			t.Errorf("transaction %d on connection %d, want all on the first", i+1, m.Conn)
		}
		if !bytes.Equal(m.Data, []byte(body)) {
			t.Errorf("transaction %d: body differs:\n got %q\nwant %q", i+1, m.Data, body)
		}
		o := m.MailOpts
		if m.From != "sender@sender.test" || o.EnvelopeID != "env-120" || o.Return != smtp.DSNReturnHeaders || !o.UTF8 || o.Body != smtp.Body8BitMIME {
			t.Errorf("transaction %d: MAIL FROM %q %+v, want ENVID, RET=HDRS, SMTPUTF8 and BODY=8BITMIME each time", i+1, m.From, o)
		}
		for j, addr := range m.To {
			k := len(to) + j
			ro := m.RcptOpts[j]
			if want := fmt.Sprintf("orig%03d@example.test", k); ro.OriginalRecipient != want {
				t.Errorf("%s: ORCPT %q, want %q", addr, ro.OriginalRecipient, want)
			}
			if len(ro.Notify) == 0 || (k%3 == 1) != (ro.Notify[0] == smtp.DSNNotifyNever) {
				t.Errorf("%s: NOTIFY %v, want that of recipient %d", addr, ro.Notify, k)
			}
		}
		to = append(to, m.To...)
	}
	if !slices.Equal(to, rcpts) {
		t.Errorf("recipients over the transactions:\n%q\nwant each once, in order:\n%q", to, rcpts)
	}
	if n := h.first.Conns(); n != 1 {
		t.Errorf("%d connections, want 1", n)
	}
}

// With max_recipients_per_transaction = 1, each recipient has its own
// transaction, all on one connection.
func TestDelivery_RcptCap_One(t *testing.T) {
	t.Parallel()
	h := newHarness(t, smtptest.Behaviour{}, zone("example.test", "127.0.0.2"))
	h.cfg.Delivery.MaxRecipientsPerTransaction = 1
	h.start()
	rcpts := manyRcpts(3, "example.test")
	id := h.submit(testBody, rcpts)
	msgs := h.first.Wait(t, 3)
	h.waitRecords(id, 1)
	if env := h.envelope(id); env != nil {
		t.Fatalf("still queued: %+v", env.Recipients)
	}
	for i, m := range msgs {
		if len(m.To) != 1 || m.To[0] != rcpts[i] || m.Conn != 1 || !bytes.Equal(m.Data, []byte(testBody)) {
			t.Errorf("transaction %d: to %q on connection %d, want %s alone on the first", i+1, m.To, m.Conn, rcpts[i])
		}
	}
	if len(msgs) != 3 || h.first.Conns() != 1 {
		t.Errorf("%d transactions on %d connections, want 3 on 1", len(msgs), h.first.Conns())
	}
}

// A server that takes 30 recipients per transaction and answers "452
// 4.5.3" beyond: the first transaction carries 50 (the cap), the next ones
// 30, the server's limit as it showed it — the refused 20 first — and
// never more than 50: 140 RCPT commands, every recipient delivered in one
// attempt over one connection.
func TestDelivery_RcptCap_ServerLimitBelowCap(t *testing.T) {
	t.Parallel()
	h := newHarness(t, smtptest.Behaviour{}, zone("example.test", "127.0.0.3"))
	got := rcptLimitServer(t, h, "127.0.0.3", 30, "452 4.5.3 Too many recipients\r\n")
	h.start()
	id := h.submit(testBody, manyRcpts(120, "example.test"))
	h.waitRecords(id, 1)
	if env := h.envelope(id); env != nil {
		t.Fatalf("after one attempt the message is still queued: %+v", env.Recipients)
	}
	s := got.String()
	if per := rcptsPerTransaction(s); !slices.Equal(per, []int{50, 30, 30, 30}) {
		t.Errorf("RCPT commands per transaction %v, want [50 30 30 30]", per)
	}
	if n := strings.Count(s, "EHLO"); n != 1 {
		t.Errorf("%d sessions, want 1", n)
	}
}

// A server whose limit is per connection (60 recipients, then "452 4.5.3"
// for every one): once a transaction gets none through, the recipients not
// yet sent are not tried on it either; they wait for the next attempt with
// the server's reply, and the loop ends.
func TestDelivery_RcptCap_ServerTakesNoMore(t *testing.T) {
	t.Parallel()
	h := newHarness(t, smtptest.Behaviour{}, zone("example.test", "127.0.0.3"))
	var mu sync.Mutex
	taken := 0
	plain := plainReplies(map[string]string{"STARTTLS": "502 5.5.1 no\r\n"})
	got := scriptedServer(t, h, "127.0.0.3", func(verb, line string) string {
		mu.Lock()
		defer mu.Unlock()
		if verb == "RCPT" {
			if taken == 60 {
				return "452 4.5.3 No more recipients in this session\r\n"
			}
			taken++
		}
		return plain(verb, line)
	})
	h.start()
	id := h.submit(testBody, manyRcpts(120, "example.test"))
	h.waitRecords(id, 1)
	if per := rcptsPerTransaction(got.String()); !slices.Equal(per, []int{50, 50, 10}) {
		t.Errorf("RCPT commands per transaction %v, want [50 50 10]", per)
	}
	env := h.envelope(id)
	if env == nil {
		t.Fatal("the message left the queue")
	}
	for i, r := range env.Recipients {
		if i < 60 && r.State != queue.Delivered {
			t.Errorf("%s: %v %q, want delivered", r.Address, r.State, r.Reply)
		}
		if i >= 60 && (r.State != queue.Pending || !strings.Contains(r.Reply, "4.5.3 No more recipients")) {
			t.Errorf("%s: %v %q, want pending with the server's 452", r.Address, r.State, r.Reply)
		}
	}
}

// "452 4.2.2" for one recipient of the first transaction does not lower
// the next one's size: 100 recipients are 50 and 50, that one deferred.
func TestDelivery_RcptCap_MailboxFullDoesNotLowerTheSize(t *testing.T) {
	t.Parallel()
	h := newHarness(t, smtptest.Behaviour{}, zone("example.test", "127.0.0.3"))
	got := rcptReplyServer(t, h, "127.0.0.3", "<r007@", "452 4.2.2 Mailbox full\r\n")
	h.start()
	id := h.submit(testBody, manyRcpts(100, "example.test"))
	h.waitRecords(id, 1)
	if per := rcptsPerTransaction(got.String()); !slices.Equal(per, []int{50, 50}) {
		t.Errorf("RCPT commands per transaction %v, want [50 50]", per)
	}
	env := h.envelope(id)
	if env == nil {
		t.Fatal("the message left the queue; want r007 pending")
	}
	for i, r := range env.Recipients {
		if want := queue.Delivered; i != 7 && r.State != want {
			t.Errorf("%s: %v %q, want %v", r.Address, r.State, r.Reply, want)
		}
	}
	h.rcptPendingWith(id, 7, "4.2.2 Mailbox full")
}

// A connection that ends after the first of three transactions — dropped,
// a 421 sent unasked after the end-of-data reply, or a 421 to the next
// MAIL: the first 50 recipients stay delivered, the other 70 are deferred
// (naming the host, or with its 421), and the next attempt sends the message to those 70
// only, each recipient's RCPT sent once in all.
func TestDelivery_RcptCap_ConnectionEndsBetweenTransactions(t *testing.T) {
	t.Parallel()
	for _, c := range []struct{ name, end, mail, reply string }{
		{"dropped", "250 2.0.0 ok\r\n" + closeAfter, "", "[127.0.0.3]"},
		{"421 unasked", "250 2.0.0 ok\r\n421 4.3.2 closing\r\n" + closeAfter, "", "[127.0.0.3]"},
		{"421 to MAIL", "", "421 4.3.2 too busy\r\n" + closeAfter, "4.3.2 too busy"},
	} {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			h := newHarness(t, smtptest.Behaviour{}, zone("example.test", "127.0.0.3"))
			var mu sync.Mutex
			broken := false // the first session ended
			mails, ends := 0, 0
			plain := plainReplies(map[string]string{"STARTTLS": "502 5.5.1 no\r\n"})
			got := scriptedServer(t, h, "127.0.0.3", func(verb, line string) string {
				mu.Lock()
				defer mu.Unlock()
				switch {
				case broken:
				case verb == "MAIL":
					if mails++; mails == 2 && c.mail != "" {
						broken = true
						return c.mail
					}
				case verb == ".":
					if ends++; ends == 1 && c.end != "" {
						broken = true
						return c.end
					}
				}
				return plain(verb, line)
			})
			h.start()
			rcpts := manyRcpts(120, "example.test")
			id := h.submit(testBody, rcpts)
			h.waitRecords(id, 1)
			env := h.envelope(id)
			if env == nil {
				t.Fatal("the message left the queue after the first attempt")
			}
			for i, r := range env.Recipients {
				if i < 50 && r.State != queue.Delivered {
					t.Errorf("%s: %v %q, want delivered", r.Address, r.State, r.Reply)
				}
				if i >= 50 && (r.State != queue.Pending || !strings.Contains(r.Reply, c.reply)) {
					t.Errorf("%s: %v %q, want pending with %q", r.Address, r.State, r.Reply, c.reply)
				}
			}
			h.q.Flush("")
			h.waitRecords(id, 2)
			if env := h.envelope(id); env != nil {
				t.Fatalf("after the second attempt the message is still queued: %+v", env.Recipients)
			}
			s := got.String()
			for _, r := range rcpts {
				if n := strings.Count(s, "RCPT TO:<"+r+">"); n != 1 {
					t.Errorf("%s: %d RCPT commands, want 1", r, n)
				}
			}
			if per := rcptsPerTransaction(s); len(per) < 3 || per[0] != 50 || per[len(per)-2] != 50 || per[len(per)-1] != 20 {
				t.Errorf("RCPT commands per transaction %v, want 50, then 50 and 20 in the second session", per)
			}
		})
	}
}

// When the first MX's connection ends after the first transaction, the
// recipients it had no transaction for go to the next MX in the same
// attempt, in transactions of at most 50 there too.
func TestDelivery_RcptCap_RestToTheNextMX(t *testing.T) {
	t.Parallel()
	h := newHarness(t, smtptest.Behaviour{}, mxZone("127.0.0.3", "127.0.0.4"))
	plain := plainReplies(map[string]string{"STARTTLS": "502 5.5.1 no\r\n"})
	scriptedServer(t, h, "127.0.0.3", func(verb, line string) string {
		if verb == "." {
			return "250 2.0.0 ok\r\n" + closeAfter
		}
		return plain(verb, line)
	})
	second := h.server("127.0.0.4", smtptest.Behaviour{})
	h.start()
	rcpts := manyRcpts(120, "example.test")
	id := h.submit(testBody, rcpts)
	h.waitRecords(id, 1)
	if env := h.envelope(id); env != nil {
		t.Fatalf("after one attempt the message is still queued: %+v", env.Recipients)
	}
	msgs := second.Messages()
	var to []string
	for _, m := range msgs {
		to = append(to, m.To...)
	}
	if len(msgs) != 2 || len(msgs[0].To) != 50 || !slices.Equal(to, rcpts[50:]) {
		t.Errorf("the second MX got %d transactions for %q, want 50 and 20: r050 to r119", len(msgs), to)
	}
	if !strings.Contains(h.logs.String(), "msg=\"host failed\"") {
		t.Errorf("no host failed line for the first MX:\n%s", h.logs.String())
	}
}

// A [[route]]'s smarthost gets the same: 120 recipients in three
// transactions of at most 50 on one authenticated TLS connection, each
// with REQUIRETLS for a message that asked for it.
func TestRoute_RcptCap_Smarthost(t *testing.T) {
	t.Parallel()
	pki := newPKI(t, "smart.test")
	z := dnstest.Zone{"smart.test.": {dnstest.A("smart.test", "127.0.0.2")}}
	h := newHarness(t, smtptest.Behaviour{TLS: pki.serverConfig(), Users: map[string]string{"app": "s3cret"}, RequireTLS: true}, z)
	h.cfg.Route = append(h.cfg.Route, routeTo(h, []string{"smart.test"}, "starttls", pki.caFile))
	h.start()
	rcpts := manyRcpts(120, "routed.test")
	id := h.submit(testBody, rcpts, func(e *queue.Envelope) { e.RequireTLS = true })
	msgs := h.first.Wait(t, 3)
	h.waitRecords(id, 1)
	if env := h.envelope(id); env != nil {
		t.Fatalf("still queued: %+v", env.Recipients)
	}
	var to []string
	for i, m := range msgs {
		if want := []int{50, 50, 20}[i]; len(m.To) != want || m.Conn != 1 || !m.TLS || m.User != "app" || !bytes.Equal(m.Data, []byte(testBody)) {
			t.Errorf("transaction %d: %d recipients on connection %d (TLS %v, user %q), want %d on the first, TLS, app", i+1, len(m.To), m.Conn, m.TLS, m.User, want)
		}
		if !m.MailOpts.RequireTLS {
			t.Errorf("transaction %d: MAIL without REQUIRETLS", i+1)
		}
		to = append(to, m.To...)
	}
	if len(msgs) != 3 || !slices.Equal(to, rcpts) || h.first.Conns() != 1 {
		t.Errorf("%d transactions on %d connections, recipients %q; want 3 on 1, each recipient once", len(msgs), h.first.Conns(), to)
	}
}

// stallSecondServer takes the first transaction and stalls at the end of
// the second one's data (no reply until the test ends); stalled is closed
// when it does.
func stallSecondServer(t *testing.T, h *harness, ip string) (got *lockedBuilder, stalled <-chan struct{}) {
	t.Helper()
	st, release := make(chan struct{}), make(chan struct{})
	t.Cleanup(func() { close(release) })
	var mu sync.Mutex
	ends := 0
	plain := plainReplies(map[string]string{"STARTTLS": "502 5.5.1 no\r\n"})
	got = scriptedServer(t, h, ip, func(verb, line string) string {
		if verb == "." {
			mu.Lock()
			ends++
			n := ends
			mu.Unlock()
			if n == 2 {
				close(st)
				<-release
				return "451 4.3.0 too late\r\n" + closeAfter
			}
		}
		return plain(verb, line)
	})
	return got, st
}

// The recipients a transaction delivered are recorded before the next
// transaction starts, not at the attempt's end: while the second of three
// stalls, the queue has the first 50 delivered (a crash then would have
// sent them the message again), and each is logged "delivered" once.
func TestDelivery_RcptCap_DeliveredRecordedBetweenTransactions(t *testing.T) {
	t.Parallel()
	h := newHarness(t, smtptest.Behaviour{}, zone("example.test", "127.0.0.3"))
	h.cfg.Delivery.DataEndTimeout.Duration = time.Hour
	_, stalled := stallSecondServer(t, h, "127.0.0.3")
	h.start()
	id := h.submit(testBody, manyRcpts(120, "example.test"))
	select {
	case <-stalled:
	case <-time.After(15 * time.Second):
		t.Fatalf("the second transaction did not come:\n%s", h.logs.String())
	}
	env := h.envelope(id)
	if env == nil {
		t.Fatal("the message left the queue")
	}
	wantFirstDelivered(t, env, 50, "during the second transaction")
	h.stop()
	wantDeliveredLoggedOnce(t, h.logs.String(), "r000@", "r049@")
}

// The recipients the first MX delivered are recorded before the recipients
// it deferred go to the next MX: while the second MX stalls at the end of
// data, the queue has the first MX's 119 delivered — those of its last
// transaction too, which no further transaction of its own recorded (a
// crash then sent them the message again) — and each is logged once.
func TestDelivery_RcptCap_DeliveredRecordedBeforeTheNextMX(t *testing.T) {
	t.Parallel()
	h := newHarness(t, smtptest.Behaviour{}, mxZone("127.0.0.3", "127.0.0.4"))
	h.cfg.Delivery.DataEndTimeout.Duration = time.Hour
	rcptReplyServer(t, h, "127.0.0.3", "<r119@", "450 4.2.0 greylisted\r\n")
	second := h.server("127.0.0.4", smtptest.Behaviour{StallData: true})
	h.start()
	id := h.submit(testBody, manyRcpts(120, "example.test"))
	select {
	case <-second.Stalled():
	case <-time.After(15 * time.Second):
		t.Fatalf("r119 did not reach the second MX:\n%s", h.logs.String())
	}
	env := h.envelope(id)
	if env == nil {
		t.Fatal("the message left the queue")
	}
	wantFirstDelivered(t, env, 119, "while the second MX stalls")
	h.stop()
	wantDeliveredLoggedOnce(t, h.logs.String(), "r000@", "r100@", "r118@")
}

// The shutdown cutting the second of three transactions: the first 50 stay
// delivered, the others keep their state from before the attempt (no reply
// of the closed connection), so they are tried again after the restart.
func TestDelivery_RcptCap_ShutdownBetweenTransactions(t *testing.T) {
	t.Parallel()
	h := newHarness(t, smtptest.Behaviour{}, zone("example.test", "127.0.0.3"))
	h.cfg.Delivery.DataEndTimeout.Duration = time.Hour
	_, stalled := stallSecondServer(t, h, "127.0.0.3")
	h.start()
	id := h.submit(testBody, manyRcpts(120, "example.test"))
	select {
	case <-stalled:
	case <-time.After(15 * time.Second):
		t.Fatalf("the second transaction did not come:\n%s", h.logs.String())
	}
	h.stop()
	env := h.envelope(id)
	if env == nil {
		t.Fatal("the message left the queue")
	}
	for i, r := range env.Recipients {
		switch {
		case i < 50 && r.State != queue.Delivered:
			t.Errorf("%s: %v %q, want delivered", r.Address, r.State, r.Reply)
		case i >= 50 && (r.State != queue.Pending || r.Reply != ""):
			t.Errorf("%s: %v %q, want pending as before the attempt", r.Address, r.State, r.Reply)
		}
	}
	if !strings.Contains(h.logs.String(), "delivery cut short by the shutdown") {
		t.Errorf("no line for the cut:\n%s", h.logs.String())
	}
}

// A message to two domains, one delivered in three transactions while the
// other's server is still at it: the first domain's recipients are
// recorded (and logged) once each, between its transactions and at its
// end, not again when the group's delivered recipients are recorded before
// the attempt's end.
func TestDelivery_RcptCap_TwoDomains_EachLoggedOnce(t *testing.T) {
	t.Parallel()
	h := newHarness(t, smtptest.Behaviour{}, zone("a.test", "127.0.0.2", "b.test", "127.0.0.3"))
	h.cfg.Delivery.DataEndTimeout.Duration = time.Hour
	release := make(chan struct{})
	var once sync.Once
	t.Cleanup(func() { once.Do(func() { close(release) }) })
	plain := plainReplies(map[string]string{"STARTTLS": "502 5.5.1 no\r\n"})
	scriptedServer(t, h, "127.0.0.3", func(verb, line string) string {
		if verb == "." {
			<-release
		}
		return plain(verb, line)
	})
	h.start()
	id := h.submit(testBody, append(manyRcpts(120, "a.test"), "x@b.test"))
	h.first.Wait(t, 3)
	// a.test's group has ended when its last recipient is logged; b.test's
	// server still holds its end of data.
	if h.logs.WaitLine(15*time.Second, "msg=delivered", "rcpt=r119@a.test") == "" {
		t.Fatalf("r119@a.test not logged delivered before b.test's end:\n%s", h.logs.String())
	}
	once.Do(func() { close(release) })
	h.waitRecords(id, 1)
	if env := h.envelope(id); env != nil {
		t.Fatalf("still queued: %+v", env.Recipients)
	}
	wantDeliveredLoggedOnce(t, h.logs.String(), "r000@a.test ", "r049@a.test ", "r050@a.test ", "r119@a.test ", "x@b.test ")
}

// NOTIFY=SUCCESS recipients delivered to a server without DSN in three
// transactions: each gets its "relayed" report once — those of the first
// two transactions as they are recorded, before the next one, the last
// one's at the attempt's end — never a second one at the end.
func TestDelivery_RcptCap_SuccessReportsOnce(t *testing.T) {
	t.Parallel()
	h := newHarness(t, smtptest.Behaviour{}, zone("example.test", "127.0.0.2"))
	senderMX := h.server("127.0.0.250", smtptest.Behaviour{})
	h.start()
	success := map[int]bool{0: true, 60: true, 119: true}
	id := h.submit(testBody, manyRcpts(120, "example.test"), func(e *queue.Envelope) {
		for i := range success {
			e.Recipients[i].Notify = queue.NotifySuccess
		}
	})
	h.first.Wait(t, 3)
	h.waitRecords(id, 1)
	// Every report is queued (and logged) by the end of the attempt.
	if n := len(testlog.Lines(h.logs.String(), `msg="report queued"`, "queue_id="+id+" ")); n != 3 {
		t.Errorf("%d reports queued, want 3:\n%s", n, h.logs.String())
	}
	reports := senderMX.Wait(t, 3)
	count := map[string]int{}
	for _, m := range reports {
		for _, r := range parseBounce(t, m).Recipients {
			if r.Action != "relayed" {
				t.Errorf("%s: action %q, want relayed", r.Address(), r.Action)
			}
			count[r.Address()]++
		}
	}
	for i := range success {
		if a := fmt.Sprintf("r%03d@example.test", i); count[a] != 1 {
			t.Errorf("%s in %d reports, want 1 (all: %v)", a, count[a], count)
		}
	}
	if len(count) != len(success) || len(reports) != 3 {
		t.Errorf("%d reports for %v, want 3, one for each of r000, r060, r119", len(reports), count)
	}
}

// A first transaction whose every recipient is refused (550, then 554 to
// the pipelined DATA) leaves the server in its transaction: the next one
// starts with RSET, and its recipients are delivered on the same
// connection; the refused bounce.
func TestDelivery_RcptCap_AllRefusedTransaction_RSETBeforeTheNext(t *testing.T) {
	t.Parallel()
	h := newHarness(t, smtptest.Behaviour{}, zone("example.test", "127.0.0.3"))
	var mu sync.Mutex
	accepted := 0
	plain := plainReplies(map[string]string{"STARTTLS": "502 5.5.1 no\r\n"})
	got := scriptedServer(t, h, "127.0.0.3", func(verb, line string) string {
		mu.Lock()
		defer mu.Unlock()
		switch verb {
		case "MAIL", "RSET":
			accepted = 0
		case "RCPT":
			var n int
			if _, err := fmt.Sscanf(strings.ToLower(line), "rcpt to:<r%03d@", &n); err == nil && n < 50 {
				return "550 5.1.1 No such user\r\n"
			}
			accepted++
		case "DATA":
			if accepted == 0 {
				return "554 5.5.1 Error: no valid recipients\r\n"
			}
		}
		return plain(verb, line)
	})
	h.start()
	id := h.submit(testBody, manyRcpts(120, "example.test"))
	h.waitRecords(id, 1)
	if env := h.envelope(id); env != nil {
		t.Fatalf("still queued: %+v", env.Recipients)
	}
	s := got.String()
	if per := rcptsPerTransaction(s); !slices.Equal(per, []int{50, 50, 20}) {
		t.Errorf("RCPT commands per transaction %v, want [50 50 20]", per)
	}
	if n, rset := strings.Count(s, "EHLO"), strings.Count(s, "RSET\r\nMAIL FROM:"); n != 1 || rset != 1 {
		t.Errorf("%d sessions, %d RSET before MAIL; want 1 and 1 (after the refused transaction only):\n%s", n, rset, s)
	}
	if n := len(testlog.Lines(h.logs.String(), "msg=bounced")); n != 50 {
		t.Errorf("%d bounced, want 50", n)
	}
}

// A reload's max_recipients_per_transaction applies to the attempts that
// start after it.
func TestReload_RcptCap_AppliesToTheNextAttempt(t *testing.T) {
	t.Parallel()
	h := newHarness(t, smtptest.Behaviour{}, zone("example.test", "127.0.0.2"))
	h.cfg.Delivery.MaxRecipientsPerTransaction = 3
	h.start()
	id := h.submit(testBody, manyRcpts(4, "example.test"))
	h.waitRecords(id, 1)
	h.agent.SetConfig(h.reloaded(func(c *config.Config) { c.Delivery.MaxRecipientsPerTransaction = 2 }))
	id2 := h.submit(testBody, manyRcpts(4, "example.test"))
	h.waitRecords(id2, 1)
	var sizes []int
	for _, m := range h.first.Messages() {
		sizes = append(sizes, len(m.To))
	}
	if !slices.Equal(sizes, []int{3, 1, 2, 2}) {
		t.Errorf("recipients per transaction %v, want 3 and 1 before the reload, 2 and 2 after", sizes)
	}
}

// A server that announces LIMITS RCPTMAX=30 (RFC 9422) gets transactions
// of 30 from the start, below the cap of 50: no recipient refused with 452
// to learn it (a limit it answers 452 4.5.3 beyond).
func TestDelivery_RcptCap_LimitsRcptMax(t *testing.T) {
	t.Parallel()
	h := newHarness(t, smtptest.Behaviour{MaxRecipients: 30}, zone("example.test", "127.0.0.2"))
	h.start()
	id := h.submit(testBody, manyRcpts(120, "example.test"))
	h.waitRecords(id, 1)
	if env := h.envelope(id); env != nil {
		t.Fatalf("still queued: %+v", env.Recipients)
	}
	msgs := h.first.Messages()
	for i, m := range msgs {
		if len(m.To) != 30 || m.Conn != 1 {
			t.Errorf("transaction %d: %d recipients on connection %d, want 30 on the first", i+1, len(m.To), m.Conn)
		}
	}
	if len(msgs) != 4 {
		t.Errorf("%d transactions, want 4", len(msgs))
	}
	if n := strings.Count(strings.ToUpper(h.first.Received()), "RCPT TO:"); n != 120 {
		t.Errorf("%d RCPT commands, want 120 (none refused)", n)
	}
}

func TestLimitsRcptMax(t *testing.T) {
	t.Parallel()
	for params, want := range map[string]int{
		"RCPTMAX=30": 30, "MAILMAX=5 RCPTMAX=100": 100, "rcptmax=7": 7, "MAILMAX=5": 0,
		"RCPTMAX=0": 0, "RCPTMAX=-3": 0, "RCPTMAX=x": 0, "RCPTMAX": 0, "": 0,
	} {
		if got := limitsRcptMax(params); got != want {
			t.Errorf("limitsRcptMax(%q) = %d, want %d", params, got, want)
		}
	}
}

// rcptNumber is n of "RCPT TO:<rNNN@...", or -1.
func rcptNumber(line string) int {
	var n int
	if _, err := fmt.Sscanf(strings.ToLower(line), "rcpt to:<r%03d@", &n); err != nil {
		return -1
	}
	return n
}

// A server without enhanced status codes that answers a bare "452 Mailbox
// full" for ten recipients early in the first transaction, and takes every
// recipient after them: that is not a limit on the number of recipients
// (RFC 5321 §4.5.3.1.10: a server out of room refuses every one beyond its
// limit), so the ten are deferred with their own reply and not sent again
// in this attempt, the transactions stay at 50, and the other 190 are
// delivered. (They were taken for a recipient limit: each transaction sent
// them again first and shrank by ten, the fifth carried only them, and the
// 90 recipients not yet sent were deferred with their "Mailbox full".)
func TestDelivery_RcptCap_Bare452FollowedByAcceptance_NotALimit(t *testing.T) {
	t.Parallel()
	h := newHarness(t, smtptest.Behaviour{}, zone("example.test", "127.0.0.3"))
	plain := plainReplies(map[string]string{"STARTTLS": "502 5.5.1 no\r\n"})
	got := scriptedServer(t, h, "127.0.0.3", func(verb, line string) string {
		if n := rcptNumber(line); verb == "RCPT" && n >= 0 && n < 10 {
			return "452 Mailbox full\r\n"
		}
		return plain(verb, line)
	})
	h.start()
	rcpts := manyRcpts(200, "example.test")
	id := h.submit(testBody, rcpts)
	h.waitRecords(id, 1)
	s := got.String()
	if per := rcptsPerTransaction(s); !slices.Equal(per, []int{50, 50, 50, 50}) {
		t.Errorf("RCPT commands per transaction %v, want [50 50 50 50]", per)
	}
	env := h.envelope(id)
	if env == nil {
		t.Fatal("the message left the queue; want r000 to r009 pending")
	}
	for i, r := range env.Recipients {
		switch {
		case i < 10 && (r.State != queue.Pending || r.Code != 452 || !strings.Contains(r.Reply, "Mailbox full")):
			t.Errorf("%s: %v %d %q, want pending with its 452 Mailbox full", r.Address, r.State, r.Code, r.Reply)
		case i >= 10 && r.State != queue.Delivered:
			t.Errorf("%s: %v %d %q, want delivered", r.Address, r.State, r.Code, r.Reply)
		}
	}
	for _, r := range rcpts[:10] {
		if n := strings.Count(s, "RCPT TO:<"+r+">"); n != 1 {
			t.Errorf("%s: %d RCPT commands, want 1", r, n)
		}
	}
}

// A bare "552 exceeded storage allocation" (no enhanced status) for one
// recipient that later recipients of the transaction were accepted after
// is RFC 5321's 552, not RFC 821's "too many recipients": that recipient
// bounces with the server's 552, as Postfix has it, after one RCPT. (It was
// rewritten as a 452 and sent again in each further transaction.)
func TestDelivery_RcptCap_Bare552FollowedByAcceptance_Bounces(t *testing.T) {
	t.Parallel()
	h := newHarness(t, smtptest.Behaviour{}, zone("example.test", "127.0.0.3"))
	plain := plainReplies(map[string]string{"STARTTLS": "502 5.5.1 no\r\n"})
	got := scriptedServer(t, h, "127.0.0.3", func(verb, line string) string {
		if verb == "RCPT" && rcptNumber(line) == 5 {
			return "552 Requested mail action aborted: exceeded storage allocation\r\n"
		}
		return plain(verb, line)
	})
	senderMX := h.server("127.0.0.250", smtptest.Behaviour{})
	h.start()
	id := h.submit(testBody, manyRcpts(60, "example.test"))
	h.waitRecords(id, 1)
	s := got.String()
	if per := rcptsPerTransaction(s); !slices.Equal(per, []int{50, 10}) {
		t.Errorf("RCPT commands per transaction %v, want [50 10]", per)
	}
	if env := h.envelope(id); env != nil {
		t.Fatalf("the message is still queued: %+v", env.Recipients)
	}
	bounced := testlog.Lines(h.logs.String(), "msg=bounced", "rcpt=r005@example.test")
	if len(bounced) != 1 || !strings.Contains(bounced[0], "code=552") {
		t.Errorf("r005 not bounced with the server's 552: %q\n%s", bounced, h.logs.String())
	}
	if n := len(testlog.Lines(h.logs.String(), "msg=delivered", "@example.test ")); n != 59 {
		t.Errorf("%d delivered, want 59", n)
	}
	d := parseBounce(t, senderMX.Wait(t, 1)[0])
	if len(d.Recipients) != 1 {
		t.Fatalf("bounce for %d recipients, want r005 alone", len(d.Recipients))
	}
	if r := d.Recipients[0]; r.Address() != "r005@example.test" || r.Status != "5.0.0" ||
		r.DiagnosticCode != "smtp; 552 Requested mail action aborted: exceeded storage allocation" {
		t.Errorf("bounce: %+v, want r005 failed, 5.0.0, with the server's 552", r)
	}
}

// A bare "452 insufficient system storage" to MAIL (RFC 5321 §4.3.2) is
// the server's deferral of the whole transaction, not a recipient limit:
// its recipients go to the next MX in the same attempt, as with any 4xx to
// MAIL. (They were taken as "too many recipients" and waited for the next
// attempt.)
func TestDelivery_Bare452ToMail_NextMX(t *testing.T) {
	t.Parallel()
	h := newHarness(t, smtptest.Behaviour{}, mxZone("127.0.0.3", "127.0.0.4"))
	scriptedServer(t, h, "127.0.0.3", plainReplies(map[string]string{"STARTTLS": "502 5.5.1 no\r\n",
		"MAIL": "452 Requested action not taken: insufficient system storage\r\n"}))
	second := h.server("127.0.0.4", smtptest.Behaviour{})
	h.start()
	id := h.submit(testBody, []string{"a@example.test", "b@example.test"})
	h.waitRecords(id, 1)
	if env := h.envelope(id); env != nil {
		t.Fatalf("after one attempt the message is still queued: %+v", env.Recipients)
	}
	if msgs := second.Messages(); len(msgs) != 1 || len(msgs[0].To) != 2 {
		t.Errorf("the second MX got %+v, want one message to both", msgs)
	}
}

// Two domains of one message, each delivered in three transactions at the
// same time (their progress recorded concurrently), NOTIFY=SUCCESS for
// recipients in both, to servers without DSN: every recipient is delivered
// and logged once, and each success recipient is in exactly one report.
func TestDelivery_RcptCap_TwoDomainsConcurrently_ReportsOnce(t *testing.T) {
	t.Parallel()
	h := newHarness(t, smtptest.Behaviour{}, zone("a.test", "127.0.0.2", "b.test", "127.0.0.3"))
	b := h.server("127.0.0.3", smtptest.Behaviour{})
	senderMX := h.server("127.0.0.250", smtptest.Behaviour{})
	h.start()
	rcpts := append(manyRcpts(120, "a.test"), manyRcpts(120, "b.test")...)
	success := map[int]bool{0: true, 60: true, 119: true, 120: true, 180: true, 239: true}
	id := h.submit(testBody, rcpts, func(e *queue.Envelope) {
		for i := range success {
			e.Recipients[i].Notify = queue.NotifySuccess
		}
	})
	h.waitRecords(id, 1)
	if env := h.envelope(id); env != nil {
		t.Fatalf("still queued: %+v", env.Recipients)
	}
	got := map[string]int{}
	for _, m := range append(h.first.Messages(), b.Messages()...) {
		for _, to := range m.To {
			got[to]++
		}
	}
	logs := h.logs.String()
	for _, r := range rcpts {
		if got[r] != 1 {
			t.Errorf("%s got the message %d times, want once", r, got[r])
		}
		if n := len(testlog.Lines(logs, "msg=delivered", "rcpt="+r+" ")); n != 1 {
			t.Errorf("%s logged delivered %d times, want once", r, n)
		}
	}
	// Every report is queued by the attempt's end; they reach the sender's
	// MX one by one, each with at least one of the six recipients.
	count, total := map[string]int{}, 0
	for n := 1; total < len(success); n++ {
		count, total = map[string]int{}, 0
		for _, m := range senderMX.Wait(t, n) {
			for _, r := range parseBounce(t, m).Recipients {
				count[r.Address()]++
				total++
			}
		}
	}
	for i := range success {
		if count[rcpts[i]] != 1 {
			t.Errorf("%s in %d reports, want 1 (all: %v)", rcpts[i], count[rcpts[i]], count)
		}
	}
}

// The second of three transactions has its MAIL refused: with a 5xx its
// 50 recipients bounce with that reply and the loop goes on, the third
// transaction's recipients delivered at the first MX; a 4xx to a MAIL on a
// connection that carried a transaction is the session's answer (a server
// limiting transactions per connection, see sessionlimit_test.go), so the
// 70 left go to the next MX in the same attempt. Nobody is lost or sent the
// message twice.
func TestDelivery_RcptCap_SecondMailRefused(t *testing.T) {
	t.Parallel()
	for _, c := range []struct {
		name, reply string
		bounce      bool
	}{
		{"5xx", "550 5.7.1 sender rate limited\r\n", true},
		{"4xx", "451 4.7.1 try again later\r\n", false},
	} {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			h := newHarness(t, smtptest.Behaviour{}, mxZone("127.0.0.3", "127.0.0.4"))
			var mu sync.Mutex
			mails := 0
			plain := plainReplies(map[string]string{"STARTTLS": "502 5.5.1 no\r\n"})
			first := scriptedServer(t, h, "127.0.0.3", func(verb, line string) string {
				mu.Lock()
				defer mu.Unlock()
				if verb == "MAIL" {
					if mails++; mails == 2 {
						return c.reply
					}
				}
				return plain(verb, line)
			})
			second := h.server("127.0.0.4", smtptest.Behaviour{})
			h.start()
			rcpts := manyRcpts(120, "example.test")
			id := h.submit(testBody, rcpts)
			h.waitRecords(id, 1)
			if env := h.envelope(id); env != nil {
				t.Fatalf("after one attempt the message is still queued: %+v", env.Recipients)
			}
			wantPer := map[bool][]int{true: {50, 50, 20}, false: {50, 50}}[c.bounce]
			if per := rcptsPerTransaction(first.String()); !slices.Equal(per, wantPer) {
				t.Errorf("RCPT commands at the first MX per transaction %v, want %v", per, wantPer)
			}
			logs := h.logs.String()
			var atSecond []string
			for _, m := range second.Messages() {
				atSecond = append(atSecond, m.To...)
			}
			for i, r := range rcpts {
				mid := i >= 50 && i < 100
				bounced := len(testlog.Lines(logs, "msg=bounced", "rcpt="+r+" ")) == 1
				delivered := len(testlog.Lines(logs, "msg=delivered", "rcpt="+r+" ")) == 1
				switch {
				case mid && c.bounce && (!bounced || delivered):
					t.Errorf("%s: not bounced once", r)
				case (!mid || !c.bounce) && (!delivered || bounced):
					t.Errorf("%s: not delivered once", r)
				}
			}
			if want := map[bool][]string{true: nil, false: rcpts[50:]}[c.bounce]; !slices.Equal(atSecond, want) {
				t.Errorf("the second MX got %q, want %q", atSecond, want)
			}
		})
	}
}

// The first MX takes 30 recipients of the first transaction, refuses the
// other 20 as too many, and drops the connection after its end of data:
// those 20 go to the next MX in the same attempt with the 70 that had no
// transaction, as no further transaction at the first MX can carry them.
// (They waited for the next attempt, while the next MX took the 70.)
func TestDelivery_RcptCap_TooManyThenConnectionEnds_NextMX(t *testing.T) {
	t.Parallel()
	h := newHarness(t, smtptest.Behaviour{}, mxZone("127.0.0.3", "127.0.0.4"))
	var mu sync.Mutex
	n := 0
	plain := plainReplies(map[string]string{"STARTTLS": "502 5.5.1 no\r\n"})
	scriptedServer(t, h, "127.0.0.3", func(verb, line string) string {
		mu.Lock()
		defer mu.Unlock()
		switch verb {
		case "RCPT":
			if n++; n > 30 {
				return "452 4.5.3 Too many recipients\r\n"
			}
		case ".":
			return "250 2.0.0 ok\r\n" + closeAfter
		}
		return plain(verb, line)
	})
	second := h.server("127.0.0.4", smtptest.Behaviour{})
	h.start()
	rcpts := manyRcpts(120, "example.test")
	id := h.submit(testBody, rcpts)
	h.waitRecords(id, 1)
	if env := h.envelope(id); env != nil {
		for _, r := range env.Recipients {
			if r.State != queue.Delivered {
				t.Errorf("%s: %v %q after one attempt, want delivered", r.Address, r.State, r.Reply)
			}
		}
	}
	var to []string
	for _, m := range second.Messages() {
		to = append(to, m.To...)
	}
	slices.Sort(to)
	if !slices.Equal(to, rcpts[30:]) {
		t.Errorf("the second MX got %d recipients %q, want r030 to r119", len(to), to)
	}
}

// wantFirstDelivered checks that the first n recipients of env are
// delivered and the others pending, when says at which moment.
func wantFirstDelivered(t *testing.T, env *queue.Envelope, n int, when string) {
	t.Helper()
	for i, r := range env.Recipients {
		if want := map[bool]queue.RcptState{true: queue.Delivered, false: queue.Pending}[i < n]; r.State != want {
			t.Errorf("%s: %v %s, want %v", r.Address, r.State, when, want)
		}
	}
}

// wantDeliveredLoggedOnce checks that each recipient has exactly one
// "delivered" line in logs; each rcpt is the start of the rcpt value, up to
// a character that ends what it must match ("r000@" or "x@b.test ").
func wantDeliveredLoggedOnce(t *testing.T, logs string, rcpts ...string) {
	t.Helper()
	for _, r := range rcpts {
		if n := len(testlog.Lines(logs, "msg=delivered", "rcpt="+r)); n != 1 {
			t.Errorf("%s logged delivered %d times, want once:\n%s", r, n, logs)
		}
	}
}
