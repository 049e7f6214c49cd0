package outbound

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/mailhop/mailhop/queue"
	"github.com/mailhop/mailhop/relay/outbound/smtptest"
)

// closeAfter, at the end of a scriptedServer reply, closes the connection
// once the reply is written.
const closeAfter = "\x00close"

// scriptedServer is an SMTP server on ip that answers each command with
// reply(verb, line) (the verb in upper case; "." for the end of the data),
// records every line it reads, and takes the data after a 354. A reply
// ending in closeAfter closes the connection after it.
func scriptedServer(t *testing.T, h *harness, ip string, reply func(verb, line string) string) *lockedBuilder {
	ln := h.ports.Listen(ip)
	t.Cleanup(func() { ln.Close() })
	got := &lockedBuilder{}
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				fmt.Fprintf(c, "%s", reply("", ""))
				r := bufio.NewReader(c)
				inData := false
				for {
					l, err := r.ReadString('\n')
					if err != nil {
						return
					}
					got.add(l)
					if inData {
						if l == ".\r\n" {
							inData = false
							rep, ok := strings.CutSuffix(reply(".", l), closeAfter)
							fmt.Fprintf(c, "%s", rep)
							if ok {
								return
							}
						}
						continue
					}
					verb := strings.ToUpper(strings.Fields(l + " x")[0])
					rep, end := strings.CutSuffix(reply(verb, l), closeAfter)
					fmt.Fprintf(c, "%s", rep)
					if end {
						return
					}
					if verb == "DATA" && strings.HasPrefix(rep, "354") {
						inData = true
					}
					if verb == "QUIT" {
						return
					}
				}
			}()
		}
	}()
	return got
}

// silentServer is a server on ip that never greets (until the test ends):
// the channel it returns is closed when the first connection comes.
func silentServer(t *testing.T, h *harness, ip string) <-chan struct{} {
	connected, release := make(chan struct{}), make(chan struct{})
	var once sync.Once
	scriptedServer(t, h, ip, func(verb, line string) string {
		if verb == "" {
			once.Do(func() { close(connected) })
			<-release
		}
		return plainReplies(nil)(verb, line)
	})
	t.Cleanup(func() { close(release) })
	return connected
}

// waitConnected waits for connected (silentServer), what naming the server.
func waitConnected(t *testing.T, h *harness, connected <-chan struct{}, what string) {
	t.Helper()
	select {
	case <-connected:
	case <-time.After(15 * time.Second):
		t.Fatalf("%s was not connected to:\n%s", what, h.logs.String())
	}
}

// plainReplies answers like a plain server with PIPELINING and STARTTLS
// offered; over lets a test replace the reply to one verb.
func plainReplies(over map[string]string) func(verb, line string) string {
	return func(verb, line string) string {
		if r, ok := over[verb]; ok {
			return r
		}
		switch verb {
		case "":
			return "220 mx.example.test ESMTP\r\n"
		case "EHLO":
			return "250-mx.example.test\r\n250-PIPELINING\r\n250-8BITMIME\r\n250 STARTTLS\r\n"
		case "DATA":
			return "354 go ahead\r\n"
		case "QUIT":
			return "221 bye\r\n"
		}
		return "250 2.0.0 ok\r\n"
	}
}

// rcptLimitServer takes max recipients per transaction and answers refusal
// to the others.
func rcptLimitServer(t *testing.T, h *harness, ip string, max int, refusal string) *lockedBuilder {
	var mu sync.Mutex
	n := 0
	return scriptedServer(t, h, ip, func(verb, line string) string {
		mu.Lock()
		defer mu.Unlock()
		switch verb {
		case "MAIL", "RSET":
			n = 0
		case "RCPT":
			if n++; n > max {
				return refusal
			}
		}
		return plainReplies(map[string]string{"STARTTLS": "502 5.5.1 no\r\n"})(verb, line)
	})
}

// A server that answers DATA with 250 instead of 354 has not taken the
// message: it is deferred (4.5.0), never recorded as delivered, and the
// body is not sent.
func TestDelivery_DataAnswered250_Deferred(t *testing.T) {
	t.Parallel()
	h := newHarness(t, smtptest.Behaviour{}, zone("example.test", "127.0.0.3"))
	got := scriptedServer(t, h, "127.0.0.3", plainReplies(map[string]string{"DATA": "250 2.0.0 ok I guess\r\n", "STARTTLS": "454 4.7.0 no TLS\r\n"}))
	h.start()
	id := h.submit(testBody, []string{"a@example.test"})
	h.waitRecords(id, 1)
	h.deferredWith(id, "4.5.0")
	if strings.Contains(got.String(), "Subject:") {
		t.Errorf("the body was sent after DATA got 250:\n%s", got.String())
	}
}

// A positive reply whose code RFC 5321 does not list is read by its first
// digit (§4.2: a client "MUST be prepared to handle codes not specified in
// this document and MUST do so by interpreting the first digit only"): a
// 2xx to MAIL, RCPT or the end of data accepts, a 3xx to DATA asks for the
// body. Before, a 299 to RCPT was a 4.5.0 protocol error: that recipient
// stayed pending though the server had it (the message went to the others
// in the same transaction) and got the message again at the next attempt.
func TestDelivery_UnlistedPositiveReplies_ByFirstDigit(t *testing.T) {
	t.Parallel()
	for _, pipelining := range []bool{true, false} {
		t.Run(fmt.Sprintf("pipelining=%v", pipelining), func(t *testing.T) {
			t.Parallel()
			h := newHarness(t, smtptest.Behaviour{}, zone("example.test", "127.0.0.3"))
			ehlo := "250-mx.example.test\r\n250 8BITMIME\r\n"
			if pipelining {
				ehlo = "250-mx.example.test\r\n250-PIPELINING\r\n250 8BITMIME\r\n"
			}
			got := scriptedServer(t, h, "127.0.0.3", func(verb, line string) string {
				switch {
				case verb == "RCPT" && strings.Contains(line, "<odd@"):
					return "299 2.1.5 recipient fine\r\n"
				case verb == "DATA":
					// The scripted server reads the body after a 354 only.
					return "354 go ahead\r\n"
				}
				return plainReplies(map[string]string{"EHLO": ehlo, "MAIL": "253 2.1.0 sender fine\r\n",
					".": "259 2.0.0 kept\r\n"})(verb, line)
			})
			h.start()
			id := h.submit(testBody, []string{"a@example.test", "odd@example.test"})
			h.waitRecords(id, 1)
			if env := h.envelope(id); env != nil {
				t.Errorf("recipients %+v, want both delivered", env.Recipients)
			}
			if n := strings.Count(got.String(), "DATA\r\n"); n != 1 {
				t.Errorf("%d DATA commands, want 1:\n%s", n, got.String())
			}
		})
	}
}

// With opportunistic TLS, a server that refuses STARTTLS (454) gets the
// mail in plain text in the same session; replies that are only a code
// ("250", RFC 5321 §4.2) are replies.
func TestDelivery_STARTTLSRefused_PlainText(t *testing.T) {
	t.Parallel()
	h := newHarness(t, smtptest.Behaviour{}, zone("example.test", "127.0.0.3"))
	got := scriptedServer(t, h, "127.0.0.3", plainReplies(map[string]string{
		"STARTTLS": "454 4.7.0 TLS not available\r\n", "MAIL": "250\r\n", "RCPT": "250\r\n", ".": "250\r\n"}))
	h.start()
	id := h.submit(testBody, []string{"a@example.test"})
	h.waitRecords(id, 1)
	if o := h.outcome(id); !o.gone {
		t.Fatalf("outcome %+v, want delivered", o)
	}
	s := got.String()
	if strings.Count(s, "EHLO") != 1 || !strings.Contains(s, "STARTTLS\r\n") || !strings.Contains(s, "\r\n.\r\n") {
		t.Errorf("want one session: EHLO, STARTTLS, then the mail in plain text; got:\n%s", s)
	}
}

// A 550 with a reply line of about 2 KB (longer than RFC 5321's 512) is a
// 550: the recipient bounces, the attempt does not fail as a whole.
func TestDelivery_LongReplyLine(t *testing.T) {
	t.Parallel()
	h := newHarness(t, smtptest.Behaviour{}, zone("example.test", "127.0.0.3"))
	long := "550 5.1.1 " + strings.Repeat("no such user ", 160) + "\r\n"
	scriptedServer(t, h, "127.0.0.3", plainReplies(map[string]string{"RCPT": long, "STARTTLS": "502 5.5.1 no\r\n"}))
	h.start()
	id := h.submit(testBody, []string{"a@example.test"})
	h.waitRecords(id, 1)
	env := h.envelope(id)
	if env != nil && env.Recipients[0].State != queue.Failed {
		t.Errorf("recipient %+v, want failed (550)", env.Recipients[0])
	}
}

// deadlineWriter gives each write data_timeout, not the whole body: a peer
// that reads slowly but steadily gets a body that takes several times the
// timeout in all.
func TestDeadlineWriter_PerWrite(t *testing.T) {
	t.Parallel()
	client, server := net.Pipe()
	defer client.Close()
	read := make(chan int)
	go func() {
		defer server.Close()
		buf := make([]byte, 8<<10)
		n := 0
		for {
			time.Sleep(15 * time.Millisecond) // the slow reader under test, not synchronisation
			m, err := server.Read(buf)
			n += m
			if err != nil {
				read <- n
				return
			}
		}
	}()
	dw := &deadlineWriter{w: client, conn: client, d: 250 * time.Millisecond}
	body := bytes.Repeat([]byte("x"), 256<<10) // 32 reads of 8 KiB: about 0.5 s in all
	start := time.Now()
	// Writes of 8 KiB, each taken by one read (15 ms): with writes of
	// 32 KiB, each waited for four reads, and four sleeps stretched by a
	// loaded machine passed the 250 ms (782 ms for the whole body, with the
	// race detector and three test processes on two cores).
	_, err := io.CopyBuffer(dw, io.NewSectionReader(bytes.NewReader(body), 0, int64(len(body))), make([]byte, 8<<10))
	took := time.Since(start)
	client.Close()
	if err != nil {
		t.Fatalf("after %v: %v (a deadline for the whole body?)", took, err)
	}
	if n := <-read; n != len(body) {
		t.Errorf("the reader got %d bytes, want %d", n, len(body))
	}
	if took < 250*time.Millisecond {
		t.Skipf("the transfer took %v, not longer than one timeout: nothing shown", took)
	}
}

// A server that takes two recipients per transaction and answers 452 4.5.3
// to the rest gets the message again at once for those, on the same
// connection, until every recipient is through (RFC 5321 §4.5.3.1.10).
func TestDelivery_452TooManyRecipients_MoreTransactions(t *testing.T) {
	t.Parallel()
	h := newHarness(t, smtptest.Behaviour{}, zone("example.test", "127.0.0.3"))
	got := rcptLimitServer(t, h, "127.0.0.3", 2, "452 4.5.3 too many recipients\r\n")
	h.start()
	rcpts := []string{"a@example.test", "b@example.test", "c@example.test", "d@example.test", "e@example.test"}
	id := h.submit(testBody, rcpts)
	h.waitRecords(id, 1)
	if env := h.envelope(id); env != nil {
		t.Fatalf("after one attempt the message is still queued: %+v", env.Recipients)
	}
	s := got.String()
	if c := strings.Count(s, "\r\n.\r\n"); c != 3 {
		t.Errorf("%d transactions with data, want 3 (2+2+1 recipients):\n%s", c, s)
	}
	if c := strings.Count(s, "EHLO"); c != 1 {
		t.Errorf("%d sessions, want one", c)
	}
}

// A server that takes one recipient per transaction gets one per further
// transaction, not all of the rest each time: six recipients cost 11 RCPT
// commands (6, then 1 in each of five more transactions), not 21.
func TestDelivery_452_FurtherTransactionsKeepTheServersLimit(t *testing.T) {
	t.Parallel()
	h := newHarness(t, smtptest.Behaviour{}, zone("example.test", "127.0.0.3"))
	got := rcptLimitServer(t, h, "127.0.0.3", 1, "452 4.5.3 too many recipients\r\n")
	h.start()
	id := h.submit(testBody, []string{"a@example.test", "b@example.test", "c@example.test", "d@example.test", "e@example.test", "f@example.test"})
	h.waitRecords(id, 1)
	if env := h.envelope(id); env != nil {
		t.Fatalf("after one attempt the message is still queued: %+v", env.Recipients)
	}
	s := got.String()
	if c := strings.Count(s, "\r\n.\r\n"); c != 6 {
		t.Errorf("%d transactions with data, want 6:\n%s", c, s)
	}
	if c := strings.Count(strings.ToUpper(s), "RCPT TO:"); c != 11 {
		t.Errorf("%d RCPT commands, want 11:\n%s", c, s)
	}
}

// Network failures read as words with the stage, not as Go's socket text.
func TestStageErr_NetworkTexts(t *testing.T) {
	t.Parallel()
	op := func(e error) error { return &net.OpError{Op: "read", Net: "tcp", Err: e} }
	for _, c := range []struct {
		err       error
		enh, text string
	}{
		{op(os.ErrDeadlineExceeded), "4.4.2", "timed out during mail"},
		{&net.OpError{Op: "dial", Net: "tcp", Err: os.NewSyscallError("connect", syscall.ECONNREFUSED)}, "4.4.1", "connection refused"},
		{io.EOF, "4.4.2", "connection closed by the server during mail"},
		{op(os.NewSyscallError("read", syscall.ECONNRESET)), "4.4.2", "connection reset by the server during mail"},
		{errors.New("something odd"), "4.4.2", "mail: something odd"},
	} {
		se := stageErr("mail", c.err).err
		if se.Enhanced != c.enh || se.Msg != c.text {
			t.Errorf("%v: %s %q, want %s %q", c.err, se.Enhanced, se.Msg, c.enh, c.text)
		}
	}
}

// A server that refuses a big message in the middle of its body (552) and
// closes: the 552 is the outcome (the recipient bounces), not a broken
// pipe retried until the message expires.
func TestDelivery_EarlyReplyDuringBody(t *testing.T) {
	t.Parallel()
	h := newHarness(t, smtptest.Behaviour{}, zone("example.test", "127.0.0.3"))
	ln := h.ports.Listen("127.0.0.3")
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				r := bufio.NewReader(c)
				fmt.Fprintf(c, "220 mx.example.test\r\n")
				for {
					l, err := r.ReadString('\n')
					if err != nil {
						return
					}
					switch strings.ToUpper(strings.Fields(l + " x")[0]) {
					case "EHLO":
						fmt.Fprintf(c, "250-mx.example.test\r\n250 PIPELINING\r\n")
					case "DATA":
						fmt.Fprintf(c, "354 go\r\n")
						io.CopyN(io.Discard, r, 64<<10) // some of the body, then no more
						fmt.Fprintf(c, "552 5.3.4 message too big for this server\r\n")
						return
					default:
						fmt.Fprintf(c, "250 ok\r\n")
					}
				}
			}()
		}
	}()
	h.start()
	big := "Subject: big\r\n\r\n" + strings.Repeat(strings.Repeat("x", 998)+"\r\n", 16<<10) // 16 MB: more than the socket buffers
	id := h.submit(big, []string{"a@example.test"})
	h.waitRecords(id, 1)
	if env := h.envelope(id); env != nil && env.Recipients[0].State != queue.Failed {
		t.Errorf("recipient %+v, want failed with the 552", env.Recipients[0])
	}
}

// A host that does not answer is named in the recipient's reply, as
// Postfix names it ("connect to host[addr]:port: Connection refused").
func TestDelivery_NoAnswer_ReplyNamesTheHost(t *testing.T) {
	t.Parallel()
	h := newHarness(t, smtptest.Behaviour{}, zone("example.test", "127.0.0.9"))
	h.start()
	id := h.submit(testBody, []string{"a@example.test"})
	h.waitRecords(id, 1)
	want := fmt.Sprintf("4.4.1 mx.example.test[127.0.0.9]:%d: connection refused", h.port)
	if o := h.outcome(id); o.state != queue.Pending || o.reply != want {
		t.Errorf("outcome %+v, want pending with %q", o, want)
	}
}

// A host that refuses the session (554 in its greeting) is named in the
// recipient's reply with its own reply, code included, as Postfix says
// "host ... refused to talk to me: 554 ...": the mail is deferred (4.4.1),
// and the 554 is why.
func TestDelivery_RefusedSession_ReplyNamesHostAndReply(t *testing.T) {
	t.Parallel()
	h := newHarness(t, smtptest.Behaviour{}, zone("example.test", "127.0.0.3"))
	rawServer(t, h, "127.0.0.3", "554 5.7.1 mx.example.test no service", "unused")
	h.start()
	id := h.submit(testBody, []string{"a@example.test"})
	h.waitRecords(id, 1)
	want := fmt.Sprintf("4.4.1 mx.example.test[127.0.0.3]:%d refused the session (greeting): 554 5.7.1 mx.example.test no service", h.port)
	if o := h.outcome(id); o.state != queue.Pending || o.reply != want {
		t.Errorf("outcome %+v, want pending with %q", o, want)
	}
}

// 552 to RCPT (old servers' "too many recipients") is taken as 452: the
// rest go in a further transaction, nothing bounces.
func TestDelivery_552ToRcpt_TakenAs452(t *testing.T) {
	t.Parallel()
	h := newHarness(t, smtptest.Behaviour{}, zone("example.test", "127.0.0.3"))
	rcptLimitServer(t, h, "127.0.0.3", 2, "552 5.5.3 Too many recipients\r\n")
	h.start()
	id := h.submit(testBody, []string{"a@example.test", "b@example.test", "c@example.test", "d@example.test", "e@example.test"})
	h.waitRecords(id, 1)
	if env := h.envelope(id); env != nil {
		t.Fatalf("recipients after the attempt: %+v", env.Recipients)
	}
}

// A reply to STARTTLS that does not end is read no further than
// maxStartTLSReply octets: it was read a byte at a time into memory for the
// whole command_timeout (a hostile server: 100% of a core and 20 MB in 3 s).
func TestStartTLS_EndlessReply(t *testing.T) {
	t.Parallel()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	done := make(chan struct{})
	defer close(done)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		line, _ := bufio.NewReader(c).ReadString('\n')
		if line == "STARTTLS\r\n" {
			c.Write([]byte("220-" + strings.Repeat("x", 64<<10)))
		}
		<-done
	}()
	raw, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer raw.Close()
	_, serr := startTLS(raw, nil, 5*time.Second)
	if serr == nil || !strings.Contains(serr.err.Error(), "more than") {
		t.Fatalf("startTLS = %v, want a reply too long", serr)
	}
}

// A server that answers the end of data twice ("250", then "550") is out
// of step: its connection is not reused, so the extra 550 is not read as
// the reply to the next message's MAIL (it bounced that message, which the
// server never refused).
func TestDelivery_ExtraReply_NotReused(t *testing.T) {
	t.Parallel()
	h := newHarness(t, smtptest.Behaviour{}, zone("example.test", "127.0.0.3"))
	got := scriptedServer(t, h, "127.0.0.3", plainReplies(map[string]string{
		".": "250 2.0.0 ok\r\n550 5.7.1 stale extra reply\r\n", "STARTTLS": "502 5.5.1 no\r\n"}))
	h.start()
	id1 := h.submit(testBody, []string{"a@example.test"})
	h.waitRecords(id1, 1)
	id2 := h.submit(testBody, []string{"b@example.test"})
	h.waitRecords(id2, 1)
	if o := h.outcome(id2); !o.gone {
		t.Fatalf("second message: %+v, want delivered over a new connection", o)
	}
	if n := strings.Count(got.String(), "EHLO"); n != 2 {
		t.Errorf("%d sessions, want 2", n)
	}
}
