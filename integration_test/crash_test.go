package integration_test

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"math/rand/v2"
	"net"
	"net/textproto"
	"regexp"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// crashMessage builds the message for token: a header with the token in
// Subject and the SHA-256 of the body in X-Body-SHA256, and a body of size
// bytes or a little more (CRLF lines, some starting with a dot).
func crashMessage(token string, size int) []byte {
	rng := rand.New(rand.NewPCG(uint64(len(token)), uint64(size)))
	const alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/ "
	var body bytes.Buffer
	fmt.Fprintf(&body, "token %s\r\n", token)
	for body.Len() < size {
		if rng.IntN(20) == 0 {
			body.WriteString(".\r\n..stuffed " + token + "\r\n")
			continue
		}
		n := 1 + rng.IntN(76)
		for range n {
			body.WriteByte(alphabet[rng.IntN(len(alphabet))])
		}
		if rng.IntN(5) == 0 {
			body.WriteString("äöü") // 8-bit
		}
		body.WriteString("\r\n")
	}
	sum := sha256.Sum256(body.Bytes())
	var m bytes.Buffer
	fmt.Fprintf(&m, "From: <crash@example.com>\r\nTo: <%s@example.net>\r\nSubject: crash %s\r\n"+
		"Message-ID: <%s@client.test>\r\nDate: Tue, 2 Jan 2024 03:04:05 +0100\r\nX-Body-SHA256: %s\r\n\r\n",
		token, token, token, hex.EncodeToString(sum[:]))
	m.Write(body.Bytes())
	return m.Bytes()
}

// crashClient is one SMTP connection that sends a message per transaction.
type crashClient struct {
	addr string
	raw  net.Conn
	c    *textproto.Conn
}

func (cc *crashClient) close() {
	if cc.raw != nil {
		cc.raw.Close()
		cc.raw, cc.c = nil, nil
	}
}

// step sends a command (none when line is "") and requires the reply code.
func (cc *crashClient) step(want int, line string) (string, error) {
	cc.raw.SetDeadline(time.Now().Add(30 * time.Second))
	if line != "" {
		if err := cc.c.PrintfLine("%s", line); err != nil {
			return "", err
		}
	}
	_, msg, err := cc.c.ReadResponse(want)
	return msg, err
}

// send delivers one message; it returns the queue ID when (and only when)
// the server answered 250 to the end of DATA.
func (cc *crashClient) send(rcpt string, msg []byte) (string, error) {
	if cc.c == nil {
		raw, err := net.DialTimeout("tcp", cc.addr, 5*time.Second)
		if err != nil {
			return "", err
		}
		cc.raw, cc.c = raw, textproto.NewConn(raw)
		if _, err := cc.step(220, ""); err != nil {
			cc.close()
			return "", err
		}
		if _, err := cc.step(250, "EHLO crash.client.test"); err != nil {
			cc.close()
			return "", err
		}
	}
	fail := func(err error) (string, error) { cc.close(); return "", err }
	if _, err := cc.step(250, "MAIL FROM:<crash@example.com>"); err != nil {
		return fail(err)
	}
	if _, err := cc.step(250, "RCPT TO:<"+rcpt+">"); err != nil {
		return fail(err)
	}
	if _, err := cc.step(354, "DATA"); err != nil {
		return fail(err)
	}
	cc.raw.SetDeadline(time.Now().Add(30 * time.Second))
	w := cc.c.DotWriter()
	if _, err := w.Write(msg); err != nil {
		return fail(err)
	}
	if err := w.Close(); err != nil {
		return fail(err)
	}
	reply, err := cc.step(250, "")
	if err != nil {
		return fail(err)
	}
	id := queuedID(reply)
	if id == "" {
		return fail(fmt.Errorf("250 without a queue ID: %q", reply))
	}
	return id, nil
}

// TestCrashSafety is the headline test of invariant 1: while 24 clients
// send at least 500 messages, the server is killed with SIGKILL at random
// moments and restarted; afterwards every message that got a 250 is in the
// queue exactly once and intact, and none is there twice.
func TestCrashSafety(t *testing.T) {
	t.Parallel()
	const (
		workers  = 24
		minTotal = 500
		kills    = 8
		// While the killer is at work clients go on past their quota, up
		// to maxEach, so that every kill falls on a loaded server.
		maxEach = 10 * ((minTotal + workers - 1) / workers)
	)
	quota := (minTotal + workers - 1) / workers
	r := startRelay(t, relayOpts{Extra: "[limits]\nmax_connections_per_ip = 200\nmax_connections = 1000\n"})

	type sentInfo struct {
		sum   [32]byte
		rcpt  string
		id    string // queue ID from the 250, "" when not acknowledged
		acked bool
	}
	var (
		mu       sync.Mutex
		sent     = map[string]*sentInfo{} // every token tried
		acked    atomic.Int64
		bigAcked atomic.Int64
		finished atomic.Int64 // workers done
		killing  atomic.Bool  // the killer is still at work
		stop     atomic.Bool  // give up (deadline)
		wg       sync.WaitGroup
	)
	killing.Store(true)
	// On any early exit (a failed start), stop the clients before returning.
	defer func() { stop.Store(true); wg.Wait() }()
	deadline := time.Now().Add(90 * time.Second)

	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer finished.Add(1)
			cc := &crashClient{addr: r.Relay}
			defer cc.close()
			rng := rand.New(rand.NewPCG(uint64(w), 42))
			mine := 0
			for n := 0; (mine < quota || (killing.Load() && mine < maxEach)) && !stop.Load(); n++ {
				token := fmt.Sprintf("w%02dn%05d", w, n)
				size := 1024 + rng.IntN(4*1024)
				if rng.IntN(100) < 15 {
					size = 65*1024 + rng.IntN(64*1024)
				}
				msg := crashMessage(token, size)
				info := &sentInfo{sum: sha256.Sum256(msg), rcpt: token + "@example.net"}
				mu.Lock()
				sent[token] = info
				mu.Unlock()
				id, err := cc.send(info.rcpt, msg)
				if err != nil {
					if time.Now().After(deadline) {
						stop.Store(true)
					}
					// Server gone (killed) or refusing: back off a little
					// before reconnecting; the next message gets a new token.
					time.Sleep(time.Duration(5+rng.IntN(20)) * time.Millisecond)
					continue
				}
				mu.Lock()
				info.id, info.acked = id, true
				mu.Unlock()
				mine++
				acked.Add(1)
				if size > 64*1024 {
					bigAcked.Add(1)
				}
			}
		}()
	}

	// The killer: after some progress since the last start, wait a random
	// 100–700 ms, then SIGKILL and restart (start fails the test if the
	// relay does not come up).
	krng := rand.New(rand.NewPCG(uint64(time.Now().UnixNano()), 7))
	for k := range kills {
		base := acked.Load()
		waitFor(t, fmt.Sprintf("acknowledgements after start %d", k), 30*time.Second, func() bool {
			return acked.Load() >= base+5 || finished.Load() == workers
		})
		time.Sleep(time.Duration(100+krng.IntN(600)) * time.Millisecond) // a random moment, not synchronisation
		r.kill()
		t.Logf("kill %d after %d acknowledged messages", k+1, acked.Load())
		r.start()
	}
	killing.Store(false)
	wg.Wait()
	if stop.Load() {
		t.Fatalf("clients did not reach their quota before the deadline (%d acknowledged)", acked.Load())
	}
	total := acked.Load()
	t.Logf("%d messages acknowledged (%d over 64 KiB), %d tried, %d kills", total, bigAcked.Load(), len(sent), kills)
	if total < minTotal {
		t.Fatalf("only %d messages acknowledged", total)
	}
	if bigAcked.Load() == 0 {
		t.Errorf("no message over 64 KiB was acknowledged")
	}

	// One more kill with no load, a start (recovery in the binary), the
	// admin view, then a clean stop and the queue opened directly.
	r.kill()
	r.start()
	listed := r.list()
	r.stop()
	q := r.openQueue()
	envs := q.List()
	if len(listed) != len(envs) {
		t.Errorf("queue list --json shows %d messages, the queue holds %d", len(listed), len(envs))
	}

	subjectRE := regexp.MustCompile(`(?m)^Subject: crash (\S+)\r$`)
	seen := map[string][]string{} // token → queue IDs
	for _, env := range envs {
		b := body(t, q, env.ID)
		msg := stripReceived(t, b)
		m := subjectRE.FindSubmatch(msg)
		if m == nil {
			t.Errorf("queued message %s has no crash token: %q", env.ID, msg[:min(len(msg), 200)])
			continue
		}
		token := string(m[1])
		seen[token] = append(seen[token], env.ID)
		info := sent[token]
		if info == nil {
			t.Errorf("queued message %s has unknown token %s", env.ID, token)
			continue
		}
		if sha256.Sum256(msg) != info.sum {
			h, bd, _ := bytes.Cut(msg, []byte("\r\n\r\n"))
			bs := sha256.Sum256(bd)
			t.Errorf("message %s (token %s, acknowledged %v) is not intact: %d bytes; body hash %x, header %q",
				env.ID, token, info.acked, len(msg), bs, h)
		}
		if env.From != "crash@example.com" || len(env.Recipients) != 1 || env.Recipients[0].Address != info.rcpt {
			t.Errorf("message %s (token %s): envelope from %q to %+v, want to %s", env.ID, token, env.From, env.Recipients, info.rcpt)
		}
		if info.acked && env.ID != info.id {
			t.Errorf("token %s: acknowledged as %s, queued as %s", token, info.id, env.ID)
		}
	}
	lost, unacked := 0, 0
	for token, info := range sent {
		ids := seen[token]
		if len(ids) > 1 {
			t.Errorf("token %s is queued %d times: %v", token, len(ids), ids)
		}
		if info.acked && len(ids) == 0 {
			lost++
			if lost <= 20 {
				t.Errorf("acknowledged message lost: token %s, queue ID %s", token, info.id)
			}
		}
		if !info.acked && len(ids) > 0 {
			unacked++
		}
	}
	if lost > 0 {
		t.Errorf("%d acknowledged messages lost in all", lost)
	}
	t.Logf("queue holds %d messages; %d of them were never acknowledged (allowed)", len(envs), unacked)
	if !strings.Contains(r.logs.String(), "queue recovered") {
		t.Logf("note: no 'queue recovered' line in the log")
	}
}

// TestKill9_AcceptedMessagesAreLogged: the "message accepted" line of a
// message is written before its 250, so a relay killed right after the
// replies has logged every message it acknowledged (a log writer that
// coalesced lines lost the last few milliseconds of them).
func TestKill9_AcceptedMessagesAreLogged(t *testing.T) {
	t.Parallel()
	r := startRelay(t, relayOpts{})
	c, err := dialRelayClient(r.Relay)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	var ids []string
	for i := range 30 {
		rcpt := fmt.Sprintf("u%d@example.net", i)
		if err := c.Mail("app@example.com", nil); err != nil {
			t.Fatal(err)
		}
		if err := c.Rcpt(rcpt, nil); err != nil {
			t.Fatal(err)
		}
		w, err := c.Data()
		if err != nil {
			t.Fatal(err)
		}
		w.Write(testMessage("app@example.com", rcpt, "logged", true))
		resp, err := w.CloseWithResponse()
		if err != nil {
			t.Fatal(err)
		}
		f := strings.Fields(resp.StatusText)
		ids = append(ids, f[len(f)-1]) // "OK: queued as ID"
	}
	r.kill() // returns once the relay's output is all read
	for _, id := range ids {
		if !r.hasLine(`msg="message accepted"`, "queue_id="+id) {
			t.Errorf("message %s was acknowledged but its line is not in the log", id)
		}
	}
}
