package integration_test

// Interoperability with a server no one here wrote: Postfix's smtp-sink,
// reached through the MX path (dnstest MX → 127.0.0.2:P), dumping every
// transaction to a file so the delivered bytes can be compared.

import (
	"bytes"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/mailhop/mailhop/dnsmx/dnstest"
	"github.com/mailhop/mailhop/internal/testlog"
)

// sink is a running smtp-sink that dumps each transaction to a file in dir.
type sink struct {
	addr string
	dir  string
}

// startSink runs smtp-sink on 127.0.0.2 at a kernel-chosen port.
func startSink(t *testing.T) *sink {
	t.Helper()
	bin := tool(t, "smtp-sink")
	dir := t.TempDir()
	var addr string
	var cmd *exec.Cmd
	var exited chan struct{}
	// The port was free a moment ago; another process may take it first.
	for range 5 {
		addr = freePort(t, "127.0.0.2")
		args := []string{"-d", filepath.Join(dir, "%M."), "-h", "sink.dest.test", addr, "100"}
		if os.Geteuid() == 0 {
			args = append([]string{"-u", "root"}, args...)
		}
		cmd = exec.Command(bin, args...)
		var out bytes.Buffer
		cmd.Stdout, cmd.Stderr = &out, &out
		if err := cmd.Start(); err != nil {
			t.Fatalf("starting smtp-sink: %v", err)
		}
		exited = make(chan struct{})
		go func(c *exec.Cmd, ch chan struct{}) { c.Wait(); close(ch) }(cmd, exited)
		if err := waitListening(addr, exited, 10*time.Second); err == nil {
			break
		} else {
			cmd.Process.Kill()
			<-exited
			t.Logf("smtp-sink on %s: %v: %s", addr, err, out.String())
			cmd = nil
		}
	}
	if cmd == nil {
		t.Fatalf("smtp-sink did not start")
	}
	t.Cleanup(func() {
		cmd.Process.Kill()
		<-exited
	})
	return &sink{addr: addr, dir: dir}
}

// port returns the sink's port.
func (s *sink) port(t testing.TB) int {
	_, p, err := net.SplitHostPort(s.addr)
	if err != nil {
		t.Fatal(err)
	}
	n, _ := strconv.Atoi(p)
	return n
}

// dumps returns the contents of every dump file.
func (s *sink) dumps(t testing.TB) [][]byte {
	t.Helper()
	files, err := os.ReadDir(s.dir)
	if err != nil {
		t.Fatal(err)
	}
	var out [][]byte
	for _, f := range files {
		b, err := os.ReadFile(filepath.Join(s.dir, f.Name()))
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, b)
	}
	return out
}

// sinkMessage splits a dump (LF line ends: X-* lines, smtp-sink's
// three-line Received header, the message as received, an empty line) and
// returns the message as received with CRLF line ends restored, and the
// X-Mail-Args and X-Rcpt-Args values.
func sinkMessage(t testing.TB, dump []byte) (msg []byte, mailArgs string, rcptArgs []string) {
	t.Helper()
	lines := bytes.SplitAfter(dump, []byte("\n"))
	i := 0
	for ; i < len(lines); i++ {
		l := lines[i]
		switch {
		case bytes.HasPrefix(l, []byte("X-Mail-Args: ")):
			mailArgs = string(bytes.TrimSpace(l[len("X-Mail-Args: "):]))
		case bytes.HasPrefix(l, []byte("X-Helo-Args: ")):
			if h := string(bytes.TrimSpace(l[len("X-Helo-Args: "):])); h != "mx.relay.test" {
				t.Errorf("EHLO at smtp-sink: %q, want the configured hostname mx.relay.test", h)
			}
		case bytes.HasPrefix(l, []byte("X-Rcpt-Args: ")):
			rcptArgs = append(rcptArgs, string(bytes.TrimSpace(l[len("X-Rcpt-Args: "):])))
		}
		if bytes.HasPrefix(l, []byte("Received: ")) && bytes.Contains(l, []byte("from ")) {
			break
		}
	}
	if i == len(lines) {
		t.Fatalf("smtp-sink dump without its Received header:\n%s", dump)
	}
	// smtp-sink's own Received: "Received: from ...", "\tby ... (smtp-sink) ...", "\tdate".
	i++
	for i < len(lines) && len(lines[i]) > 0 && (lines[i][0] == '\t' || lines[i][0] == ' ') {
		i++
	}
	rest := bytes.Join(lines[i:], nil)
	if !bytes.HasSuffix(rest, []byte("\n\n")) {
		t.Fatalf("smtp-sink dump does not end with an empty line (incomplete?):\n%q", rest)
	}
	rest = rest[:len(rest)-1]
	return bytes.ReplaceAll(rest, []byte("\n"), []byte("\r\n")), mailArgs, rcptArgs
}

// sinkWorld: DNS with dest.test's MX pointing at the sink's address, and
// the relay delivering to the sink's port.
func sinkWorld(t *testing.T) (*sink, *relay) {
	t.Helper()
	return sinkWorldWith(t, "", "")
}

// sinkWorldWith is sinkWorld with more [delivery] keys and a [policy]
// body ("" for the default).
func sinkWorldWith(t *testing.T, delivery, policy string) (*sink, *relay) {
	t.Helper()
	s := startSink(t)
	zone := dnstest.Zone{
		"dest.test.":      {dnstest.MX("dest.test", 10, "sink.dest.test")},
		"sink.dest.test.": {dnstest.A("sink.dest.test", "127.0.0.2")},
	}
	dnsSrv := dnstest.New(t, zone)
	r := startRelay(t, relayOpts{NoRoute: true, Policy: policy, Delivery: fmt.Sprintf(`resolvers = [%q]
mx_port = %d
retry_intervals = ["1s"]
connect_timeout = "5s"
`, dnsSrv.Addr, s.port(t)) + delivery})
	return s, r
}

func TestDeliverySMTPSinkByteIdentical(t *testing.T) {
	t.Parallel()
	s, r := sinkWorld(t)
	data := deliveryMessage("sink-one", "bob@dest.test")
	submitMail(t, r, submission{From: senderAddr, To: []string{"bob@dest.test", "carol@dest.test"}}, data)
	waitQueueEmpty(t, r, 30*time.Second)

	dumps := s.dumps(t)
	if len(dumps) != 1 {
		t.Fatalf("smtp-sink has %d transactions, want 1 (both recipients in one)", len(dumps))
	}
	msg, mailArgs, rcptArgs := sinkMessage(t, dumps[0])
	sameAsSubmitted(t, msg, data)
	if !bytes.HasPrefix([]byte(mailArgs), []byte("<"+senderAddr+">")) {
		t.Errorf("MAIL FROM at smtp-sink: %q, want <%s>", mailArgs, senderAddr)
	}
	if len(rcptArgs) != 2 || !bytes.HasPrefix([]byte(rcptArgs[0]), []byte("<bob@dest.test>")) ||
		!bytes.HasPrefix([]byte(rcptArgs[1]), []byte("<carol@dest.test>")) {
		t.Errorf("RCPT TO at smtp-sink: %q, want bob then carol", rcptArgs)
	}
	// One line each, carol's written after bob's.
	if !r.waitLine("msg=delivered", "rcpt=bob@dest.test") || !r.waitLine("msg=delivered", "rcpt=carol@dest.test") {
		t.Errorf("no delivered log lines:\n%s", r.logs.String())
	}
}

func TestDeliverySMTPSinkLoad(t *testing.T) {
	t.Parallel()
	s, r := sinkWorld(t)
	const conns, perConn = 10, 20
	want := map[string][]byte{}
	for c := range conns {
		for i := range perConn {
			id := fmt.Sprintf("load-%d-%d", c, i)
			want[id] = deliveryMessage(id, "bob@dest.test")
		}
	}
	var wg sync.WaitGroup
	errs := make(chan error, conns)
	for c := range conns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			cl, err := dialRelayClient(r.Relay)
			if err != nil {
				errs <- err
				return
			}
			defer cl.Close()
			for i := range perConn {
				id := fmt.Sprintf("load-%d-%d", c, i)
				if err := sendMailOn(cl, submission{From: senderAddr, To: []string{"bob@dest.test"}}, want[id]); err != nil {
					errs <- fmt.Errorf("%s: %w", id, err)
					return
				}
			}
			if err := cl.Quit(); err != nil {
				errs <- err
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatalf("submitting: %v", err)
	}
	waitQueueEmpty(t, r, 90*time.Second)

	got := map[string]int{}
	differ := 0
	for _, d := range s.dumps(t) {
		msg, _, _ := sinkMessage(t, d)
		var id string
		for k, w := range want {
			if bytes.Contains(msg, msgIDLine(k)) {
				id = k
				if !bytes.Equal(stripReceived(t, msg), w) {
					if differ == 0 {
						sameAsSubmitted(t, msg, w) // reports the first difference in full
					}
					differ++
				}
				break
			}
		}
		if id == "" {
			t.Errorf("smtp-sink got a message that was not submitted:\n%s", msg)
		}
		got[id]++
	}
	if differ > 0 {
		t.Errorf("%d of %d messages differ from what was submitted", differ, len(want))
	}
	for id := range want {
		if got[id] != 1 {
			t.Errorf("%s reached smtp-sink %d times, want once", id, got[id])
		}
	}
	if len(got) != len(want) {
		t.Errorf("%d distinct messages at smtp-sink, want %d", len(got), len(want))
	}
}

// A message to 120 recipients of one domain, submitted with Python's
// smtplib, reaches smtp-sink in transactions of at most
// delivery.max_recipients_per_transaction recipients (50 by default: 50, 50
// and 20; 7: seventeen of 7 and one of 1), each the message as submitted,
// every recipient in exactly one.
func TestDeliverySMTPSinkRecipientsPerTransaction(t *testing.T) {
	t.Parallel()
	for _, c := range []struct {
		name     string
		delivery string
		want     []int // recipients per transaction, in any order
	}{
		{"default", "", []int{50, 50, 20}},
		{"7", "max_recipients_per_transaction = 7\n", append(slices.Repeat([]int{7}, 17), 1)},
	} {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			s, r := sinkWorldWith(t, c.delivery, "trusted_networks = [\"127.0.0.0/8\"]\nmax_recipients = 200\n")
			var rcpts []string
			for i := range 120 {
				rcpts = append(rcpts, fmt.Sprintf("r%03d@dest.test", i))
			}
			data := deliveryMessage("sink-120-"+c.name, "list@dest.test")
			runPython(t, r.Relay, pyArgs{Mode: "plain", From: senderAddr, Rcpts: rcpts}, data)
			waitQueueEmpty(t, r, 60*time.Second)

			var sizes []int
			seen := map[string]int{}
			for _, d := range s.dumps(t) {
				msg, _, rcptArgs := sinkMessage(t, d)
				sameAsSubmitted(t, msg, data)
				sizes = append(sizes, len(rcptArgs))
				for _, a := range rcptArgs {
					addr, _, _ := strings.Cut(a, " ")
					seen[strings.Trim(addr, "<>")]++
				}
			}
			slices.Sort(sizes)
			want := slices.Sorted(slices.Values(c.want))
			if !slices.Equal(sizes, want) {
				t.Errorf("recipients per transaction at smtp-sink %v, want %v", sizes, want)
			}
			for _, a := range rcpts {
				if seen[a] != 1 {
					t.Errorf("%s in %d transactions, want 1", a, seen[a])
				}
			}
			if n := len(testlog.Lines(r.logs.String(), "msg=attempt", "domain=dest.test")); n != 1 {
				t.Errorf("%d attempt lines for dest.test, want 1", n)
			}
		})
	}
}
