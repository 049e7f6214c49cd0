package integration_test

// End-to-end delivery: a go-smtp client submits to the real binary, which
// finds the recipient domain's MX hosts on a loopback DNS server (dnstest)
// and delivers to scripted SMTP servers (smtptest) on 127.0.0.x, all on one
// kernel-chosen port P that the relay is told as delivery.mx_port.
//
// Addresses used:
//
//	127.0.0.1      the relay's listeners and the DNS server
//	127.0.0.2-.8   recipient MX hosts and smarthosts of a test (port P)
//	127.0.0.9      mx.sender.test, the MX of the senders' domain: bounces
//	               and success reports arrive there (port P)

import (
	"bytes"
	"crypto/tls"
	"fmt"
	"mime"
	"net"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/emersion/go-smtp"
	"github.com/miekg/dns"

	"github.com/mailhop/mailhop/dnsmx/dnstest"
	"github.com/mailhop/mailhop/internal/testlog"
	"github.com/mailhop/mailhop/internal/testpki"
	"github.com/mailhop/mailhop/internal/testport"
	"github.com/mailhop/mailhop/relay/admin"
	"github.com/mailhop/mailhop/relay/dsn"
	"github.com/mailhop/mailhop/relay/outbound/smtptest"
)

const (
	senderAddr = "alice@sender.test"
	senderMXIP = "127.0.0.9"
)

// mxWorld is one test's network: DNS, the senders' MX, the port P, and the
// relay once started.
type mxWorld struct {
	t        *testing.T
	dns      *dnstest.Server
	port     int
	senderMX *smtptest.Server // MX of sender.test: bounces arrive here
	r        *relay
	ports    *testport.Ports // P on 127.0.0.2 … 127.0.0.<mxIPs+1>
}

// mxIPs are the addresses a world keeps its port P reserved on, so that no
// other test's kernel-chosen port takes P there meanwhile.
const mxIPs = 30

func newMXWorld(t *testing.T, zone dnstest.Zone) *mxWorld {
	t.Helper()
	w := &mxWorld{t: t}
	ips := make([]string, 0, mxIPs)
	for i := 2; i <= mxIPs+1; i++ {
		ips = append(ips, fmt.Sprintf("127.0.0.%d", i))
	}
	w.ports = testport.Reserve(t, ips...)
	w.port = w.ports.Port()
	w.senderMX = w.mx(senderMXIP, smtptest.Behaviour{Hostname: "mx.sender.test"})
	z := dnstest.Zone{
		"sender.test.":    {dnstest.MX("sender.test", 10, "mx.sender.test")},
		"mx.sender.test.": {dnstest.A("mx.sender.test", senderMXIP)},
	}
	for k, v := range zone {
		z[k] = v
	}
	w.dns = dnstest.New(t, z)
	return w
}

func (w *mxWorld) addr(ip string) string { return net.JoinHostPort(ip, strconv.Itoa(w.port)) }

// mx starts a scripted SMTP server on ip:P.
func (w *mxWorld) mx(ip string, b smtptest.Behaviour) *smtptest.Server {
	w.t.Helper()
	return smtptest.NewListener(w.t, w.listen(ip), b)
}

// listen turns the reservation of ip:P into a listener, without ever
// letting the port go.
func (w *mxWorld) listen(ip string) net.Listener {
	w.t.Helper()
	return w.ports.Listen(ip)
}

// down makes ip:P refuse connections: the port is bound (so nothing else
// takes it while the test runs) but not listening.
func (w *mxWorld) down(ip string) {
	w.t.Helper()
	w.ports.Down(ip)
	if c, err := net.DialTimeout("tcp", w.addr(ip), time.Second); err == nil {
		c.Close()
		w.t.Fatalf("%s accepts connections; want it down", w.addr(ip))
	}
}

// start runs the relay: MX delivery through the test DNS on port P, with
// retry as the only retry interval, short timeouts, more [delivery] lines
// and more TOML (routes).
func (w *mxWorld) start(retry, delivery, extra string) *relay {
	w.t.Helper()
	d := fmt.Sprintf("resolvers = [%q]\nmx_port = %d\nretry_intervals = [%q]\n", w.dns.Addr, w.port, retry)
	for _, kv := range [][2]string{{"connect_timeout", "3s"}, {"greeting_timeout", "5s"}, {"command_timeout", "5s"},
		{"data_init_timeout", "5s"}, {"data_timeout", "5s"}, {"data_end_timeout", "5s"}} {
		if !strings.Contains(delivery, kv[0]+" ") {
			d += fmt.Sprintf("%s = %q\n", kv[0], kv[1])
		}
	}
	d += delivery + "\n"
	w.r = startRelay(w.t, relayOpts{Delivery: d, NoRoute: true, Extra: extra})
	return w.r
}

// submission is what a test submits.
type submission struct {
	From     string
	MailOpts *smtp.MailOptions
	To       []string
	RcptOpts map[string]*smtp.RcptOptions
}

// sendOn submits one message on an open client.
func sendMailOn(c *smtp.Client, e submission, data []byte) error {
	if err := c.Mail(e.From, e.MailOpts); err != nil {
		return fmt.Errorf("MAIL FROM:<%s>: %w", e.From, err)
	}
	for _, to := range e.To {
		if err := c.Rcpt(to, e.RcptOpts[to]); err != nil {
			return fmt.Errorf("RCPT TO:<%s>: %w", to, err)
		}
	}
	wc, err := c.Data()
	if err != nil {
		return fmt.Errorf("DATA: %w", err)
	}
	if _, err := wc.Write(data); err != nil {
		return fmt.Errorf("DATA body: %w", err)
	}
	if err := wc.Close(); err != nil {
		return fmt.Errorf("end of DATA: %w", err)
	}
	return nil
}

// dialRelay opens a go-smtp client session on the relay listener at addr
// (from 127.0.0.1, a trusted network: no AUTH needed).
func dialRelayClient(addr string) (*smtp.Client, error) {
	c, err := smtp.Dial(addr)
	if err != nil {
		return nil, err
	}
	c.CommandTimeout = 30 * time.Second
	c.SubmissionTimeout = 30 * time.Second
	if err := c.Hello("client.test"); err != nil {
		c.Close()
		return nil, err
	}
	return c, nil
}

// submit sends one message to the relay on its own connection.
func submitMail(t testing.TB, r *relay, e submission, data []byte) {
	t.Helper()
	c, err := dialRelayClient(r.Relay)
	if err != nil {
		t.Fatalf("connecting to the relay: %v", err)
	}
	defer c.Close()
	if usesDSN(e) {
		if ok, _ := c.Extension("DSN"); !ok {
			t.Fatalf("the relay does not offer the DSN extension; NOTIFY/RET/ENVID/ORCPT cannot be given")
		}
	}
	if err := sendMailOn(c, e, data); err != nil {
		t.Fatalf("submitting: %v\n--- log ---\n%s", err, r.logs.String())
	}
	if err := c.Quit(); err != nil {
		t.Fatalf("QUIT: %v", err)
	}
}

// usesDSN reports whether e carries DSN parameters (RFC 3461).
func usesDSN(e submission) bool {
	if e.MailOpts != nil && (e.MailOpts.EnvelopeID != "" || e.MailOpts.Return != "") {
		return true
	}
	for _, o := range e.RcptOpts {
		if o != nil && (len(o.Notify) > 0 || o.OriginalRecipient != "") {
			return true
		}
	}
	return false
}

// deliveryMessage returns a message with Message-ID <id@client.test> and a
// body that exercises transparency (RFC 5321 §4.5.2): lines starting with
// dots, trailing white space, a tab, an empty line, a line of 990 bytes.
func deliveryMessage(id, to string) []byte {
	var b bytes.Buffer
	fmt.Fprintf(&b, "From: Alice <%s>\r\n", senderAddr)
	fmt.Fprintf(&b, "To: <%s>\r\n", to)
	fmt.Fprintf(&b, "Subject: test %s\r\n", id)
	b.WriteString("Date: Mon, 02 Mar 2026 10:00:00 +0000\r\n")
	fmt.Fprintf(&b, "Message-ID: <%s@client.test>\r\n", id)
	b.WriteString("MIME-Version: 1.0\r\n")
	b.WriteString("Content-Type: text/plain; charset=us-ascii\r\n")
	b.WriteString("X-Folded: first\r\n\tsecond half of a folded header\r\n")
	b.WriteString("\r\n")
	b.WriteString("Hello,\r\n")
	b.WriteString(".a line that starts with a dot\r\n")
	b.WriteString("..and one with two\r\n")
	b.WriteString(".\tdot tab\r\n")
	b.WriteString("trailing spaces   \r\n")
	b.WriteString("\ttab-led line\r\n")
	b.WriteString("\r\n")
	b.WriteString(strings.Repeat("x", 990) + "\r\n")
	b.WriteString("-- \r\nend of " + id + "\r\n")
	return b.Bytes()
}

// msgIDLine returns the Message-ID line deliveryMessage writes for id.
func msgIDLine(id string) []byte { return []byte("Message-ID: <" + id + "@client.test>\r\n") }

// sameAsSubmitted fails unless got is want with one Received header
// (mailhop's) in front.
func sameAsSubmitted(t testing.TB, got, want []byte) {
	t.Helper()
	rest := stripReceived(t, got)
	if !bytes.Equal(rest, want) {
		t.Errorf("delivered message differs from the submitted one (apart from Received):\n--- got ---\n%q\n--- want ---\n%q", rest, want)
	}
	if bytes.HasPrefix(rest, []byte("Received:")) {
		t.Errorf("more than one Received header added")
	}
}

// withID returns the messages whose data carries Message-ID id.
func withMsgID(msgs []smtptest.Message, id string) []smtptest.Message {
	var out []smtptest.Message
	for _, m := range msgs {
		if bytes.Contains(m.Data, msgIDLine(id)) {
			out = append(out, m)
		}
	}
	return out
}

// waitMsgs waits (bounded) until s has at least n messages and returns them.
func waitMsgs(t testing.TB, s *smtptest.Server, n int, limit time.Duration) []smtptest.Message {
	t.Helper()
	var msgs []smtptest.Message
	waitFor(t, fmt.Sprintf("%d message(s) at %s", n, s.Addr), limit, func() bool {
		msgs = s.Messages()
		return len(msgs) >= n
	})
	return msgs
}

// queued returns the queued message with a recipient rcpt, or nil.
func queuedFor(msgs []admin.Message, rcpt string) *admin.Message {
	for i := range msgs {
		for _, rc := range msgs[i].Recipients {
			if rc.Address == rcpt {
				return &msgs[i]
			}
		}
	}
	return nil
}

// rcptState returns the state of rcpt in m ("" when absent).
func rcptState(m *admin.Message, rcpt string) string {
	for _, rc := range m.Recipients {
		if rc.Address == rcpt {
			return rc.State
		}
	}
	return ""
}

// waitQueued waits until the queue holds a message for rcpt for which cond
// holds, and returns it.
func waitQueued(t testing.TB, r *relay, rcpt, what string, limit time.Duration, cond func(*admin.Message) bool) admin.Message {
	t.Helper()
	var got admin.Message
	waitFor(t, what, limit, func() bool {
		m := queuedFor(r.list(), rcpt)
		if m == nil || !cond(m) {
			return false
		}
		got = *m
		return true
	})
	return got
}

// waitEmpty waits until the queue is empty.
func waitQueueEmpty(t testing.TB, r *relay, limit time.Duration) {
	t.Helper()
	deadline := time.Now().Add(limit)
	for {
		msgs := r.list()
		if len(msgs) == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("queue not empty after %s: %+v\n--- log ---\n%s", limit, msgs, r.logs.String())
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// logLine returns the first log line containing every part, or "".
func (r *relay) logLine(parts ...string) string {
	if !r.waitLine(parts...) { // the log comes through a pipe
		return ""
	}
	if lines := testlog.Lines(r.logs.String(), parts...); len(lines) > 0 {
		return lines[0]
	}
	return ""
}

// logField returns the value of key=value in a text log line.
func logField(line, key string) string {
	i := strings.Index(line, " "+key+"=")
	if i < 0 {
		return ""
	}
	v := line[i+len(key)+2:]
	if strings.HasPrefix(v, `"`) {
		if s, err := strconv.QuotedPrefix(v); err == nil {
			u, _ := strconv.Unquote(s)
			return u
		}
	}
	if j := strings.IndexByte(v, ' '); j >= 0 {
		v = v[:j]
	}
	return v
}

// checkReport checks that m is a delivery report from the null sender to
// the sender, a valid RFC 3464 multipart/report, and returns it parsed.
func checkReport(t testing.TB, m smtptest.Message) *dsn.Report {
	t.Helper()
	if m.From != "" {
		t.Errorf("report sent from <%s>, want the null sender <>", m.From)
	}
	if !slices.Equal(m.To, []string{senderAddr}) {
		t.Errorf("report sent to %v, want [%s]", m.To, senderAddr)
	}
	d, err := dsn.Parse(bytes.NewReader(m.Data))
	if err != nil {
		t.Fatalf("not a valid RFC 3464 report: %v\n%s", err, m.Data)
	}
	mt, params, err := mime.ParseMediaType(d.Header.Get("Content-Type"))
	if err != nil || mt != "multipart/report" || params["report-type"] != "delivery-status" {
		t.Errorf("Content-Type %q: want multipart/report; report-type=delivery-status", d.Header.Get("Content-Type"))
	}
	if !strings.HasPrefix(strings.ToLower(d.ReportingMTA), "dns;") || !strings.Contains(d.ReportingMTA, "mx.relay.test") {
		t.Errorf("Reporting-MTA %q, want dns; mx.relay.test", d.ReportingMTA)
	}
	if strings.TrimSpace(d.Human) == "" {
		t.Errorf("report has no human-readable first part")
	}
	for _, h := range []string{"From", "To", "Date", "Subject", "Message-Id"} {
		if d.Header.Get(h) == "" {
			t.Errorf("report has no %s header", h)
		}
	}
	return d
}

// reportFor returns the per-recipient block of d for addr.
func reportFor(t testing.TB, d *dsn.Report, addr string) dsn.Recipient {
	t.Helper()
	for _, r := range d.Recipients {
		if strings.EqualFold(r.Address(), addr) {
			return r
		}
	}
	t.Fatalf("report has no block for %s: %+v", addr, d.Recipients)
	return dsn.Recipient{}
}

// checkFailed checks a failed recipient block: Action failed, a 5.x.x
// Status starting with status, an smtp Diagnostic-Code carrying diag.
func checkFailed(t testing.TB, r dsn.Recipient, status, diag string) {
	t.Helper()
	if !strings.HasPrefix(strings.ToLower(r.FinalRecipient), "rfc822;") {
		t.Errorf("Final-Recipient %q, want rfc822; ...", r.FinalRecipient)
	}
	if r.Action != "failed" {
		t.Errorf("Action %q, want failed", r.Action)
	}
	if !strings.HasPrefix(r.Status, "5.") || !strings.HasPrefix(r.Status, status) {
		t.Errorf("Status %q, want %s", r.Status, status)
	}
	if diag != "" && !strings.Contains(r.DiagnosticCode, diag) {
		t.Errorf("Diagnostic-Code %q, want it to contain %q", r.DiagnosticCode, diag)
	}
}

// ---------------------------------------------------------------------

func TestDeliveryPrimaryMXDown(t *testing.T) {
	t.Parallel()
	w := newMXWorld(t, dnstest.Zone{
		"dest.test.":     {dnstest.MX("dest.test", 10, "mx1.dest.test"), dnstest.MX("dest.test", 20, "mx2.dest.test")},
		"mx1.dest.test.": {dnstest.A("mx1.dest.test", "127.0.0.2")},
		"mx2.dest.test.": {dnstest.A("mx2.dest.test", "127.0.0.3")},
	})
	w.down("127.0.0.2")
	backup := w.mx("127.0.0.3", smtptest.Behaviour{Hostname: "mx2.dest.test"})
	r := w.start("1h", "", "")

	data := deliveryMessage("primary-down", "bob@dest.test")
	submitMail(t, r, submission{From: senderAddr, To: []string{"bob@dest.test"}}, data)

	got := waitMsgs(t, backup, 1, 20*time.Second)
	m := got[0]
	if m.From != senderAddr || !slices.Equal(m.To, []string{"bob@dest.test"}) {
		t.Errorf("submission at the backup MX: from <%s> to %v", m.From, m.To)
	}
	if m.Helo != "mx.relay.test" {
		t.Errorf("EHLO %q, want the configured hostname mx.relay.test", m.Helo)
	}
	sameAsSubmitted(t, m.Data, data)
	waitQueueEmpty(t, r, 10*time.Second)
	if n := len(backup.Messages()); n != 1 {
		t.Errorf("backup MX got %d messages, want 1", n)
	}
	if n := len(w.senderMX.Messages()); n != 0 {
		t.Errorf("the sender got %d report(s), want none", n)
	}
}

func TestDeliveryEqualPreferencesShareLoad(t *testing.T) {
	t.Parallel()
	w := newMXWorld(t, dnstest.Zone{
		"dest.test.":     {dnstest.MX("dest.test", 10, "mxa.dest.test"), dnstest.MX("dest.test", 10, "mxb.dest.test")},
		"mxa.dest.test.": {dnstest.A("mxa.dest.test", "127.0.0.2")},
		"mxb.dest.test.": {dnstest.A("mxb.dest.test", "127.0.0.3")},
	})
	a := w.mx("127.0.0.2", smtptest.Behaviour{Hostname: "mxa.dest.test"})
	b := w.mx("127.0.0.3", smtptest.Behaviour{Hostname: "mxb.dest.test"})
	r := w.start("1h", "", "")

	const n = 24
	want := map[string][]byte{}
	for i := range n {
		id := fmt.Sprintf("share-%d", i)
		want[id] = deliveryMessage(id, "bob@dest.test")
		submitMail(t, r, submission{From: senderAddr, To: []string{"bob@dest.test"}}, want[id])
	}
	waitFor(t, fmt.Sprintf("%d messages over both MX hosts", n), 30*time.Second, func() bool {
		return len(a.Messages())+len(b.Messages()) >= n
	})
	waitQueueEmpty(t, r, 10*time.Second)
	all := append(a.Messages(), b.Messages()...)
	if len(all) != n {
		t.Errorf("%d messages delivered, want %d", len(all), n)
	}
	for id, data := range want {
		got := withMsgID(all, id)
		if len(got) != 1 {
			t.Errorf("%s delivered %d times, want once", id, len(got))
			continue
		}
		sameAsSubmitted(t, got[0].Data, data)
	}
	na, nb := len(a.Messages()), len(b.Messages())
	t.Logf("equal preference: %d to mxa, %d to mxb", na, nb)
	if na == 0 || nb == 0 {
		t.Errorf("equal-preference MX hosts do not share the load: mxa got %d, mxb got %d of %d", na, nb, n)
	}
}

func TestDeliveryTempFailThenRetry(t *testing.T) {
	t.Parallel()
	w := newMXWorld(t, dnstest.Zone{
		"dest.test.":    {dnstest.MX("dest.test", 10, "mx.dest.test")},
		"mx.dest.test.": {dnstest.A("mx.dest.test", "127.0.0.2")},
	})
	var open atomic.Bool
	var tries atomic.Int32
	mx := w.mx("127.0.0.2", smtptest.Behaviour{Rcpt: func(to string, _ *smtp.RcptOptions) error {
		tries.Add(1)
		if !open.Load() {
			return smtptest.Reply(451, "4.3.0", "greylisted, try again later")
		}
		return nil
	}})
	r := w.start("1s", "", "")

	data := deliveryMessage("tempfail", "bob@dest.test")
	submitMail(t, r, submission{From: senderAddr, To: []string{"bob@dest.test"}}, data)

	// Retried on schedule, staying pending, with the 451 recorded.
	m := waitQueued(t, r, "bob@dest.test", "two attempts answered 451", 30*time.Second, func(m *admin.Message) bool {
		return m.Attempts >= 2
	})
	if st := rcptState(&m, "bob@dest.test"); st != "pending" {
		t.Errorf("after 451s the recipient is %q, want pending", st)
	}
	if !strings.Contains(m.LastError, "451") && !strings.Contains(m.LastError, "greylisted") {
		t.Errorf("last_error %q does not carry the 451 reply", m.LastError)
	}
	for _, rc := range m.Recipients {
		if rc.Code != 451 {
			t.Errorf("recipient %s code %d, want 451", rc.Address, rc.Code)
		}
	}
	if len(mx.Messages()) != 0 {
		t.Fatalf("a message was recorded despite 451")
	}
	open.Store(true)
	got := waitMsgs(t, mx, 1, 20*time.Second)
	sameAsSubmitted(t, got[0].Data, data)
	waitQueueEmpty(t, r, 10*time.Second)
	if n := len(mx.Messages()); n != 1 {
		t.Errorf("MX got %d messages, want 1", n)
	}
	if n := len(w.senderMX.Messages()); n != 0 {
		t.Errorf("the sender got %d report(s) for a temporary failure, want none", n)
	}
}

func TestDeliveryPermanentFailureBounces(t *testing.T) {
	t.Parallel()
	w := newMXWorld(t, dnstest.Zone{
		"dest.test.":    {dnstest.MX("dest.test", 10, "mx.dest.test")},
		"mx.dest.test.": {dnstest.A("mx.dest.test", "127.0.0.2")},
	})
	mx := w.mx("127.0.0.2", smtptest.Behaviour{Hostname: "mx.dest.test", Rcpt: func(to string, _ *smtp.RcptOptions) error {
		return smtptest.Reply(550, "5.1.1", "no such user here")
	}})
	r := w.start("1h", "", "")

	data := deliveryMessage("bounce-5xx", "nobody@dest.test")
	submitMail(t, r, submission{From: senderAddr, MailOpts: &smtp.MailOptions{EnvelopeID: "env-5xx"},
		To: []string{"nobody@dest.test"}}, data)

	got := waitMsgs(t, w.senderMX, 1, 20*time.Second)
	d := checkReport(t, got[0])
	rc := reportFor(t, d, "nobody@dest.test")
	checkFailed(t, rc, "5.1.1", "550")
	if !strings.Contains(rc.DiagnosticCode, "no such user here") || !strings.HasPrefix(strings.ToLower(rc.DiagnosticCode), "smtp;") {
		t.Errorf("Diagnostic-Code %q, want smtp; 550 5.1.1 no such user here", rc.DiagnosticCode)
	}
	if !strings.Contains(rc.RemoteMTA, "mx.dest.test") {
		t.Errorf("Remote-MTA %q, want dns; mx.dest.test", rc.RemoteMTA)
	}
	if d.EnvelopeID != "env-5xx" {
		t.Errorf("Original-Envelope-Id %q, want env-5xx", d.EnvelopeID)
	}
	if !bytes.Contains(d.Original, msgIDLine("bounce-5xx")) {
		t.Errorf("the report does not return the original headers (Message-ID missing)")
	}
	if len(d.Recipients) != 1 {
		t.Errorf("report has %d recipient blocks, want 1", len(d.Recipients))
	}
	waitQueueEmpty(t, r, 10*time.Second)
	if n := len(mx.Messages()); n != 0 {
		t.Errorf("MX recorded %d messages, want none", n)
	}
	if n := len(w.senderMX.Messages()); n != 1 {
		t.Errorf("the sender got %d reports, want 1", n)
	}
	if !r.waitLine("msg=bounced", "rcpt=nobody@dest.test") {
		t.Errorf("no log line for the bounce")
	}
}

func TestDeliveryNullMXAndNXDOMAINBounceAtOnce(t *testing.T) {
	t.Parallel()
	w := newMXWorld(t, dnstest.Zone{
		"nullmx.test.": {dnstest.MX("nullmx.test", 0, ".")},
		// nx.test is not in the zone: NXDOMAIN.
	})
	r := w.start("1h", "", "")

	cases := []struct{ rcpt, status string }{
		{"bob@nullmx.test", "5.1.10"},
		{"bob@nx.test", "5.1.2"},
	}
	for i, c := range cases {
		submitMail(t, r, submission{From: senderAddr, To: []string{c.rcpt}}, deliveryMessage(fmt.Sprintf("dnsfail-%d", i), c.rcpt))
	}
	// Retries are an hour apart: two bounces now mean "bounced at once".
	got := waitMsgs(t, w.senderMX, 2, 20*time.Second)
	for _, c := range cases {
		found := false
		for _, m := range got {
			d := checkReport(t, m)
			for _, rc := range d.Recipients {
				if strings.EqualFold(rc.Address(), c.rcpt) {
					found = true
					checkFailed(t, rc, c.status, "")
					if rc.Status != c.status {
						t.Errorf("%s: Status %q, want %s", c.rcpt, rc.Status, c.status)
					}
				}
			}
		}
		if !found {
			t.Errorf("no bounce for %s", c.rcpt)
		}
	}
	waitQueueEmpty(t, r, 10*time.Second)
}

func TestDeliveryServfailRetries(t *testing.T) {
	t.Parallel()
	w := newMXWorld(t, dnstest.Zone{
		"dest.test.":    {dnstest.MX("dest.test", 10, "mx.dest.test")},
		"mx.dest.test.": {dnstest.A("mx.dest.test", "127.0.0.2")},
	})
	w.dns.SetRcode("dest.test", dns.RcodeServerFailure)
	mx := w.mx("127.0.0.2", smtptest.Behaviour{})
	r := w.start("1s", "", "")

	data := deliveryMessage("servfail", "bob@dest.test")
	submitMail(t, r, submission{From: senderAddr, To: []string{"bob@dest.test"}}, data)

	m := waitQueued(t, r, "bob@dest.test", "three attempts under SERVFAIL", 40*time.Second, func(m *admin.Message) bool {
		return m.Attempts >= 3
	})
	if st := rcptState(&m, "bob@dest.test"); st != "pending" {
		t.Errorf("under SERVFAIL the recipient is %q, want pending", st)
	}
	if m.LastError == "" {
		t.Errorf("no last_error recorded for SERVFAIL")
	}
	if !m.NextAttempt.After(m.Arrived) {
		t.Errorf("next_attempt %v not after arrival %v", m.NextAttempt, m.Arrived)
	}
	if n := len(w.senderMX.Messages()); n != 0 {
		t.Errorf("SERVFAIL bounced: the sender got %d report(s)", n)
	}
	if r.hasLine("msg=bounced", "rcpt=bob@dest.test") || r.hasLine("report queued", "queue_id="+m.ID) {
		t.Errorf("SERVFAIL led to a bounce:\n%s", r.logs.String())
	}
	// DNS recovers: the next retry delivers.
	w.dns.Reset("dest.test")
	got := waitMsgs(t, mx, 1, 30*time.Second)
	sameAsSubmitted(t, got[0].Data, data)
	waitQueueEmpty(t, r, 10*time.Second)
	if n := len(w.senderMX.Messages()); n != 0 {
		t.Errorf("the sender got %d report(s), want none", n)
	}
}

func TestDeliveryMixedRecipients(t *testing.T) {
	t.Parallel()
	w := newMXWorld(t, dnstest.Zone{
		"dest.test.":    {dnstest.MX("dest.test", 10, "mx.dest.test")},
		"mx.dest.test.": {dnstest.A("mx.dest.test", "127.0.0.2")},
	})
	var open atomic.Bool
	mx := w.mx("127.0.0.2", smtptest.Behaviour{Hostname: "mx.dest.test", Rcpt: func(to string, _ *smtp.RcptOptions) error {
		switch to {
		case "ok@dest.test":
			return nil
		case "bad@dest.test":
			return smtptest.Reply(550, "5.1.1", "mailbox unavailable")
		case "later@dest.test":
			if !open.Load() {
				return smtptest.Reply(451, "4.2.0", "mailbox busy")
			}
			return nil
		}
		return smtptest.Reply(550, "5.1.1", "unexpected recipient")
	}})
	r := w.start("1s", "", "")

	rcpts := []string{"ok@dest.test", "bad@dest.test", "later@dest.test"}
	data := deliveryMessage("mixed", "ok@dest.test")
	submitMail(t, r, submission{From: senderAddr, To: rcpts}, data)

	// After the first attempt: ok delivered, bad failed (and bounced),
	// later pending.
	m := waitQueued(t, r, "later@dest.test", "the first attempt recorded", 20*time.Second, func(m *admin.Message) bool {
		return m.Attempts >= 1 && rcptState(m, "ok@dest.test") == "delivered"
	})
	for rc, want := range map[string]string{"ok@dest.test": "delivered", "bad@dest.test": "failed", "later@dest.test": "pending"} {
		if got := rcptState(&m, rc); got != want {
			t.Errorf("%s is %q after the first attempt, want %q", rc, got, want)
		}
	}
	first := waitMsgs(t, mx, 1, 10*time.Second)
	if !slices.Equal(first[0].To, []string{"ok@dest.test"}) {
		t.Errorf("first delivery to %v, want [ok@dest.test]", first[0].To)
	}
	sameAsSubmitted(t, first[0].Data, data)

	bounces := waitMsgs(t, w.senderMX, 1, 10*time.Second)
	d := checkReport(t, bounces[0])
	if len(d.Recipients) != 1 {
		t.Errorf("the bounce lists %d recipients, want only bad@dest.test: %+v", len(d.Recipients), d.Recipients)
	}
	checkFailed(t, reportFor(t, d, "bad@dest.test"), "5.1.1", "550")

	open.Store(true)
	all := waitMsgs(t, mx, 2, 20*time.Second)
	if !slices.Equal(all[1].To, []string{"later@dest.test"}) {
		t.Errorf("retry delivered to %v, want only [later@dest.test]", all[1].To)
	}
	sameAsSubmitted(t, all[1].Data, data)
	waitQueueEmpty(t, r, 10*time.Second)
	if n := len(mx.Messages()); n != 2 {
		t.Errorf("MX got %d transactions, want 2 (ok once, later once)", n)
	}
	for _, msg := range mx.Messages() {
		if slices.Contains(msg.To, "bad@dest.test") {
			t.Errorf("bad@dest.test was delivered")
		}
	}
	if n := len(w.senderMX.Messages()); n != 1 {
		t.Errorf("the sender got %d reports, want exactly 1 (the 550)", n)
	}
}

func TestDeliveryNotifyNever(t *testing.T) {
	t.Parallel()
	w := newMXWorld(t, dnstest.Zone{
		"dest.test.":    {dnstest.MX("dest.test", 10, "mx.dest.test")},
		"mx.dest.test.": {dnstest.A("mx.dest.test", "127.0.0.2")},
	})
	w.mx("127.0.0.2", smtptest.Behaviour{Rcpt: func(to string, _ *smtp.RcptOptions) error {
		return smtptest.Reply(550, "5.1.1", "no such user")
	}})
	r := w.start("1h", "", "")

	submitMail(t, r, submission{From: senderAddr, To: []string{"quiet@dest.test"},
		RcptOpts: map[string]*smtp.RcptOptions{"quiet@dest.test": {Notify: []smtp.DSNNotify{smtp.DSNNotifyNever}}}},
		deliveryMessage("never", "quiet@dest.test"))

	// The outcome is logged after any report is queued (record: reports,
	// then Done, then log lines), so once it is logged and the queue is
	// empty, a report would have been delivered or still be queued.
	var line string
	waitFor(t, "the bounce of quiet@dest.test logged", 20*time.Second, func() bool {
		line = r.logLine("msg=bounced", "rcpt=quiet@dest.test")
		return line != ""
	})
	id := logField(line, "queue_id")
	waitQueueEmpty(t, r, 10*time.Second)
	if id == "" || r.hasLine("report queued", "queue_id="+id) {
		t.Errorf("NOTIFY=NEVER: a report was queued (queue id %q):\n%s", id, r.logs.String())
	}
	// A later message to the sender must be the first thing it receives.
	later := deliveryMessage("after-never", senderAddr)
	submitMail(t, r, submission{From: "carol@client.test", To: []string{senderAddr}}, later)
	got := waitMsgs(t, w.senderMX, 1, 20*time.Second)
	waitQueueEmpty(t, r, 10*time.Second)
	got = w.senderMX.Messages()
	if len(got) != 1 || !bytes.Contains(got[0].Data, msgIDLine("after-never")) {
		for _, m := range got {
			t.Logf("sender received from <%s>:\n%s", m.From, m.Data)
		}
		t.Fatalf("NOTIFY=NEVER: the sender received %d messages, want only the later one", len(got))
	}
	sameAsSubmitted(t, got[0].Data, later)
}

func TestDeliveryNotifySuccess(t *testing.T) {
	t.Parallel()
	t.Run("relayed", func(t *testing.T) {
		t.Parallel()
		w := newMXWorld(t, dnstest.Zone{
			"dest.test.":    {dnstest.MX("dest.test", 10, "mx.dest.test")},
			"mx.dest.test.": {dnstest.A("mx.dest.test", "127.0.0.2")},
		})
		mx := w.mx("127.0.0.2", smtptest.Behaviour{Hostname: "mx.dest.test"}) // no DSN extension
		r := w.start("1h", "", "")
		data := deliveryMessage("success-relayed", "bob@dest.test")
		submitMail(t, r, submission{From: senderAddr, MailOpts: &smtp.MailOptions{EnvelopeID: "env-ok", Return: smtp.DSNReturnHeaders},
			To: []string{"bob@dest.test"},
			RcptOpts: map[string]*smtp.RcptOptions{"bob@dest.test": {Notify: []smtp.DSNNotify{smtp.DSNNotifySuccess},
				OriginalRecipientType: smtp.DSNAddressTypeRFC822, OriginalRecipient: "bob@dest.test"}}},
			data)
		got := waitMsgs(t, mx, 1, 20*time.Second)
		sameAsSubmitted(t, got[0].Data, data)
		reps := waitMsgs(t, w.senderMX, 1, 20*time.Second)
		d := checkReport(t, reps[0])
		rc := reportFor(t, d, "bob@dest.test")
		if rc.Action != "relayed" {
			t.Errorf("Action %q, want relayed (the MX has no DSN extension)", rc.Action)
		}
		if !strings.HasPrefix(rc.Status, "2.") {
			t.Errorf("Status %q, want 2.x.x", rc.Status)
		}
		if !strings.Contains(rc.OriginalRecipient, "bob@dest.test") {
			t.Errorf("Original-Recipient %q, want rfc822; bob@dest.test", rc.OriginalRecipient)
		}
		if d.EnvelopeID != "env-ok" {
			t.Errorf("Original-Envelope-Id %q, want env-ok", d.EnvelopeID)
		}
		waitQueueEmpty(t, r, 10*time.Second)
		if n := len(w.senderMX.Messages()); n != 1 {
			t.Errorf("the sender got %d reports, want 1", n)
		}
	})
	t.Run("passed on", func(t *testing.T) {
		t.Parallel()
		w := newMXWorld(t, dnstest.Zone{
			"dest.test.":    {dnstest.MX("dest.test", 10, "mx.dest.test")},
			"mx.dest.test.": {dnstest.A("mx.dest.test", "127.0.0.2")},
		})
		mx := w.mx("127.0.0.2", smtptest.Behaviour{Hostname: "mx.dest.test", DSN: true})
		r := w.start("1h", "", "")
		data := deliveryMessage("success-dsn", "bob@dest.test")
		submitMail(t, r, submission{From: senderAddr, MailOpts: &smtp.MailOptions{EnvelopeID: "env-dsn", Return: smtp.DSNReturnFull},
			To: []string{"bob@dest.test"},
			RcptOpts: map[string]*smtp.RcptOptions{"bob@dest.test": {Notify: []smtp.DSNNotify{smtp.DSNNotifySuccess, smtp.DSNNotifyFailure},
				OriginalRecipientType: smtp.DSNAddressTypeRFC822, OriginalRecipient: "orig@dest.test"}}},
			data)
		got := waitMsgs(t, mx, 1, 20*time.Second)
		m := got[0]
		sameAsSubmitted(t, m.Data, data)
		if m.MailOpts.EnvelopeID != "env-dsn" || m.MailOpts.Return != smtp.DSNReturnFull {
			t.Errorf("MAIL parameters not passed on: ENVID %q RET %q", m.MailOpts.EnvelopeID, m.MailOpts.Return)
		}
		if len(m.RcptOpts) != 1 {
			t.Fatalf("rcpt options: %+v", m.RcptOpts)
		}
		ro := m.RcptOpts[0]
		slices.Sort(ro.Notify)
		if !slices.Equal(ro.Notify, []smtp.DSNNotify{smtp.DSNNotifyFailure, smtp.DSNNotifySuccess}) {
			t.Errorf("NOTIFY passed on as %v, want SUCCESS,FAILURE", ro.Notify)
		}
		if ro.OriginalRecipient != "orig@dest.test" {
			t.Errorf("ORCPT passed on as %q (%s), want orig@dest.test", ro.OriginalRecipient, ro.OriginalRecipientType)
		}
		waitQueueEmpty(t, r, 10*time.Second)
		// RFC 3461 leaves the success report to the next server when it
		// has DSN; any report sent here must at least not say "relayed".
		for _, rep := range w.senderMX.Messages() {
			d := checkReport(t, rep)
			if rc := reportFor(t, d, "bob@dest.test"); rc.Action == "relayed" || rc.Action == "failed" {
				t.Errorf("report Action %q for a delivery to a DSN server", rc.Action)
			}
		}
	})
}

// TestDeliveryNotifySuccessKill9WhileOtherDomainStalls: a message to two
// domains, the recipient of the fast one with NOTIFY=SUCCESS, the other
// domain's server stalling after the data. The fast domain's outcome and
// its success report are recorded as soon as its transaction ends, so a
// kill -9 while the other stalls does not send the message to the fast
// domain again after the restart, nor a second report. (They waited for the
// whole attempt's end: every kill meanwhile meant one more copy.) Its
// "delivered" line is logged then too, once: it was logged at the attempt's
// end only, so after the kill it was never logged.
func TestDeliveryNotifySuccessKill9WhileOtherDomainStalls(t *testing.T) {
	t.Parallel()
	w := newMXWorld(t, dnstest.Zone{
		"fast.test.":    {dnstest.MX("fast.test", 10, "mx.fast.test")},
		"mx.fast.test.": {dnstest.A("mx.fast.test", "127.0.0.2")},
		"slow.test.":    {dnstest.MX("slow.test", 10, "mx.slow.test")},
		"mx.slow.test.": {dnstest.A("mx.slow.test", "127.0.0.3")},
	})
	fast := w.mx("127.0.0.2", smtptest.Behaviour{Hostname: "mx.fast.test"}) // no DSN: mailhop reports "relayed"
	var open atomic.Bool
	stalled, stop := make(chan struct{}, 4), make(chan struct{})
	slow := w.mx("127.0.0.3", smtptest.Behaviour{Hostname: "mx.slow.test", Data: func(*smtptest.Message) error {
		if open.Load() {
			return nil
		}
		stalled <- struct{}{}
		<-stop
		return smtptest.Reply(421, "4.3.0", "closing")
	}})
	t.Cleanup(func() { close(stop) }) // before the servers close
	r := w.start("1h", `data_end_timeout = "60s"`, "")
	data := deliveryMessage("success-kill9", "bob@fast.test")
	submitMail(t, r, submission{From: senderAddr, To: []string{"bob@fast.test", "carol@slow.test"},
		RcptOpts: map[string]*smtp.RcptOptions{"bob@fast.test": {Notify: []smtp.DSNNotify{smtp.DSNNotifySuccess}}}},
		data)
	select {
	case <-stalled:
	case <-time.After(20 * time.Second):
		t.Fatalf("slow.test never got the message\n%s", r.logs.String())
	}
	sameAsSubmitted(t, waitMsgs(t, fast, 1, 20*time.Second)[0].Data, data)
	// The report is queued in the commit that records bob delivered:
	// it reaching the sender while slow.test stalls shows that commit made.
	reps := waitMsgs(t, w.senderMX, 1, 20*time.Second)
	if rc := reportFor(t, checkReport(t, reps[0]), "bob@fast.test"); rc.Action != "relayed" {
		t.Errorf("report Action %q, want relayed", rc.Action)
	}
	if !r.waitLine("msg=delivered", "rcpt=bob@fast.test") {
		t.Errorf("no 'delivered' line for bob@fast.test while slow.test stalls:\n%s", r.logs.String())
	}
	// The report's own delivery is recorded (then logged) after the
	// sender's server took it: killed before, the relay sends it again,
	// as it must when it cannot know the server took it.
	if !r.waitLine("msg=delivered", "rcpt="+senderAddr) {
		t.Errorf("the report's delivery to %s not logged:\n%s", senderAddr, r.logs.String())
	}
	r.kill()
	open.Store(true)
	r.start()
	got := waitMsgs(t, slow, 1, 20*time.Second)
	sameAsSubmitted(t, got[0].Data, data)
	waitQueueEmpty(t, r, 10*time.Second)
	if n := len(fast.Messages()); n != 1 {
		t.Errorf("fast.test received the message %d times, want once", n)
	}
	if n := len(w.senderMX.Messages()); n != 1 {
		t.Errorf("the sender got %d success reports, want 1", n)
	}
	if n := countLines(r.logs.String(), "msg=delivered", "rcpt=bob@fast.test"); n != 1 {
		t.Errorf("%d 'delivered' lines for bob@fast.test in all, want 1:\n%s", n, r.logs.String())
	}
}

// ---------------------------------------------------------------------
// Smarthost routes with TLS and AUTH.

// testPKI is a private CA and a server certificate it signed for
// 127.0.0.1-127.0.0.9 and localhost.
type testPKI struct {
	caFile string
	server tls.Certificate
}

func newTestPKI(t testing.TB, name string) *testPKI {
	t.Helper()
	ca := testpki.NewCA(t)
	names := []string{"localhost"}
	for i := 1; i <= 9; i++ {
		names = append(names, fmt.Sprintf("127.0.0.%d", i))
	}
	return &testPKI{caFile: ca.File, server: ca.Issue(t, names...)}
}

func (p *testPKI) tlsConfig() *tls.Config {
	return &tls.Config{Certificates: []tls.Certificate{p.server}, MinVersion: tls.VersionTLS12}
}

func TestDeliverySmarthostAuthStartTLSFailover(t *testing.T) {
	t.Parallel()
	// No DNS for dest.test at all: the route must not look up MX records.
	w := newMXWorld(t, nil)
	pki := newTestPKI(t, "smarthost")
	w.down("127.0.0.2")
	users := map[string]string{"relayuser": "relay-secret"}
	sh := w.mx("127.0.0.3", smtptest.Behaviour{Hostname: "smarthost.test", TLS: pki.tlsConfig(), Users: users})
	route := fmt.Sprintf(`[[route]]
domains = ["dest.test"]
smarthost = [%q, %q]
tls = "starttls"
ca_file = %q
username = "relayuser"
password = "relay-secret"
`, w.addr("127.0.0.2"), w.addr("127.0.0.3"), pki.caFile)
	r := w.start("1h", "", route)

	data := deliveryMessage("smarthost", "bob@dest.test")
	submitMail(t, r, submission{From: senderAddr, To: []string{"bob@dest.test"}}, data)
	got := waitMsgs(t, sh, 1, 20*time.Second)
	m := got[0]
	if !m.TLS {
		t.Errorf("delivered to the smarthost without TLS")
	}
	if m.User != "relayuser" {
		t.Errorf("authenticated as %q, want relayuser", m.User)
	}
	if m.From != senderAddr || !slices.Equal(m.To, []string{"bob@dest.test"}) {
		t.Errorf("submission at the smarthost: from <%s> to %v", m.From, m.To)
	}
	sameAsSubmitted(t, m.Data, data)
	waitQueueEmpty(t, r, 10*time.Second)
}

// TestDeliveryRouteUnicodeDomain: a route whose domain is written in Unicode
// takes the mail to that domain in either spelling: its A-label, and its
// U-label in an SMTPUTF8 message. No DNS: the route must not look up MX.
func TestDeliveryRouteUnicodeDomain(t *testing.T) {
	t.Parallel()
	w := newMXWorld(t, nil)
	sh := w.mx("127.0.0.2", smtptest.Behaviour{Hostname: "smarthost.test", SMTPUTF8: true})
	r := w.start("1h", "", fmt.Sprintf("[[route]]\ndomains = [\"Bücher.example\"]\nsmarthost = %q\ntls = \"none\"\n", w.addr("127.0.0.2")))

	submitMail(t, r, submission{From: senderAddr, To: []string{"ann@xn--bcher-kva.example"}}, deliveryMessage("alabel", "ann@xn--bcher-kva.example"))
	submitMail(t, r, submission{From: senderAddr, MailOpts: &smtp.MailOptions{UTF8: true}, To: []string{"bob@bücher.example"}},
		deliveryMessage("ulabel", "bob@bücher.example"))
	waitMsgs(t, sh, 2, 20*time.Second)
	for _, to := range []string{"ann@xn--bcher-kva.example", "bob@bücher.example"} {
		if !slices.ContainsFunc(sh.Messages(), func(m smtptest.Message) bool { return slices.Equal(m.To, []string{to}) }) {
			t.Errorf("no message to %s at the smarthost", to)
		}
	}
	waitQueueEmpty(t, r, 10*time.Second)
}

func TestDeliverySmarthostUntrustedCertificate(t *testing.T) {
	t.Parallel()
	w := newMXWorld(t, nil)
	trusted := newTestPKI(t, "trusted")
	other := newTestPKI(t, "other")
	users := map[string]string{"relayuser": "relay-secret"}
	// The smarthost shows a certificate from a CA the route does not trust.
	sh := w.mx("127.0.0.2", smtptest.Behaviour{TLS: other.tlsConfig(), Users: users})
	route := fmt.Sprintf(`[[route]]
domains = ["dest.test"]
smarthost = %q
tls = "starttls"
ca_file = %q
username = "relayuser"
password = "relay-secret"
`, w.addr("127.0.0.2"), trusted.caFile)
	r := w.start("1s", "", route)

	submitMail(t, r, submission{From: senderAddr, To: []string{"bob@dest.test"}}, deliveryMessage("untrusted", "bob@dest.test"))
	m := waitQueued(t, r, "bob@dest.test", "two failed attempts", 30*time.Second, func(m *admin.Message) bool {
		return m.Attempts >= 2
	})
	if st := rcptState(&m, "bob@dest.test"); st != "pending" {
		t.Errorf("recipient %q, want pending (a certificate problem is temporary)", st)
	}
	if n := len(sh.Messages()); n != 0 {
		t.Errorf("the smarthost with an untrusted certificate got %d message(s)", n)
	}
	if n := len(w.senderMX.Messages()); n != 0 {
		t.Errorf("the sender got %d report(s), want none", n)
	}
	t.Logf("last_error: %s", m.LastError)
}

// ---------------------------------------------------------------------

func TestDeliveryRestartKeepsSchedule(t *testing.T) {
	t.Parallel()
	for _, how := range []string{"SIGTERM", "SIGKILL"} {
		t.Run(how, func(t *testing.T) {
			t.Parallel()
			w := newMXWorld(t, dnstest.Zone{
				"dest.test.":    {dnstest.MX("dest.test", 10, "mx.dest.test")},
				"mx.dest.test.": {dnstest.A("mx.dest.test", "127.0.0.2")},
			})
			var open atomic.Bool
			var mu sync.Mutex
			var tries []time.Time
			mx := w.mx("127.0.0.2", smtptest.Behaviour{Rcpt: func(to string, _ *smtp.RcptOptions) error {
				mu.Lock()
				tries = append(tries, time.Now())
				mu.Unlock()
				if !open.Load() {
					return smtptest.Reply(451, "4.3.0", "not now")
				}
				return nil
			}})
			r := w.start("4s", "", "")
			data := deliveryMessage("restart-"+how, "bob@dest.test")
			submitMail(t, r, submission{From: senderAddr, To: []string{"bob@dest.test"}}, data)

			before := waitQueued(t, r, "bob@dest.test", "a first attempt", 20*time.Second, func(m *admin.Message) bool {
				return m.Attempts >= 1
			})
			if !before.NextAttempt.After(time.Now().Add(-time.Second)) {
				t.Errorf("next_attempt %v is not in the future", before.NextAttempt)
			}
			if how == "SIGKILL" {
				r.kill()
			} else {
				r.stop()
			}
			r.start()
			after := waitQueued(t, r, "bob@dest.test", "the message after the restart", 10*time.Second, func(*admin.Message) bool { return true })
			if after.ID != before.ID {
				t.Errorf("queue id changed over the restart: %s → %s", before.ID, after.ID)
			}
			if after.Attempts < before.Attempts {
				t.Errorf("attempts went from %d to %d over the restart", before.Attempts, after.Attempts)
			}
			if after.Attempts == before.Attempts && !after.NextAttempt.Equal(before.NextAttempt) {
				t.Errorf("next_attempt changed over the restart without an attempt: %v → %v", before.NextAttempt, after.NextAttempt)
			}
			if after.LastError == "" {
				t.Errorf("last_error lost over the restart")
			}
			open.Store(true)
			got := waitMsgs(t, mx, 1, 20*time.Second)
			sameAsSubmitted(t, got[0].Data, data)
			waitQueueEmpty(t, r, 10*time.Second)
			// No attempt after the first came before the persisted
			// next attempt: the restart kept the schedule.
			mu.Lock()
			defer mu.Unlock()
			if len(tries) <= before.Attempts {
				t.Fatalf("%d attempts reached the MX, want at least 2", len(tries))
			}
			// Each attempt is one RCPT; those after the snapshot must
			// wait for its next_attempt.
			for _, at := range tries[before.Attempts:] {
				if at.Before(before.NextAttempt.Add(-100 * time.Millisecond)) {
					t.Errorf("an attempt at %v came before the scheduled next attempt %v", at.Format(time.RFC3339Nano), before.NextAttempt.Format(time.RFC3339Nano))
				}
			}
			if n := len(mx.Messages()); n != 1 {
				t.Errorf("MX got %d messages, want 1", n)
			}
		})
	}
}

// TestDeliveryDataFailuresRetried: a connection dropped in the middle of
// DATA and a server that never answers the final dot are temporary
// failures; the message is kept and delivered on a later attempt.
func TestDeliveryDataFailuresRetried(t *testing.T) {
	t.Parallel()
	for _, name := range []string{"drop", "stall"} {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			w := newMXWorld(t, dnstest.Zone{
				"dest.test.":    {dnstest.MX("dest.test", 10, "mx.dest.test")},
				"mx.dest.test.": {dnstest.A("mx.dest.test", "127.0.0.2")},
			})
			b := smtptest.Behaviour{DropInData: name == "drop", StallData: name == "stall"}
			bad := w.mx("127.0.0.2", b)
			r := w.start("1s", `data_end_timeout = "2s"`+"\n", "")
			data := deliveryMessage("data-"+name, "bob@dest.test")
			submitMail(t, r, submission{From: senderAddr, To: []string{"bob@dest.test"}}, data)

			m := waitQueued(t, r, "bob@dest.test", "a failed attempt", 30*time.Second, func(m *admin.Message) bool {
				return m.Attempts >= 1 && m.LastError != ""
			})
			if st := rcptState(&m, "bob@dest.test"); st != "pending" {
				t.Errorf("recipient %q after a failed DATA, want pending", st)
			}
			bad.Close()
			good := w.mx("127.0.0.2", smtptest.Behaviour{})
			got := waitMsgs(t, good, 1, 30*time.Second)
			sameAsSubmitted(t, got[0].Data, data)
			waitQueueEmpty(t, r, 10*time.Second)
			if n := len(w.senderMX.Messages()); n != 0 {
				t.Errorf("the sender got %d report(s), want none", n)
			}
		})
	}
}

// ---------------------------------------------------------------------

func TestDeliveryQueueCommands(t *testing.T) {
	t.Parallel()
	w := newMXWorld(t, dnstest.Zone{
		"dest.test.":    {dnstest.MX("dest.test", 10, "mx.dest.test")},
		"mx.dest.test.": {dnstest.A("mx.dest.test", "127.0.0.2")},
	})
	var open atomic.Bool
	mx := w.mx("127.0.0.2", smtptest.Behaviour{Rcpt: func(to string, _ *smtp.RcptOptions) error {
		if !open.Load() {
			return smtptest.Reply(451, "4.3.0", "not yet")
		}
		return nil
	}})
	// An hour between attempts: after the first 451, only the queue
	// commands move mail.
	r := w.start("1h", "", "")
	names := []string{"held", "deleted", "bounced", "flushed"}
	data := map[string][]byte{}
	for _, n := range names {
		data[n] = deliveryMessage("cmd-"+n, n+"@dest.test")
		submitMail(t, r, submission{From: senderAddr, To: []string{n + "@dest.test"}}, data[n])
	}
	ids := map[string]string{}
	for _, n := range names {
		m := waitQueued(t, r, n+"@dest.test", "first attempt of "+n, 20*time.Second, func(m *admin.Message) bool {
			return m.Attempts >= 1
		})
		ids[n] = m.ID
	}
	run := func(args ...string) string {
		t.Helper()
		out, errs, code := r.mailhop(append([]string{"queue"}, args...)...)
		if code != 0 {
			t.Fatalf("mailhop queue %v: exit %d: %s%s", args, code, out, errs)
		}
		return out
	}

	run("hold", ids["held"])
	if m := queuedFor(r.list(), "held@dest.test"); m == nil || !m.Held {
		t.Fatalf("after hold: %+v, want held", m)
	}
	run("delete", ids["deleted"])
	if m := queuedFor(r.list(), "deleted@dest.test"); m != nil {
		t.Errorf("after delete the message is still queued: %+v", m)
	}
	run("bounce", ids["bounced"])
	reps := waitMsgs(t, w.senderMX, 1, 20*time.Second)
	d := checkReport(t, reps[0])
	checkFailed(t, reportFor(t, d, "bounced@dest.test"), "5.", "")
	waitFor(t, "the bounced message to leave the queue", 10*time.Second, func() bool {
		return queuedFor(r.list(), "bounced@dest.test") == nil
	})

	// Flush: everything due now. The flushed message is delivered, the
	// held one is not.
	open.Store(true)
	run("flush")
	got := waitMsgs(t, mx, 1, 20*time.Second)
	if len(withMsgID(got, "cmd-flushed")) != 1 {
		t.Fatalf("flush did not deliver the flushed message: %d messages", len(got))
	}
	sameAsSubmitted(t, withMsgID(got, "cmd-flushed")[0].Data, data["flushed"])
	waitFor(t, "the flushed message to leave the queue", 10*time.Second, func() bool {
		return queuedFor(r.list(), "flushed@dest.test") == nil
	})
	held := queuedFor(r.list(), "held@dest.test")
	if held == nil || !held.Held || rcptState(held, "held@dest.test") != "pending" {
		t.Fatalf("the held message after flush: %+v", held)
	}
	if len(withMsgID(mx.Messages(), "cmd-held")) != 0 {
		t.Fatalf("a held message was delivered")
	}

	// Release: the held message is delivered.
	run("release", ids["held"])
	if m := queuedFor(r.list(), "held@dest.test"); m != nil && m.Held {
		t.Errorf("after release the message is still held")
	}
	run("flush")
	waitFor(t, "the released message to be delivered", 20*time.Second, func() bool {
		return len(withMsgID(mx.Messages(), "cmd-held")) == 1
	})
	sameAsSubmitted(t, withMsgID(mx.Messages(), "cmd-held")[0].Data, data["held"])
	waitQueueEmpty(t, r, 10*time.Second)

	all := mx.Messages()
	if len(withMsgID(all, "cmd-deleted")) != 0 || len(withMsgID(all, "cmd-bounced")) != 0 {
		t.Errorf("a deleted or bounced message was delivered")
	}
	if len(all) != 2 {
		t.Errorf("MX got %d messages, want 2 (flushed, released)", len(all))
	}
	if n := len(w.senderMX.Messages()); n != 1 {
		t.Errorf("the sender got %d reports, want 1 (the bounce command)", n)
	}
	// Commands on a message that is gone fail.
	if _, _, code := r.mailhop("queue", "hold", ids["deleted"]); code == 0 {
		t.Errorf("queue hold of a deleted message succeeded")
	}
}
