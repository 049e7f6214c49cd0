package dkimsign

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/pem"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/mailhop/mailhop/relay/config"
	"github.com/mailhop/mailhop/relay/dkimsign/dkimkey"
)

func writePEM(t *testing.T, typ string, der []byte) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "key.pem")
	if err := os.WriteFile(p, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func pkcs8(t *testing.T, k any) []byte {
	t.Helper()
	der, err := x509.MarshalPKCS8PrivateKey(k)
	if err != nil {
		t.Fatal(err)
	}
	return der
}

func TestNew_LoadsKeyForms(t *testing.T) {
	t.Parallel()
	ed := edKey(t)
	entries := []config.DKIM{
		{Domain: "Example.COM.", Selector: "pkcs1", KeyFile: writePEM(t, "RSA PRIVATE KEY", x509.MarshalPKCS1PrivateKey(rsaKey()))},
		{Domain: "example.com", Selector: "pkcs8", KeyFile: writePEM(t, "PRIVATE KEY", pkcs8(t, rsaKey()))},
		{Domain: "example.com", Selector: "ed", KeyFile: writePEM(t, "PRIVATE KEY", pkcs8(t, ed)), SubDomains: true},
	}
	s, err := New(entries)
	if err != nil {
		t.Fatal(err)
	}
	ks := s.KeysFor("example.com")
	if len(ks) != 3 || ks[0].Algorithm() != "rsa" || ks[1].Algorithm() != "rsa" || ks[2].Algorithm() != "ed25519" {
		t.Fatalf("keys: %+v", ks)
	}
	if ks[0].Domain != "example.com" || !ks[2].SubDomains {
		t.Errorf("domain %q, sub_domains %v", ks[0].Domain, ks[2].SubDomains)
	}
	// Marshal and parse again: the same key.
	b, err := MarshalPrivateKey(ed)
	if err != nil {
		t.Fatal(err)
	}
	back, err := dkimkey.Parse(b)
	if err != nil || !ed.Equal(back) {
		t.Errorf("round trip: %v", err)
	}
}

func TestNew_RefusesBadKeys(t *testing.T) {
	t.Parallel()
	small, err := rsa.GenerateKey(rand.Reader, 1024)
	if err != nil {
		t.Fatal(err)
	}
	ec, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	ecDER, _ := x509.MarshalECPrivateKey(ec)
	garbage := filepath.Join(t.TempDir(), "garbage")
	os.WriteFile(garbage, []byte("not a key\n"), 0o600)
	cases := map[string]struct{ file, want string }{
		"rsa 1024 pkcs1": {writePEM(t, "RSA PRIVATE KEY", x509.MarshalPKCS1PrivateKey(small)), "1024 bits"},
		"rsa 1024 pkcs8": {writePEM(t, "PRIVATE KEY", pkcs8(t, small)), "1024 bits"},
		"ecdsa pkcs8":    {writePEM(t, "PRIVATE KEY", pkcs8(t, ec)), "unsupported key type"},
		"ec block":       {writePEM(t, "EC PRIVATE KEY", ecDER), "unsupported PEM block"},
		"garbage":        {garbage, "no PEM private key"},
		"bad der":        {writePEM(t, "PRIVATE KEY", []byte{1, 2, 3}), "parsing PRIVATE KEY"},
		"missing":        {filepath.Join(t.TempDir(), "nope"), "no such file"},
	}
	for name, c := range cases {
		_, err := New([]config.DKIM{{Domain: "example.com", Selector: "s", KeyFile: c.file}})
		if err == nil || !strings.Contains(err.Error(), c.want) || !strings.Contains(err.Error(), "dkim[0].key_file") {
			t.Errorf("%s: err = %v, want one naming dkim[0].key_file and containing %q", name, err, c.want)
		}
	}
}

func TestKeyRecord_SplitTXT(t *testing.T) {
	t.Parallel()
	rec, err := KeyRecord(rsaKey().Public())
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(rec, "v=DKIM1; k=rsa; p=MII") {
		t.Errorf("RSA record: %s", rec)
	}
	parts := SplitTXT(rec)
	if len(parts) < 2 || strings.Join(parts, "") != rec {
		t.Errorf("split into %d parts", len(parts))
	}
	for _, p := range parts {
		if len(p) > 255 {
			t.Errorf("part of %d bytes", len(p))
		}
	}
	ed := edKey(t)
	rec, _ = KeyRecord(ed.Public())
	if !strings.HasPrefix(rec, "v=DKIM1; k=ed25519; p=") || len(rec) != len("v=DKIM1; k=ed25519; p=")+44 {
		t.Errorf("Ed25519 record: %s", rec)
	}
	if got := SplitTXT(rec); len(got) != 1 {
		t.Errorf("short record split in %d", len(got))
	}
}
