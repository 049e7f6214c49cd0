package inbound

import (
	"bytes"
	"crypto/ed25519"
	"crypto/rand"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/emersion/go-msgauth/dkim"

	"github.com/mailhop/mailhop/relay/config"
	"github.com/mailhop/mailhop/relay/dkimsign"
)

// withDKIM configures Ed25519 keys for example.org (which alice may send
// as) and other.test (which she may not); it returns the TXT records.
func withDKIM(t *testing.T) (func(*config.Config), map[string]string) {
	t.Helper()
	dir := t.TempDir()
	txt := map[string]string{}
	var entries []config.DKIM
	for _, d := range []string{"example.org", "other.test"} {
		_, priv, err := ed25519.GenerateKey(rand.Reader)
		if err != nil {
			t.Fatal(err)
		}
		pem, err := dkimsign.MarshalPrivateKey(priv)
		if err != nil {
			t.Fatal(err)
		}
		path := filepath.Join(dir, d+".key")
		if err := os.WriteFile(path, pem, 0o600); err != nil {
			t.Fatal(err)
		}
		rec, err := dkimsign.KeyRecord(priv.Public())
		if err != nil {
			t.Fatal(err)
		}
		txt["s1._domainkey."+d] = rec
		entries = append(entries, config.DKIM{Domain: d, Selector: "s1", KeyFile: path})
	}
	return func(c *config.Config) { c.DKIM = entries }, txt
}

func verifyDKIM(t *testing.T, msg string, txt map[string]string) []*dkim.Verification {
	t.Helper()
	vs, err := dkim.VerifyWithOptions(strings.NewReader(msg), &dkim.VerifyOptions{
		LookupTXT: func(name string) ([]string, error) { return []string{txt[strings.TrimSuffix(name, ".")]}, nil },
	})
	if err != nil {
		t.Fatal(err)
	}
	return vs
}

func TestDKIM_SignedAtEnqueue(t *testing.T) {
	withKeys, txt := withDKIM(t)
	ts := startServer(t, withKeys, trustLoopback)
	body := "From: Alice <alice@example.org>\r\nTo: bob@example.net\r\nSubject: signed\r\n" +
		"Message-ID: <1@example.org>\r\nDate: Mon, 02 Jan 2006 15:04:05 +0000\r\n\r\nhello\r\n.dot\r\n"
	// Authenticated, From: a domain alice may use: signed.
	if err := sendWithClient(t, ts.addr[config.ModeSubmission], "alice@example.com", []string{"bob@example.net"}, body); err != nil {
		t.Fatal(err)
	}
	// Authenticated, From: a configured domain alice may not use: not signed.
	other := strings.Replace(body, "alice@example.org", "eve@other.test", 1)
	if err := sendWithClient(t, ts.addr[config.ModeSubmission], "alice@example.com", []string{"carol@example.net"}, other); err != nil {
		t.Fatal(err)
	}
	queued := ts.queued()
	if len(queued) != 2 {
		t.Fatalf("%d queued", len(queued))
	}
	for env, got := range queued {
		signed := strings.HasPrefix(got, "DKIM-Signature:")
		switch env.Recipients[0].Address {
		case "bob@example.net":
			if !signed {
				t.Fatalf("not signed:\n%s", got)
			}
			vs := verifyDKIM(t, got, txt)
			if len(vs) != 1 || vs[0].Err != nil || vs[0].Domain != "example.org" {
				t.Fatalf("verification: %+v", vs[0])
			}
			if !strings.HasSuffix(got, "\r\n\r\nhello\r\n.dot\r\n") {
				t.Errorf("body changed: %q", got)
			}
			// Changed after signing: the signature no longer verifies.
			bad := strings.Replace(got, "hello", "HELLO", 1)
			if vs := verifyDKIM(t, bad, txt); vs[0].Err == nil {
				t.Error("a changed body still verifies")
			}
		case "carol@example.net":
			if signed {
				t.Errorf("signed for a domain the user may not send as")
			}
		}
	}
	if !bytes.Contains([]byte(ts.logs.String()), []byte("dkim=example.org")) {
		t.Error("log line does not name the signing domain")
	}
}
