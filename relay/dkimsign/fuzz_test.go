package dkimsign

import (
	"bytes"
	"errors"
	"strings"
	"testing"

	"github.com/emersion/go-msgauth/dkim"
)

// FuzzSignVerify: any message (line ends made CRLF, as queued) that gets a
// signature verifies with it: a header or body the signer reads one way and
// a verifier another would have receivers reject the mail as forged.
func FuzzSignVerify(f *testing.F) {
	f.Add([]byte("From: a@example.test\r\nTo: b@x\r\nSubject: hi\r\n\r\nbody\r\n"))
	f.Add([]byte("From: \"A\" <a@example.test>\r\nSubject: x\r\n folded\r\nX :y\r\n\r\n\r\n\r\n"))
	f.Add([]byte("from: =?utf-8?q?J=C3=B6rg?= <j@example.test>\r\nTo: a\r\n\r\n.\r\n  \r\n"))
	key := mustKey(f, "example.test", "s1", true, edKey(f))
	rec, err := KeyRecord(key.Public())
	if err != nil {
		f.Fatal(err)
	}
	lookup := func(name string) ([]string, error) {
		if name != "s1._domainkey.example.test" {
			return nil, errors.New("no such name")
		}
		return []string{rec}, nil
	}
	s := NewFromKeys(key)
	f.Fuzz(func(t *testing.T, msg []byte) {
		msg = bytes.ReplaceAll(msg, []byte("\r\n"), []byte("\n"))
		msg = bytes.ReplaceAll(msg, []byte("\r"), []byte("\n"))
		msg = bytes.ReplaceAll(msg, []byte("\n"), []byte("\r\n"))
		i := bytes.Index(msg, []byte("\r\n\r\n"))
		if i < 0 {
			return
		}
		header, body := msg[:i+4], msg[i+4:]
		sig, err := s.Sign(header, bytes.NewReader(body))
		if err != nil || sig == "" {
			return
		}
		vs, err := dkim.VerifyWithOptions(strings.NewReader(sig+string(msg)), &dkim.VerifyOptions{LookupTXT: lookup})
		if err != nil || len(vs) == 0 {
			t.Fatalf("verify: %v", err)
		}
		for _, v := range vs {
			if v.Err != nil {
				t.Fatalf("%q signed as %q does not verify: %v", msg, sig, v.Err)
			}
		}
	})
}
