package main

import (
	"bytes"
	"context"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-msgauth/dkim"
	"github.com/miekg/dns"

	"github.com/mailhop/mailhop/dnsmx/dnstest"
	"github.com/mailhop/mailhop/relay/config"
	"github.com/mailhop/mailhop/relay/dkimsign"
)

func runDKIM(args ...string) (code int, stdout, stderr string) {
	var out, errb bytes.Buffer
	code = run(append([]string{"mailhop", "dkim"}, args...), strings.NewReader(""), &out, &errb)
	return code, out.String(), errb.String()
}

// TestDKIMKeygen_RecordVerifiesSignature generates a key of each type,
// publishes the printed record on a loopback DNS server exactly as printed,
// signs a message with the key file and verifies it through that server.
func TestDKIMKeygen_RecordVerifiesSignature(t *testing.T) {
	t.Parallel()
	for _, typ := range []string{"rsa", "ed25519"} {
		t.Run(typ, func(t *testing.T) {
			t.Parallel()
			keyFile := filepath.Join(t.TempDir(), "example.com.key")
			code, stdout, stderr := runDKIM("keygen", "--domain", "Example.com", "--selector", "s1",
				"--out", keyFile, "--type", typ)
			if code != exitOK {
				t.Fatalf("exit %d: %s", code, stderr)
			}
			fi, err := os.Stat(keyFile)
			if err != nil {
				t.Fatal(err)
			}
			if fi.Mode().Perm() != 0o600 {
				t.Errorf("key file mode %v, want 0600", fi.Mode().Perm())
			}

			line := strings.TrimSpace(stdout)
			if !strings.HasPrefix(line, "s1._domainkey.example.com. IN TXT \"v=DKIM1; k="+typ+"; p=") {
				t.Fatalf("record line: %s", line)
			}
			rr, err := dns.NewRR(line)
			if err != nil {
				t.Fatalf("printed record does not parse as a zone-file line: %v\n%s", err, line)
			}
			txt := rr.(*dns.TXT)
			for _, s := range txt.Txt {
				if len(s) > 255 {
					t.Errorf("TXT string of %d bytes", len(s))
				}
			}
			if typ == "rsa" && len(txt.Txt) < 2 {
				t.Errorf("RSA record in %d string(s), want it split", len(txt.Txt))
			}

			vs, err := signAndVerify(t, rr, config.DKIM{Domain: "example.com", Selector: "s1", KeyFile: keyFile}, "a@example.com")
			if err != nil || len(vs) != 1 || vs[0].Err != nil {
				t.Fatalf("verification: %v %+v", err, vs)
			}

			// A second run never replaces the key.
			before, _ := os.ReadFile(keyFile)
			code, _, stderr = runDKIM("keygen", "--domain", "example.com", "--selector", "s1", "--out", keyFile, "--type", typ)
			after, _ := os.ReadFile(keyFile)
			if code == exitOK || !bytes.Equal(before, after) || !strings.Contains(stderr, "exists") {
				t.Errorf("overwrite: exit %d, changed %v, stderr %q", code, !bytes.Equal(before, after), stderr)
			}
		})
	}
}

// signAndVerify publishes rr, a record as keygen printed it, on a loopback
// DNS server, signs a message from the address from with the [[dkim]] entry
// e, and verifies it through that server.
func signAndVerify(t *testing.T, rr dns.RR, e config.DKIM, from string) ([]*dkim.Verification, error) {
	t.Helper()
	srv := dnstest.New(t, dnstest.Zone{rr.Header().Name: {rr}})
	signer, err := dkimsign.New([]config.DKIM{e})
	if err != nil {
		t.Fatal(err)
	}
	m, err := signer.Spool(strings.NewReader("From: "+from+"\r\nTo: b@example.org\r\nSubject: hi\r\n\r\nbody\r\n"), t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	signed, _ := io.ReadAll(m)
	res := &net.Resolver{PreferGo: true, Dial: func(ctx context.Context, network, _ string) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, network, srv.Addr)
	}}
	lookup := func(name string) ([]string, error) {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		return res.LookupTXT(ctx, name)
	}
	return dkim.VerifyWithOptions(bytes.NewReader(signed), &dkim.VerifyOptions{LookupTXT: lookup})
}

// A domain written in Unicode, as a [[dkim]] entry may give it, gets its
// record at its A-label, the d= the relay signs with: keygen refused it
// ('is not a domain name') while check-config took the same domain in
// [[dkim]]. The record as printed verifies a signature made with the entry.
func TestDKIMKeygen_UnicodeDomain(t *testing.T) {
	t.Parallel()
	keyFile := filepath.Join(t.TempDir(), "k")
	code, stdout, stderr := runDKIM("keygen", "--domain", "Bücher.example", "--selector", "s1", "--out", keyFile, "--type", "ed25519")
	if code != exitOK {
		t.Fatalf("exit %d: %s", code, stderr)
	}
	line := strings.TrimSpace(stdout)
	if !strings.HasPrefix(line, "s1._domainkey.xn--bcher-kva.example. IN TXT ") {
		t.Fatalf("record line: %s", line)
	}
	rr, err := dns.NewRR(line)
	if err != nil {
		t.Fatal(err)
	}
	vs, err := signAndVerify(t, rr, config.DKIM{Domain: "bücher.example", Selector: "s1", KeyFile: keyFile}, "a@xn--bcher-kva.example")
	if err != nil || len(vs) != 1 || vs[0].Err != nil || vs[0].Domain != "xn--bcher-kva.example" {
		t.Fatalf("verification: %v %+v", err, vs)
	}

	// One that is no valid IDN (a ZERO WIDTH JOINER out of context) is
	// still refused.
	out := filepath.Join(t.TempDir(), "bad")
	if code, _, _ := runDKIM("keygen", "--domain", "bü\u200dcher.example", "--selector", "s1", "--out", out); code != exitUsage {
		t.Errorf("no valid IDN: exit %d, want %d", code, exitUsage)
	}
}

func TestDKIMKeygen_BadArguments(t *testing.T) {
	t.Parallel()
	out := filepath.Join(t.TempDir(), "k")
	cases := map[string][]string{
		"no subcommand":  {},
		"unknown sub":    {"rotate"},
		"no domain":      {"keygen", "--selector", "s", "--out", out},
		"bad domain":     {"keygen", "--domain", "exa mple.com", "--selector", "s", "--out", out},
		"no selector":    {"keygen", "--domain", "example.com", "--out", out},
		"bad selector":   {"keygen", "--domain", "example.com", "--selector", "s/1", "--out", out},
		"no out":         {"keygen", "--domain", "example.com", "--selector", "s"},
		"bad type":       {"keygen", "--domain", "example.com", "--selector", "s", "--out", out, "--type", "dsa"},
		"small rsa":      {"keygen", "--domain", "example.com", "--selector", "s", "--out", out, "--bits", "1024"},
		"huge rsa":       {"keygen", "--domain", "example.com", "--selector", "s", "--out", out, "--bits", "16384"},
		"extra argument": {"keygen", "--domain", "example.com", "--selector", "s", "--out", out, "more"},
		"unknown flag":   {"keygen", "--domain", "example.com", "--selector", "s", "--out", out, "--force"},
	}
	for name, args := range cases {
		if code, _, _ := runDKIM(args...); code != exitUsage {
			t.Errorf("%s: exit %d, want %d", name, code, exitUsage)
		}
		if _, err := os.Stat(out); err == nil {
			t.Fatalf("%s: key file written", name)
		}
	}
}
