package outbound

import (
	"strings"
	"testing"

	"github.com/emersion/go-smtp"

	"github.com/mailhop/mailhop/queue"
	"github.com/mailhop/mailhop/relay/outbound/smtptest"
)

// Servers that take a few transactions per connection and refuse the rest
// with a 4xx (Oracle Messaging Server's "451 4.5.3 No more transactions
// allowed" past ALLOW_TRANSACTIONS_PER_SESSION, to MAIL or to every RCPT;
// KumoMTA's max_messages_per_connection), or announce it (LIMITS MAILMAX,
// RFC 9422). Found by the soak14 run: the spent connection went back to
// the pool, and the next message to the domain, handed it, was deferred a
// whole retry interval without a connection that could take it.

// A connection from the pool on which the server refuses another
// transaction is not the message's answer: the message goes over a new
// connection in the same attempt.
func TestDelivery_SessionLimit_PooledConnectionRedialled(t *testing.T) {
	t.Parallel()
	for _, c := range []struct {
		name   string
		atRcpt bool
	}{{"refused at MAIL", false}, {"refused at every RCPT", true}} {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			h := newHarness(t, smtptest.Behaviour{MailsPerConn: 1, MailsPerConnAtRcpt: c.atRcpt}, zone("example.test", "127.0.0.2"))
			h.start()
			first := h.submit(testBody, []string{"a@example.test"})
			h.waitRecords(first, 1)
			second := h.submit(testBody, []string{"b@example.test"})
			h.waitRecords(second, 1)
			if env := h.envelope(second); env != nil {
				t.Fatalf("the second message was deferred: %+v\nlog:\n%s", env.Recipients, h.logs.String())
			}
			msgs := h.first.Messages()
			if len(msgs) != 2 || msgs[1].To[0] != "b@example.test" || msgs[1].Conn != 2 {
				t.Errorf("the server got %+v, want b@example.test on a second connection", msgs)
			}
			if n := h.first.Conns(); n != 2 {
				t.Errorf("%d connections, want 2", n)
			}
		})
	}
}

// The server refuses the attempt's second transaction: the recipients left
// wait (as when a connection ends between transactions), and the spent
// connection is not kept: the next message goes over a new one at once.
func TestDelivery_SessionLimit_SpentConnectionNotPooled(t *testing.T) {
	t.Parallel()
	for _, c := range []struct {
		name   string
		atRcpt bool
	}{{"refused at MAIL", false}, {"refused at every RCPT", true}} {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			h := newHarness(t, smtptest.Behaviour{MailsPerConn: 1, MailsPerConnAtRcpt: c.atRcpt}, zone("example.test", "127.0.0.2"))
			h.cfg.Delivery.MaxRecipientsPerTransaction = 2
			h.start()
			first := h.submit(testBody, manyRcpts(3, "example.test"))
			h.waitRecords(first, 1)
			env := h.envelope(first)
			if env == nil {
				t.Fatal("the first message left the queue; want its third recipient pending")
			}
			for i, r := range env.Recipients {
				if want := queue.Delivered; i < 2 && r.State != want {
					t.Errorf("%s: %v %q, want %v", r.Address, r.State, r.Reply, want)
				}
			}
			h.rcptPendingWith(first, 2, "4.5.3 No more transactions allowed")
			second := h.submit(testBody, []string{"b@example.test"})
			h.waitRecords(second, 1)
			if env := h.envelope(second); env != nil {
				t.Fatalf("the second message was deferred: %+v\nlog:\n%s", env.Recipients, h.logs.String())
			}
			if n := h.first.Conns(); n != 2 {
				t.Errorf("%d connections, want 2 (the spent one not reused)", n)
			}
			if n := mailCommands(h.first.Received()); n != 3 {
				t.Errorf("%d MAIL commands, want 3 (two on the first connection, one on the second)", n)
			}
		})
	}
}

// A MAIL refused on a connection that carried the attempt's first
// transaction ends the session like a 421 between transactions: the
// recipients left go to the next MX in the same attempt.
func TestDelivery_SessionLimit_RestToTheNextMX(t *testing.T) {
	t.Parallel()
	h := newHarness(t, smtptest.Behaviour{}, mxZone("127.0.0.3", "127.0.0.4"))
	limited := h.server("127.0.0.3", smtptest.Behaviour{MailsPerConn: 1})
	second := h.server("127.0.0.4", smtptest.Behaviour{})
	h.cfg.Delivery.MaxRecipientsPerTransaction = 2
	h.start()
	rcpts := manyRcpts(5, "example.test")
	id := h.submit(testBody, rcpts)
	h.waitRecords(id, 1)
	if env := h.envelope(id); env != nil {
		t.Fatalf("after one attempt the message is still queued: %+v\nlog:\n%s", env.Recipients, h.logs.String())
	}
	if msgs := limited.Messages(); len(msgs) != 1 || len(msgs[0].To) != 2 {
		t.Errorf("the first MX got %+v, want one transaction of 2", msgs)
	}
	var to []string
	for _, m := range second.Messages() {
		to = append(to, m.To...)
	}
	if strings.Join(to, ",") != strings.Join(rcpts[2:], ",") {
		t.Errorf("the second MX got %q, want %q", to, rcpts[2:])
	}
}

// LIMITS MAILMAX (RFC 9422 §5.1): no transaction beyond it goes on the
// connection (the server would refuse it), the recipients left wait for the
// next attempt, and the connection is not kept for another message.
func TestDelivery_LimitsMailMax(t *testing.T) {
	t.Parallel()
	h := newHarness(t, smtptest.Behaviour{MailsPerConn: 2, AnnounceMailMax: true}, zone("example.test", "127.0.0.2"))
	h.cfg.Delivery.MaxRecipientsPerTransaction = 1
	h.start()
	first := h.submit(testBody, manyRcpts(3, "example.test"))
	h.waitRecords(first, 1)
	h.rcptPendingWith(first, 2, "LIMITS MAILMAX")
	if n := mailCommands(h.first.Received()); n != 2 {
		t.Errorf("%d MAIL commands, want 2 (the server's MAILMAX)", n)
	}
	second := h.submit(testBody, []string{"b@example.test"})
	h.waitRecords(second, 1)
	if env := h.envelope(second); env != nil {
		t.Fatalf("the second message was deferred: %+v\nlog:\n%s", env.Recipients, h.logs.String())
	}
	if n := h.first.Conns(); n != 2 {
		t.Errorf("%d connections, want 2", n)
	}
	h.q.Flush("")
	h.waitRecords(first, 2)
	if env := h.envelope(first); env != nil {
		t.Fatalf("after the second attempt the first message is still queued: %+v", env.Recipients)
	}
	if n := mailCommands(h.first.Received()); n != 4 {
		t.Errorf("%d MAIL commands in all, want 4", n)
	}
}

// A reused connection is dialled afresh once, not again and again: a server
// that refuses this sender's MAIL on any connection gets one more
// connection, and the message waits with its reply.
func TestDelivery_SessionLimit_RefusedOnTheFreshConnectionToo(t *testing.T) {
	t.Parallel()
	h := newHarness(t, smtptest.Behaviour{Mail: func(from string, _ *smtp.MailOptions) error {
		if from == "limited@sender.test" {
			return smtptest.Reply(451, "4.7.1", "Sender rate limited")
		}
		return nil
	}}, zone("example.test", "127.0.0.2"))
	h.start()
	first := h.submit(testBody, []string{"a@example.test"})
	h.waitRecords(first, 1)
	second := h.submit(testBody, []string{"b@example.test"}, func(e *queue.Envelope) { e.From = "limited@sender.test" })
	h.waitRecords(second, 1)
	h.rcptPendingWith(second, 0, "4.7.1 Sender rate limited")
	if n := h.first.Conns(); n != 2 {
		t.Errorf("%d connections, want 2 (the pooled one, then one fresh)", n)
	}
}

func TestLimitsMailMax(t *testing.T) {
	t.Parallel()
	for params, want := range map[string]int{
		"MAILMAX=2":              2,
		"RCPTMAX=30 MAILMAX=100": 100,
		"mailmax=7":              7,
		"RCPTMAX=30":             0,
		"MAILMAX=0":              0,
		"MAILMAX=-1 RCPTMAX=3":   0,
		"MAILMAX=x":              0,
		"":                       0,
	} {
		if got := limitsValue(params, "MAILMAX"); got != want {
			t.Errorf("limitsValue(%q, MAILMAX) = %d, want %d", params, got, want)
		}
	}
}

// A connection whose last transaction reached the server's MAILMAX is not
// kept either: the next message goes over a new connection without a MAIL
// the server would refuse first.
func TestDelivery_LimitsMailMax_ReachedNotPooled(t *testing.T) {
	t.Parallel()
	h := newHarness(t, smtptest.Behaviour{MailsPerConn: 1, AnnounceMailMax: true}, zone("example.test", "127.0.0.2"))
	h.start()
	for _, rcpt := range []string{"a@example.test", "b@example.test"} {
		id := h.submit(testBody, []string{rcpt})
		h.waitRecords(id, 1)
		if env := h.envelope(id); env != nil {
			t.Fatalf("%s was deferred: %+v\nlog:\n%s", rcpt, env.Recipients, h.logs.String())
		}
	}
	if n := mailCommands(h.first.Received()); n != 2 {
		t.Errorf("%d MAIL commands, want 2 (none refused)", n)
	}
	if n := h.first.Conns(); n != 2 {
		t.Errorf("%d connections, want 2", n)
	}
}
