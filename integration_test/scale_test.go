package integration_test

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// TestScaleMillionRecipients is a load run, not part of the normal suite:
//
//	MAILHOP_SCALE=1 MAILHOP_IT_NORACE=1 go test -run TestScaleMillionRecipients -v -timeout 30m ./integration_test/
//
// It fills the queue with MESSAGES×RCPTS deferred recipients (default
// 1000×1000) pipelined over SMTP, reports the relay's resident memory, then
// kills it with SIGKILL and reports how long the restart takes until it
// listens again, and checks that every recipient is still queued.
func TestScaleMillionRecipients(t *testing.T) {
	if os.Getenv("MAILHOP_SCALE") == "" {
		t.Skip("load run: set MAILHOP_SCALE=1")
	}
	messages, rcpts := envInt("MESSAGES", 1000), envInt("RCPTS", 1000)
	r := startRelay(t, relayOpts{Policy: fmt.Sprintf("trusted_networks = [\"127.0.0.0/8\"]\nmax_recipients = %d\n", rcpts)})
	start := time.Now()
	const conns = 10
	var wg sync.WaitGroup
	errs := make(chan error, conns)
	for c := 0; c < conns; c++ {
		wg.Add(1)
		go func(c int) {
			defer wg.Done()
			for m := c; m < messages; m += conns {
				if err := sendPipelined(r.Relay, m, rcpts); err != nil {
					errs <- fmt.Errorf("message %d: %w", m, err)
					return
				}
			}
		}(c)
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	t.Logf("queued %d messages × %d recipients in %v", messages, rcpts, time.Since(start).Round(time.Millisecond))
	// Let the first delivery attempt of everything happen (the route parks
	// mail on a closed port, so each becomes deferred).
	waitFor(t, "first attempts", 10*time.Minute, func() bool {
		return strings.Count(r.logs.String(), "next_attempt=") >= messages*min(rcpts, 10) // one line per domain
	})
	rss, hwm := procMem(t, r.pid())
	t.Logf("resident memory with %d recipients queued: VmRSS %d MiB, VmHWM (peak) %d MiB", messages*rcpts, rss>>10, hwm>>10)

	r.kill()
	t0 := time.Now()
	r.start()
	t.Logf("after SIGKILL: listening again in %v", time.Since(t0).Round(time.Millisecond))
	rss2, _ := procMem(t, r.pid())
	t.Logf("resident memory after restart: %d MiB", rss2>>10)
	// What an operator checks with: the whole queue listed over the admin
	// socket, which the relay streams a message at a time.
	cmd := exec.Command(mailhopBin, "queue", "list", "--json", "--config", r.cfgPath)
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	t0 = time.Now()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	listed, pending := countListed(t, stdout)
	if err := cmd.Wait(); err != nil {
		t.Fatalf("queue list --json: %v", err)
	}
	_, hwm2 := procMem(t, r.pid())
	t.Logf("queue list --json: %d messages, %d pending recipients in %v; relay's peak resident memory since restart %d MiB",
		listed, pending, time.Since(t0).Round(time.Millisecond), hwm2>>10)
	if listed != messages || pending != messages*rcpts {
		t.Errorf("queue list --json: %d messages, %d pending recipients; want %d, %d", listed, pending, messages, messages*rcpts)
	}
	r.stop()
	q := r.openQueue()
	st := q.Stats()
	if st.Messages != messages || st.Recipients != messages*rcpts {
		t.Fatalf("after restart: %d messages, %d pending recipients; want %d, %d", st.Messages, st.Recipients, messages, messages*rcpts)
	}
	size := int64(0)
	filepath.Walk(filepath.Join(r.dir, "data", "queue"), func(_ string, fi os.FileInfo, _ error) error {
		if fi != nil && !fi.IsDir() {
			size += fi.Size()
		}
		return nil
	})
	t.Logf("queue on disk: %d MiB", size>>20)
}

// countListed reads `queue list --json` as a stream and counts messages and
// pending recipients.
func countListed(t *testing.T, r io.Reader) (msgs, pending int) {
	t.Helper()
	dec := json.NewDecoder(bufio.NewReader(r))
	if tok, err := dec.Token(); err != nil || tok != json.Delim('[') {
		t.Fatalf("queue list --json: not an array: %v %v", tok, err)
	}
	for dec.More() {
		var m struct {
			Recipients []struct{ State string } `json:"recipients"`
		}
		if err := dec.Decode(&m); err != nil {
			t.Fatalf("queue list --json: %v", err)
		}
		msgs++
		for _, rc := range m.Recipients {
			if rc.State == "pending" {
				pending++
			}
		}
	}
	return msgs, pending
}

func envInt(name string, def int) int {
	if v, err := strconv.Atoi(os.Getenv(name)); err == nil && v > 0 {
		return v
	}
	return def
}

// sendPipelined sends one message with n recipients, writing MAIL, every
// RCPT and DATA at once (PIPELINING), then reading the replies.
func sendPipelined(addr string, m, n int) error {
	c, err := net.DialTimeout("tcp", addr, 10*time.Second)
	if err != nil {
		return err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Minute))
	br := bufio.NewReader(c)
	bw := bufio.NewWriterSize(c, 64<<10)
	readReply := func() (string, error) {
		var last string
		for {
			line, err := br.ReadString('\n')
			if err != nil {
				return "", err
			}
			last = line
			if len(line) < 4 || line[3] != '-' {
				return last, nil
			}
		}
	}
	if _, err := readReply(); err != nil {
		return err
	}
	fmt.Fprintf(bw, "EHLO scale.test\r\n")
	bw.Flush()
	if _, err := readReply(); err != nil {
		return err
	}
	fmt.Fprintf(bw, "MAIL FROM:<load@example.com>\r\n")
	for i := 0; i < n; i++ {
		fmt.Fprintf(bw, "RCPT TO:<user%d-%d@d%d.scale.test>\r\n", m, i, i%10)
	}
	fmt.Fprintf(bw, "DATA\r\n")
	bw.Flush()
	for i := 0; i < n+2; i++ {
		line, err := readReply()
		if err != nil {
			return err
		}
		want := "250"
		if i == n+1 {
			want = "354"
		}
		if !strings.HasPrefix(line, want) {
			return fmt.Errorf("reply %d: %q", i, line)
		}
	}
	fmt.Fprintf(bw, "Subject: scale %d\r\nMessage-ID: <scale-%d@example.com>\r\n\r\n%s\r\n.\r\nQUIT\r\n", m, m, strings.Repeat(strings.Repeat("x", 98)+"\r\n", 10))
	bw.Flush()
	line, err := readReply()
	if err != nil {
		return err
	}
	if !strings.HasPrefix(line, "250") {
		return fmt.Errorf("after DATA: %q", line)
	}
	return nil
}

// procMem returns VmRSS and VmHWM of pid in KiB.
func procMem(t testing.TB, pid int) (rss, hwm int64) {
	t.Helper()
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(data), "\n") {
		f := strings.Fields(line)
		if len(f) < 2 {
			continue
		}
		v, _ := strconv.ParseInt(f[1], 10, 64)
		switch f[0] {
		case "VmRSS:":
			rss = v
		case "VmHWM:":
			hwm = v
		}
	}
	return rss, hwm
}
