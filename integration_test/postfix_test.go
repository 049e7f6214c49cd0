package integration_test

// Interoperability with a complete Postfix as the receiving MX: an instance
// of its own (configuration, queue and data directories in a temporary
// directory; /etc/postfix and the system's instance are not touched), its
// smtpd on two loopback addresses, and a pipe transport that writes each
// delivered message to a file, so the bytes Postfix received can be
// compared with what was submitted.

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"io"
	"math/big"
	"mime/quotedprintable"
	"net"
	"net/mail"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-smtp"

	"github.com/mailhop/mailhop/dnsmx/dnstest"
)

const (
	postfixBin    = "/usr/sbin/postfix"
	postfixDaemon = "/usr/lib/postfix/sbin"
	pfFullIP      = "127.0.0.31" // smtpd with every extension
	pfPlainIP     = "127.0.0.32" // smtpd without 8BITMIME and SMTPUTF8
)

// postfixMX is a running Postfix instance of the test's own.
type postfixMX struct {
	dir  string // configuration, queue, data, out
	port int
}

// startPostfixMX starts a Postfix instance listening on pfFullIP and
// pfPlainIP at one port, relaying full.test and plain.test to a pipe
// that writes each message (LF line ends, as Postfix keeps it) to
// dir/out/QUEUEID.N, and the recipient's ORCPT beside it.
func startPostfixMX(t *testing.T) *postfixMX {
	t.Helper()
	if _, err := os.Stat(postfixBin); err != nil {
		t.Skip("Postfix is not installed (Debian package postfix)")
	}
	if _, err := os.Stat(filepath.Join(postfixDaemon, "master")); err != nil {
		t.Skipf("Postfix's daemons are not in %s", postfixDaemon)
	}
	if os.Geteuid() != 0 {
		t.Skip("a Postfix instance needs root to start")
	}
	dir, err := os.MkdirTemp("", "mailhop-postfix-")
	if err != nil {
		t.Fatal(err)
	}
	// Postfix's daemons run as the postfix user and the pipe as nobody.
	for _, d := range []string{dir, filepath.Join(dir, "etc"), filepath.Join(dir, "queue"), filepath.Join(dir, "data"), filepath.Join(dir, "out")} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	os.Chmod(dir, 0o755)
	os.Chmod(filepath.Join(dir, "out"), 0o1777)
	run := func(args ...string) (string, error) {
		out, err := exec.Command(postfixBin, append([]string{"-c", filepath.Join(dir, "etc")}, args...)...).CombinedOutput()
		return string(out), err
	}
	if out, err := exec.Command("chown", "postfix", filepath.Join(dir, "data")).CombinedOutput(); err != nil {
		os.RemoveAll(dir)
		t.Skipf("no postfix user: %v: %s", err, out)
	}
	writeSelfSigned(t, filepath.Join(dir, "etc", "cert.pem"), filepath.Join(dir, "etc", "key.pem"))

	_, p, _ := net.SplitHostPort(freePort(t, pfFullIP))
	port, _ := strconv.Atoi(p)
	etc := filepath.Join(dir, "etc")
	files := map[string]string{
		"main.cf": fmt.Sprintf(`compatibility_level = 3.6
queue_directory = %[1]s/queue
data_directory = %[1]s/data
daemon_directory = %[2]s
myhostname = pf.full.test
mydestination =
inet_interfaces = loopback-only
inet_protocols = ipv4
mynetworks = 127.0.0.0/8
relay_domains = full.test plain.test
relay_transport = dump
default_transport = dump
alias_maps =
alias_database =
local_header_rewrite_clients =
smtp_dns_support_level = disabled
smtputf8_enable = yes
smtpd_tls_security_level = may
smtpd_tls_cert_file = %[1]s/etc/cert.pem
smtpd_tls_key_file = %[1]s/etc/key.pem
maillog_file = %[1]s/maillog
maillog_file_prefixes = %[1]s
dump_destination_recipient_limit = 1
smtpd_recipient_restrictions = check_recipient_access inline:{ hold@full.test=HOLD }, permit_mynetworks, reject_unauth_destination
`, dir, postfixDaemon),
		"master.cf": fmt.Sprintf(`%[1]s:%[3]d inet n - n - - smtpd
%[2]s:%[3]d inet n - n - - smtpd -o smtpd_discard_ehlo_keywords=8bitmime -o smtputf8_enable=no
pickup unix n - n 60 1 pickup
cleanup unix n - n - 0 cleanup
qmgr unix n - n 300 1 qmgr
rewrite unix - - n - - trivial-rewrite
bounce unix - - n - 0 bounce
defer unix - - n - 0 bounce
trace unix - - n - 0 bounce
flush unix n - n 1000 0 flush
proxymap unix - - n - - proxymap
showq unix n - n - - showq
error unix - - n - - error
retry unix - - n - - error
discard unix - - n - - discard
anvil unix - - n - 1 anvil
scache unix - - n - 1 scache
tlsmgr unix - - n 1000 1 tlsmgr
postlog unix-dgram n - n - 1 postlogd
dump unix - n n - - pipe flags=q user=nobody argv=%[4]s/etc/dump.sh ${queue_id}
`, pfFullIP, pfPlainIP, port, dir),
		"dump.sh": fmt.Sprintf(`#!/bin/sh
umask 022
out=%s/out/$1.$$
cat > "$out.tmp" && mv "$out.tmp" "$out.eml"
`, dir),
	}
	for name, text := range files {
		if err := os.WriteFile(filepath.Join(etc, name), []byte(text), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	px := &postfixMX{dir: dir, port: port}
	if out, err := run("start"); err != nil {
		log, _ := os.ReadFile(filepath.Join(dir, "maillog"))
		os.RemoveAll(dir)
		t.Fatalf("postfix start: %v: %s\n%s", err, out, log)
	}
	t.Cleanup(func() {
		pid := px.masterPID()
		if out, err := run("stop"); err != nil {
			t.Errorf("postfix stop: %v: %s", err, out)
		}
		// postfix stop only signals the master: wait for it to go, so no
		// process of this instance outlives the test.
		for i := 0; pid > 0 && i < 100; i++ {
			if exec.Command("kill", "-0", strconv.Itoa(pid)).Run() != nil {
				break
			}
			time.Sleep(100 * time.Millisecond)
		}
		if t.Failed() {
			log, _ := os.ReadFile(filepath.Join(dir, "maillog"))
			t.Logf("Postfix log:\n%s", log)
		}
		os.RemoveAll(dir)
	})
	for _, ip := range []string{pfFullIP, pfPlainIP} {
		if err := waitListening(net.JoinHostPort(ip, p), nil, 10*time.Second); err != nil {
			t.Fatalf("Postfix smtpd on %s:%d: %v", ip, port, err)
		}
	}
	return px
}

// masterPID is the pid in the instance's master.pid, or 0.
func (px *postfixMX) masterPID() int {
	b, err := os.ReadFile(filepath.Join(px.dir, "queue", "pid", "master.pid"))
	if err != nil {
		return 0
	}
	n, _ := strconv.Atoi(strings.TrimSpace(string(b)))
	return n
}

// delivered waits for n messages written by the pipe and returns them
// with CRLF line ends restored.
func (px *postfixMX) delivered(t *testing.T, n int) [][]byte {
	t.Helper()
	var files []string
	waitFor(t, fmt.Sprintf("%d messages delivered by Postfix", n), 15*time.Second, func() bool {
		files, _ = filepath.Glob(filepath.Join(px.dir, "out", "*.eml"))
		return len(files) >= n
	})
	var msgs [][]byte
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		msgs = append(msgs, bytes.ReplaceAll(b, []byte("\n"), []byte("\r\n")))
	}
	return msgs
}

// held waits for the one message on hold and returns its envelope as
// postcat prints it.
func (px *postfixMX) held(t *testing.T) string {
	t.Helper()
	var files []string
	waitFor(t, "a message on hold at Postfix", 15*time.Second, func() bool {
		files, _ = filepath.Glob(filepath.Join(px.dir, "queue", "hold", "*"))
		return len(files) == 1
	})
	out, err := exec.Command(filepath.Join(filepath.Dir(postfixBin), "postcat"), "-c", filepath.Join(px.dir, "etc"), "-e", files[0]).CombinedOutput()
	if err != nil {
		t.Fatalf("postcat: %v: %s", err, out)
	}
	return string(out)
}

// writeSelfSigned writes a self-signed certificate and its key, for
// Postfix's STARTTLS.
func writeSelfSigned(t *testing.T, certFile, keyFile string) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1),
		Subject:      pkix.Name{CommonName: "pf.full.test"},
		DNSNames:     []string{"pf.full.test"},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(24 * time.Hour),
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	kder, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kder}), 0o600); err != nil {
		t.Fatal(err)
	}
}

// TestDeliveryPostfixMX delivers through the MX path to a real Postfix
// smtpd: over opportunistic STARTTLS, byte for byte, with RET, ENVID,
// NOTIFY and ORCPT passed on; and to one without 8BITMIME, which gets the 8-bit body as
// quoted-printable that decodes to the same text.
func TestDeliveryPostfixMX(t *testing.T) {
	t.Parallel()
	px := startPostfixMX(t)
	zone := dnstest.Zone{
		"full.test.":     {dnstest.MX("full.test", 10, "mx.full.test")},
		"mx.full.test.":  {dnstest.A("mx.full.test", pfFullIP)},
		"plain.test.":    {dnstest.MX("plain.test", 10, "mx.plain.test")},
		"mx.plain.test.": {dnstest.A("mx.plain.test", pfPlainIP)},
	}
	dnsSrv := dnstest.New(t, zone)
	r := startRelay(t, relayOpts{NoRoute: true, Delivery: fmt.Sprintf(`resolvers = [%q]
mx_port = %d
retry_intervals = ["1s"]
connect_timeout = "5s"
`, dnsSrv.Addr, px.port)})

	ascii := deliveryMessage("pf-ascii", "bob@full.test")
	submitMail(t, r, submission{
		From:     senderAddr,
		MailOpts: &smtp.MailOptions{Return: smtp.DSNReturnHeaders, EnvelopeID: "pf-env"},
		To:       []string{"hold@full.test"},
		RcptOpts: map[string]*smtp.RcptOptions{"hold@full.test": {
			Notify:                []smtp.DSNNotify{smtp.DSNNotifyFailure},
			OriginalRecipientType: smtp.DSNAddressTypeRFC822,
			OriginalRecipient:     "bob+orig@full.test",
		}},
	}, deliveryMessage("pf-dsn", "hold@full.test"))
	submitMail(t, r, submission{From: senderAddr, To: []string{"bob@full.test"}}, ascii)

	text := "Grüße aus Köln, ça va? €\r\n.a leading dot\r\n" + strings.Repeat("x", 70) + "é\r\n"
	eight := []byte("From: <" + senderAddr + ">\r\nTo: <carol@plain.test>\r\nSubject: 8bit\r\n" +
		"Message-ID: <pf-8bit@sender.test>\r\nDate: Thu, 26 Nov 2026 07:00:00 +0000\r\n" +
		"MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n" + text)
	submitMail(t, r, submission{From: senderAddr, To: []string{"carol@plain.test"}}, eight)
	waitQueueEmpty(t, r, 15*time.Second)

	// The DSN parameters reached Postfix (RFC 3461 §4: passed on to a
	// server that offers DSN).
	env := px.held(t)
	for _, want := range []string{"envelope_id=pf-env", "ret_flags=2", "notify_flags=4", "dsn_orig_rcpt=rfc822;bob+orig@full.test"} {
		if !strings.Contains(strings.ToLower(env), want) {
			t.Errorf("Postfix's queue file has no %s:\n%s", want, env)
		}
	}
	msgs := px.delivered(t, 2)
	var sawASCII, saw8bit bool
	for _, m := range msgs {
		// Postfix's Received field comes first, then mailhop's.
		m = stripReceived(t, m)
		switch {
		case bytes.Contains(m, msgIDLine("pf-ascii")):
			sawASCII = true
			sameAsSubmitted(t, m, ascii)
		case bytes.Contains(m, []byte("<pf-8bit@sender.test>")):
			saw8bit = true
			m = stripReceived(t, m)
			for _, c := range m {
				if c > 127 {
					t.Fatalf("8-bit octet sent to a server without 8BITMIME:\n%s", m)
				}
			}
			pm, err := mail.ReadMessage(bytes.NewReader(m))
			if err != nil {
				t.Fatal(err)
			}
			if cte := pm.Header.Get("Content-Transfer-Encoding"); cte != "quoted-printable" {
				t.Errorf("Content-Transfer-Encoding %q, want quoted-printable", cte)
			}
			got, err := io.ReadAll(quotedprintable.NewReader(pm.Body))
			if err != nil {
				t.Fatal(err)
			}
			if string(got) != text {
				t.Errorf("decoded body %q, want %q", got, text)
			}
		}
	}
	if !sawASCII || !saw8bit {
		t.Errorf("Postfix delivered ascii=%v 8bit=%v, want both", sawASCII, saw8bit)
	}
	// Logged after the outcome's record, which emptied the queue.
	if !r.waitLine("msg=attempt", "domain=full.test", "tls=\"TLS 1.3\"", "code=250") {
		t.Errorf("no attempt over TLS 1.3 to full.test with 250 in the log:\n%s", r.logs.String())
	}
}
