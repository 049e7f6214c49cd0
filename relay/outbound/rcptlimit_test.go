package outbound

import (
	"strings"
	"testing"

	"github.com/mailhop/mailhop/queue"
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
		{&smtperr.Error{Code: 552, Enhanced: "5.5.3", Msg: "too many recipients"}, false}, // transact makes it a 452 first
		{&smtperr.Error{Code: 0, Enhanced: "4.5.3", Msg: "ours, not a server's"}, false},
		{nil, false},
	} {
		if got := tooManyRecipients(c.e); got != c.want {
			t.Errorf("tooManyRecipients(%v) = %v, want %v", c.e, got, c.want)
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
