package integration_test

import (
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/emersion/go-smtp"

	"github.com/mailhop/mailhop/dnsmx/dnstest"
	"github.com/mailhop/mailhop/relay/outbound/smtptest"
)

// startCapRelay starts w's relay as mxWorld.start does, with a [policy]
// that takes 200 recipients per message and a data_end_timeout long enough
// for a server to stall at the end of data until the test kills the relay.
func startCapRelay(w *mxWorld) *relay {
	w.t.Helper()
	d := fmt.Sprintf("resolvers = [%q]\nmx_port = %d\nretry_intervals = [\"1h\"]\n", w.dns.Addr, w.port)
	d += "connect_timeout = \"3s\"\ngreeting_timeout = \"5s\"\ncommand_timeout = \"5s\"\n"
	d += "data_init_timeout = \"5s\"\ndata_timeout = \"5s\"\ndata_end_timeout = \"60s\"\n"
	w.r = startRelay(w.t, relayOpts{Delivery: d, NoRoute: true,
		Policy: "trusted_networks = [\"127.0.0.0/8\"]\nmax_recipients = 200\n"})
	return w.r
}

// capRcpts returns r000@domain … r<n-1>@domain.
func capRcpts(n int, domain string) []string {
	out := make([]string, n)
	for i := range out {
		out[i] = fmt.Sprintf("r%03d@%s", i, domain)
	}
	return out
}

// timesDelivered counts, per address, the transactions that delivered the
// message to it (Data returned nil) over the servers.
func timesDelivered(servers ...*smtptest.Server) map[string]int {
	n := map[string]int{}
	for _, s := range servers {
		for _, m := range s.Messages() {
			for _, to := range m.To {
				n[to]++
			}
		}
	}
	return n
}

// stallingData returns a Data hook that takes the transactions before the
// nth, stalls the nth at its end of data (stalled gets a value) until the
// test ends, and takes every one once open is set.
func stallingData(t *testing.T, nth int, open *atomic.Bool) (data func(*smtptest.Message) error, stalled <-chan struct{}) {
	var mu sync.Mutex
	count := 0
	st, stop := make(chan struct{}, 4), make(chan struct{})
	t.Cleanup(func() { close(stop) }) // before the servers close
	return func(*smtptest.Message) error {
		if open.Load() {
			return nil
		}
		mu.Lock()
		count++
		n := count
		mu.Unlock()
		if n < nth {
			return nil
		}
		st <- struct{}{}
		<-stop
		return smtptest.Reply(421, "4.3.0", "closing")
	}, st
}

// A message to 120 recipients of one domain goes in transactions of 50, 50
// and 20; the relay is killed (kill -9) while the server holds the second
// one's end of data. After the restart the 70 recipients that were not
// delivered get the message (in transactions of 50 and 20); the first 50,
// delivered before the kill, do not get it again, their one NOTIFY=SUCCESS
// report is not sent twice, and each is logged "delivered" once.
func TestDeliveryRcptCapKill9DuringSecondTransaction(t *testing.T) {
	t.Parallel()
	w := newMXWorld(t, dnstest.Zone{
		"dest.test.":    {dnstest.MX("dest.test", 10, "mx.dest.test")},
		"mx.dest.test.": {dnstest.A("mx.dest.test", "127.0.0.2")},
	})
	var open atomic.Bool
	data, stalled := stallingData(t, 2, &open)
	mx := w.mx("127.0.0.2", smtptest.Behaviour{Hostname: "mx.dest.test", Data: data}) // no DSN: mailhop reports "relayed"
	r := startCapRelay(w)
	rcpts := capRcpts(120, "dest.test")
	msg := deliveryMessage("cap-kill9", "list@dest.test")
	submitMail(t, r, submission{From: senderAddr, To: rcpts,
		RcptOpts: map[string]*smtp.RcptOptions{"r010@dest.test": {Notify: []smtp.DSNNotify{smtp.DSNNotifySuccess}}}}, msg)
	select {
	case <-stalled:
	case <-time.After(30 * time.Second):
		t.Fatalf("the second transaction never came\n%s", r.logs.String())
	}
	// The first transaction's recipients are recorded before the second
	// starts: its report, queued in that commit, reaches the sender.
	waitMsgs(t, w.senderMX, 1, 20*time.Second)
	if !r.waitLine("msg=delivered", "rcpt="+senderAddr) {
		t.Fatalf("the report's delivery not recorded (a kill now may rightly send it twice)\n%s", r.logs.String())
	}
	if !r.waitLine("msg=delivered", "rcpt=r049@dest.test") {
		t.Errorf("r049 not logged delivered before the second transaction's end:\n%s", r.logs.String())
	}
	// What `queue list` shows meanwhile: the first 50 delivered, the
	// others pending with no reply yet.
	if m := queuedFor(r.list(), "r000@dest.test"); m == nil {
		t.Error("the message is not listed")
	} else {
		for i, rc := range m.Recipients {
			if want := map[bool]string{true: "delivered", false: "pending"}[i < 50]; rc.State != want || (i < 50) != (rc.Code == 250) {
				t.Errorf("queue list during the second transaction: %s %s %d %q, want %s", rc.Address, rc.State, rc.Code, rc.Reply, want)
			}
		}
	}
	r.kill()
	open.Store(true)
	r.start()
	waitQueueEmpty(t, r, 30*time.Second)
	for _, m := range mx.Messages() {
		sameAsSubmitted(t, m.Data, msg)
	}
	got := timesDelivered(mx)
	for _, a := range rcpts {
		if got[a] != 1 {
			t.Errorf("%s got the message %d times, want once", a, got[a])
		}
	}
	var sizes []int
	for _, m := range mx.Messages() {
		sizes = append(sizes, len(m.To))
	}
	if fmt.Sprint(sizes) != "[50 50 20]" {
		t.Errorf("transactions taken %v, want [50 50 20] (the first before the kill)", sizes)
	}
	if n := len(w.senderMX.Messages()); n != 1 {
		t.Errorf("the sender got %d reports, want 1 (r010's success)", n)
	}
	logs := r.logs.String()
	for _, a := range []string{"r000", "r010", "r049", "r050", "r119"} {
		if n := countLines(logs, "msg=delivered", "rcpt="+a+"@dest.test"); n != 1 {
			t.Errorf("%s logged delivered %d times, want once", a, n)
		}
	}
}

// The first MX takes 120 recipients in three transactions but defers the
// last one (450), which goes to the second MX in the same attempt; that one
// stalls at the end of data and the relay is killed (kill -9). The 19
// recipients the first MX's last transaction delivered were recorded before
// the second MX's transaction started, so after the restart only r119 gets
// the message again: nobody twice, r105's success report once. (They were
// recorded at the attempt's end only, and the kill sent them the message a
// second time.)
func TestDeliveryRcptCapKill9AtTheNextMX(t *testing.T) {
	t.Parallel()
	w := newMXWorld(t, dnstest.Zone{
		"dest.test.":     {dnstest.MX("dest.test", 10, "mx1.dest.test"), dnstest.MX("dest.test", 20, "mx2.dest.test")},
		"mx1.dest.test.": {dnstest.A("mx1.dest.test", "127.0.0.2")},
		"mx2.dest.test.": {dnstest.A("mx2.dest.test", "127.0.0.3")},
	})
	mx1 := w.mx("127.0.0.2", smtptest.Behaviour{Hostname: "mx1.dest.test", Rcpt: func(to string, _ *smtp.RcptOptions) error {
		if strings.HasPrefix(to, "r119@") {
			return smtptest.Reply(450, "4.2.0", "greylisted")
		}
		return nil
	}})
	var open atomic.Bool
	data, stalled := stallingData(t, 1, &open)
	mx2 := w.mx("127.0.0.3", smtptest.Behaviour{Hostname: "mx2.dest.test", Data: data})
	r := startCapRelay(w)
	rcpts := capRcpts(120, "dest.test")
	msg := deliveryMessage("cap-kill9-mx2", "list@dest.test")
	submitMail(t, r, submission{From: senderAddr, To: rcpts,
		RcptOpts: map[string]*smtp.RcptOptions{"r105@dest.test": {Notify: []smtp.DSNNotify{smtp.DSNNotifySuccess}}}}, msg)
	select {
	case <-stalled:
	case <-time.After(30 * time.Second):
		t.Fatalf("r119 never reached the second MX\n%s", r.logs.String())
	}
	if n := len(mx1.Messages()); n != 3 {
		t.Fatalf("the first MX took %d transactions, want 3", n)
	}
	// r105's success report, queued with it before the second MX was
	// tried, is delivered meanwhile: the kill must come after that is
	// recorded, or the report itself is in flight and may rightly come twice.
	if !r.waitLine("msg=delivered", "rcpt="+senderAddr) {
		t.Fatalf("r105's success report not delivered\n%s", r.logs.String())
	}
	r.kill()
	open.Store(true)
	r.start()
	waitQueueEmpty(t, r, 30*time.Second)
	got := timesDelivered(mx1, mx2)
	for _, a := range rcpts {
		if got[a] != 1 {
			t.Errorf("%s got the message %d times, want once", a, got[a])
		}
	}
	if n := len(w.senderMX.Messages()); n != 1 {
		t.Errorf("the sender got %d reports, want 1 (r105's success)", n)
	}
	if n := countLines(r.logs.String(), "msg=delivered", "rcpt=r105@dest.test"); n != 1 {
		t.Errorf("r105 logged delivered %d times, want once", n)
	}
}
