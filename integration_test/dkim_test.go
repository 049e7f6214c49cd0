package integration_test

import (
	"fmt"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-msgauth/dkim"
	"github.com/miekg/dns"

	"github.com/mailhop/mailhop/dnsmx/dnstest"
	"github.com/mailhop/mailhop/relay/outbound/smtptest"
)

// keygen runs `mailhop dkim keygen` and returns the key file and the TXT
// record it printed, parsed.
func keygen(t *testing.T, domain, selector, typ string) (string, dns.RR) {
	t.Helper()
	out := filepath.Join(t.TempDir(), selector+".key")
	b, err := exec.Command(mailhopBin, "dkim", "keygen", "--domain", domain, "--selector", selector,
		"--out", out, "--type", typ).Output()
	if err != nil {
		t.Fatalf("dkim keygen: %v", err)
	}
	rr, err := dns.NewRR(strings.TrimSpace(string(b)))
	if err != nil || rr == nil {
		t.Fatalf("keygen printed an unusable record %q: %v", b, err)
	}
	return out, rr
}

// lookupTXT asks the loopback DNS server, as a verifier would.
func lookupTXT(server string) func(string) ([]string, error) {
	return func(name string) ([]string, error) {
		m := new(dns.Msg)
		m.SetQuestion(dns.Fqdn(name), dns.TypeTXT)
		in, err := dns.Exchange(m, server)
		if err != nil {
			return nil, err
		}
		var out []string
		for _, rr := range in.Answer {
			if txt, ok := rr.(*dns.TXT); ok {
				out = append(out, strings.Join(txt.Txt, ""))
			}
		}
		return out, nil
	}
}

// TestDKIMSignedEndToEnd: keys from `mailhop dkim keygen` (RSA and
// Ed25519), mail signed as it is queued, delivered by MX, verified by
// go-msgauth with the public keys served by a loopback DNS server; a
// message changed after signing fails.
func TestDKIMSignedEndToEnd(t *testing.T) {
	t.Parallel()
	rsaKey, rsaRR := keygen(t, "example.com", "rsa1", "rsa")
	edKey, edRR := keygen(t, "example.com", "ed1", "ed25519")
	w := newMXWorld(t, dnstest.Zone{
		"dest.test.":                   {dnstest.MX("dest.test", 10, "mx.dest.test")},
		"mx.dest.test.":                {dnstest.A("mx.dest.test", "127.0.0.21")},
		"rsa1._domainkey.example.com.": {rsaRR},
		"ed1._domainkey.example.com.":  {edRR},
	})
	mx := w.mx("127.0.0.21", smtptest.Behaviour{})
	r := w.start("1h", "", fmt.Sprintf("[[dkim]]\ndomain = \"example.com\"\nselector = \"rsa1\"\nkey_file = %q\n\n"+
		"[[dkim]]\ndomain = \"example.com\"\nselector = \"ed1\"\nkey_file = %q\n", rsaKey, edKey))
	msg := []byte("From: App <app@example.com>\r\nTo: <bob@dest.test>\r\nSubject: signed\r\n" +
		"Date: Wed, 25 Nov 2026 12:00:00 +0000\r\nMessage-ID: <dkim-e2e@example.com>\r\n\r\nHello,\r\n.dotted line\r\n")
	submitMail(t, r, submission{From: "app@example.com", To: []string{"bob@dest.test"}}, msg)
	got := waitMsgs(t, mx, 1, 20*time.Second)[0].Data

	vs, err := dkim.VerifyWithOptions(strings.NewReader(string(got)), &dkim.VerifyOptions{LookupTXT: lookupTXT(w.dns.Addr)})
	if err != nil {
		t.Fatal(err)
	}
	if len(vs) != 2 {
		t.Fatalf("%d signatures, want 2 (RSA and Ed25519):\n%s", len(vs), got)
	}
	for _, v := range vs {
		if v.Err != nil || v.Domain != "example.com" {
			t.Errorf("signature %+v: %v", v, v.Err)
		}
	}
	if !strings.HasSuffix(string(got), "\r\n\r\nHello,\r\n.dotted line\r\n") {
		t.Errorf("body changed in transit:\n%q", got)
	}
	changed := strings.Replace(string(got), "Hello,", "Hallo,", 1)
	vs, err = dkim.VerifyWithOptions(strings.NewReader(changed), &dkim.VerifyOptions{LookupTXT: lookupTXT(w.dns.Addr)})
	if err != nil {
		t.Fatal(err)
	}
	for _, v := range vs {
		if v.Err == nil {
			t.Errorf("a message changed after signing still verifies (%s)", v.Domain)
		}
	}
	if !r.waitLine("message accepted", "dkim=example.com") {
		t.Errorf("the accepted line does not name the signing domain")
	}

	// Mail from local programs through `mailhop sendmail` is signed too.
	local := "From: cron@example.com\r\nTo: carol@dest.test\r\nSubject: from cron\r\n\r\ndone\r\n"
	if out, errs, code := r.sendmail(local, "-t", "-f", "cron@example.com"); code != 0 {
		t.Fatalf("sendmail: exit %d: %s%s", code, out, errs)
	}
	got = waitMsgs(t, mx, 2, 20*time.Second)[1].Data
	vs, err = dkim.VerifyWithOptions(strings.NewReader(string(got)), &dkim.VerifyOptions{LookupTXT: lookupTXT(w.dns.Addr)})
	if err != nil {
		t.Fatal(err)
	}
	if len(vs) != 2 || vs[0].Err != nil || vs[1].Err != nil {
		t.Fatalf("mail from sendmail: %d signatures (%+v):\n%s", len(vs), vs, got)
	}
}
