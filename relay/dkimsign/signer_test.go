package dkimsign

import (
	"bytes"
	"errors"
	"io"
	"os"
	"strings"
	"testing"

	"github.com/emersion/go-msgauth/dkim"
)

const testMsg = "Received: from client by relay; Mon, 02 Jan 2006 15:04:05 +0000\r\n" +
	"From: Alice <alice@example.com>\r\n" +
	"To: bob@example.org\r\n" +
	"Subject: Hello\r\n" +
	"  folded\r\n" +
	"Date: Mon, 02 Jan 2006 15:04:05 +0000\r\n" +
	"Message-ID: <1@example.com>\r\n" +
	"MIME-Version: 1.0\r\n" +
	"Content-Type: text/plain\r\n" +
	"\r\n" +
	"Hi Bob,\r\n" +
	"\r\n" +
	"the body.\r\n"

// spoolAll runs Spool and returns the whole signed message.
func spoolAll(t *testing.T, s *Signer, msg string) (string, *Signed) {
	t.Helper()
	m, err := s.Spool(strings.NewReader(msg), t.TempDir())
	if err != nil {
		t.Fatalf("Spool: %v", err)
	}
	defer m.Close()
	out, err := io.ReadAll(m)
	if err != nil {
		t.Fatalf("reading signed message: %v", err)
	}
	return string(out), m
}

func verify(t *testing.T, lookup func(string) ([]string, error), msg string) []*dkim.Verification {
	t.Helper()
	vs, err := dkim.VerifyWithOptions(strings.NewReader(msg), &dkim.VerifyOptions{LookupTXT: lookup})
	if err != nil {
		t.Fatalf("Verify: %v", err)
	}
	return vs
}

func TestSpool_RSAAndEd25519_VerifyThroughDNS(t *testing.T) {
	t.Parallel()
	rk := mustKey(t, "example.com", "rsa1", false, rsaKey())
	ek := mustKey(t, "example.com", "ed1", false, edKey(t))
	lookup, _ := publish(t, rk, ek)
	s := NewFromKeys(rk, ek)

	signed, m := spoolAll(t, s, testMsg)
	if !strings.HasSuffix(signed, testMsg) || signed[:len(signed)-len(testMsg)] != m.Fields {
		t.Fatalf("signed message is not Fields + original:\n%s", signed)
	}
	if len(m.Keys) != 2 || strings.Count(m.Fields, "DKIM-Signature:") != 2 {
		t.Fatalf("want 2 signatures, got keys %d, fields:\n%s", len(m.Keys), m.Fields)
	}
	for _, want := range []string{"a=rsa-sha256", "a=ed25519-sha256", "c=relaxed/relaxed", "d=example.com", "s=rsa1", "s=ed1"} {
		if !strings.Contains(m.Fields, want) {
			t.Errorf("fields lack %q:\n%s", want, m.Fields)
		}
	}
	vs := verify(t, lookup, signed)
	if len(vs) != 2 {
		t.Fatalf("got %d verifications, want 2", len(vs))
	}
	for _, v := range vs {
		if v.Err != nil {
			t.Errorf("signature of %s does not verify: %v", v.Domain, v.Err)
		}
		// Over-signing: From, To, Subject, Date, Message-ID once more
		// than they occur; Received is not signed.
		count := map[string]int{}
		for _, k := range v.HeaderKeys {
			count[strings.ToLower(k)]++
		}
		for name, n := range map[string]int{"from": 2, "to": 2, "subject": 2, "date": 2, "message-id": 2,
			"mime-version": 1, "content-type": 1, "cc": 0, "received": 0, "reply-to": 0} {
			if count[name] != n {
				t.Errorf("h= lists %s %d times, want %d (h=%v)", name, count[name], n, v.HeaderKeys)
			}
		}
	}
}

func TestSpool_ChangedAfterSigning_FailsVerification(t *testing.T) {
	t.Parallel()
	k := mustKey(t, "example.com", "s1", false, edKey(t))
	lookup, _ := publish(t, k)
	signed, _ := spoolAll(t, NewFromKeys(k), testMsg)
	if vs := verify(t, lookup, signed); vs[0].Err != nil {
		t.Fatalf("unchanged message fails: %v", vs[0].Err)
	}
	changes := map[string]func(string) string{
		"body":          func(m string) string { return strings.Replace(m, "the body.", "the bodY.", 1) },
		"body appended": func(m string) string { return m + "P.S. added\r\n" },
		"subject":       func(m string) string { return strings.Replace(m, "Subject: Hello", "Subject: Hallo", 1) },
		// Fields added above the signed ones: only over-signing catches
		// them (a verifier picks the last instance first).
		"subject on top":    func(m string) string { return "Subject: Spam\r\n" + m },
		"to on top":         func(m string) string { return "To: eve@example.net\r\n" + m },
		"from on top":       func(m string) string { return "From: eve@example.net\r\n" + m },
		"message-id on top": func(m string) string { return "Message-ID: <2@example.net>\r\n" + m },
		"from changed":      func(m string) string { return strings.Replace(m, "alice@", "mallory@", 1) },
		"content-type":      func(m string) string { return strings.Replace(m, "text/plain", "text/html", 1) },
		"signature field":   func(m string) string { return strings.Replace(m, "s=s1", "s=s2", 1) },
	}
	for name, change := range changes {
		changed := change(signed)
		if changed == signed {
			t.Fatalf("%s: change did not apply", name)
		}
		vs, err := dkim.VerifyWithOptions(strings.NewReader(changed), &dkim.VerifyOptions{LookupTXT: lookup})
		if err != nil {
			continue
		}
		if len(vs) != 1 || vs[0].Err == nil {
			t.Errorf("%s: changed message still verifies", name)
		}
	}
	// Changes relaxed canonicalisation ignores still verify.
	relaxed := strings.Replace(signed, "Subject: Hello", "subject:   Hello", 1)
	relaxed = strings.Replace(relaxed, "the body.\r\n", "the body.  \r\n\r\n\r\n", 1)
	if vs := verify(t, lookup, relaxed); vs[0].Err != nil {
		t.Errorf("whitespace and case changes fail relaxed verification: %v", vs[0].Err)
	}
}

func TestSpool_LargeBody_SpillsToUnlinkedFile(t *testing.T) {
	t.Parallel()
	k := mustKey(t, "example.com", "s1", false, edKey(t))
	lookup, _ := publish(t, k)
	line := strings.Repeat("0123456789", 7) + "\r\n"
	msg := testMsg + strings.Repeat(line, (3<<20)/len(line))
	dir := t.TempDir()
	m, err := NewFromKeys(k).Spool(strings.NewReader(msg), dir)
	if err != nil {
		t.Fatal(err)
	}
	if m.file == nil {
		t.Fatal("a 3 MiB body was kept in memory")
	}
	if ents, _ := os.ReadDir(dir); len(ents) != 0 {
		t.Errorf("spool file left in %s: %v", dir, ents)
	}
	out, err := io.ReadAll(m)
	if err != nil {
		t.Fatal(err)
	}
	if err := m.Close(); err != nil {
		t.Fatal(err)
	}
	if string(out[len(m.Fields):]) != msg {
		t.Fatal("spooled message differs from the original")
	}
	if vs := verify(t, lookup, string(out)); vs[0].Err != nil {
		t.Fatalf("large message fails: %v", vs[0].Err)
	}
}

func TestSpool_NoKeyOrNoFrom_PassesThroughUnsigned(t *testing.T) {
	t.Parallel()
	s := NewFromKeys(mustKey(t, "example.com", "s1", false, edKey(t)))
	cases := map[string]string{
		"other domain":   strings.Replace(testMsg, "alice@example.com", "alice@example.net", 1),
		"subdomain":      strings.Replace(testMsg, "alice@example.com", "alice@news.example.com", 1),
		"no from":        strings.Replace(testMsg, "From: Alice <alice@example.com>\r\n", "", 1),
		"two froms":      strings.Replace(testMsg, "To:", "From: alice@example.com\r\nTo:", 1),
		"mixed domains":  strings.Replace(testMsg, "Alice <alice@example.com>", "alice@example.com, eve@example.net", 1),
		"header only LF": "From: alice@example.com\nSubject: x",
		"huge header":    "From: alice@example.com\r\nX-Big: " + strings.Repeat("a", MaxHeaderBytes) + "\r\n\r\nbody\r\n",
	}
	for name, msg := range cases {
		out, m := spoolAll(t, s, msg)
		if m.Fields != "" || m.file != nil {
			t.Errorf("%s: signed (fields %q)", name, m.Fields)
		}
		if out != msg {
			t.Errorf("%s: message changed", name)
		}
	}
}

func TestSpool_SignsFromVariants(t *testing.T) {
	t.Parallel()
	k := mustKey(t, "example.com", "s1", false, edKey(t))
	lookup, _ := publish(t, k)
	s := NewFromKeys(k)
	cases := map[string]string{
		"upper case":       strings.Replace(testMsg, "alice@example.com", "Alice@EXAMPLE.COM", 1),
		"encoded name":     strings.Replace(testMsg, "Alice <", "=?utf-8?q?Al=C3=AFce?= <", 1),
		"unknown charset":  strings.Replace(testMsg, "Alice <", "=?x-weird?q?Alice?= <", 1),
		"folded from":      strings.Replace(testMsg, "Alice <", "Alice\r\n <", 1),
		"two authors":      strings.Replace(testMsg, "Alice <alice@example.com>", "alice@example.com, carol@Example.com", 1),
		"bare LF endings":  strings.ReplaceAll(testMsg, "\r\n", "\n"),
		"lower-case field": strings.Replace(testMsg, "From:", "from:", 1),
	}
	for name, msg := range cases {
		out, m := spoolAll(t, s, msg)
		if m.Fields == "" {
			t.Errorf("%s: not signed", name)
			continue
		}
		if vs := verify(t, lookup, out); vs[0].Err != nil {
			t.Errorf("%s: does not verify: %v", name, vs[0].Err)
		}
	}
}

type failingReader struct {
	data string
	err  error
}

func (r *failingReader) Read(p []byte) (int, error) {
	if r.data == "" {
		return 0, r.err
	}
	n := copy(p, r.data)
	r.data = r.data[n:]
	return n, nil
}

func TestSpool_ReaderError_ReturnedAsIs(t *testing.T) {
	t.Parallel()
	s := NewFromKeys(mustKey(t, "example.com", "s1", false, edKey(t)))
	errLimit := errors.New("552 message too big")
	for name, data := range map[string]string{
		"in body":   testMsg + strings.Repeat("x", 100<<10),
		"in header": "From: alice@example.com\r\nSubj",
	} {
		_, err := s.Spool(&failingReader{data: data, err: errLimit}, t.TempDir())
		if err != errLimit {
			t.Errorf("%s: err = %v, want the reader's own error", name, err)
		}
	}
}

func TestSign_HeaderAndBody(t *testing.T) {
	t.Parallel()
	k := mustKey(t, "example.com", "s1", false, edKey(t))
	lookup, _ := publish(t, k)
	s := NewFromKeys(k)
	head, body, _ := strings.Cut(testMsg, "\r\n\r\n")
	fields, err := s.Sign([]byte(head+"\r\n\r\n"), strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	if vs := verify(t, lookup, fields+testMsg); vs[0].Err != nil {
		t.Fatalf("Sign: does not verify: %v", vs[0].Err)
	}
	// Key.Sign over the whole message gives an equivalent signature.
	field, err := k.Sign(strings.NewReader(testMsg))
	if err != nil {
		t.Fatal(err)
	}
	if vs := verify(t, lookup, field+testMsg); vs[0].Err != nil {
		t.Fatalf("Key.Sign: does not verify: %v", vs[0].Err)
	}
	// No key: no field, no error.
	other := strings.Replace(head, "example.com>", "example.net>", 1)
	if f, err := s.Sign([]byte(other+"\r\n\r\n"), strings.NewReader(body)); f != "" || err != nil {
		t.Errorf("unsigned domain: %q, %v", f, err)
	}
}

func TestKeysFor(t *testing.T) {
	t.Parallel()
	ed := edKey(t)
	exact := mustKey(t, "example.com", "a", false, ed)
	parent := mustKey(t, "example.org", "b", true, ed)
	parent2 := mustKey(t, "example.org", "c", false, ed)
	deep := mustKey(t, "mail.example.org", "d", false, ed)
	s := NewFromKeys(exact, parent, parent2, deep)
	cases := []struct {
		domain string
		want   []*Key
	}{
		{"example.com", []*Key{exact}},
		{"EXAMPLE.com.", []*Key{exact}},
		{"news.example.com", nil}, // no sub_domains
		{"example.org", []*Key{parent, parent2}},
		{"news.example.org", []*Key{parent}},
		{"a.b.example.org", []*Key{parent}},
		{"mail.example.org", []*Key{deep}}, // exact beats parent
		{"x.mail.example.org", []*Key{parent}},
		{"org", nil},
		{"", nil},
		{"example.net", nil},
	}
	for _, c := range cases {
		got := s.KeysFor(c.domain)
		if len(got) != len(c.want) {
			t.Errorf("KeysFor(%q) = %d keys, want %d", c.domain, len(got), len(c.want))
			continue
		}
		for i := range got {
			if got[i] != c.want[i] {
				t.Errorf("KeysFor(%q)[%d] = %s/%s, want %s/%s", c.domain, i,
					got[i].Domain, got[i].Selector, c.want[i].Domain, c.want[i].Selector)
			}
		}
		if k := s.KeyFor(c.domain); (k == nil) != (len(c.want) == 0) || (k != nil && k != c.want[0]) {
			t.Errorf("KeyFor(%q) = %v", c.domain, k)
		}
	}
	var nilSigner *Signer
	if nilSigner.KeyFor("example.com") != nil || nilSigner.Len() != 0 {
		t.Error("nil Signer has keys")
	}
}

func TestSubDomainSignature_VerifiesWithParentKey(t *testing.T) {
	t.Parallel()
	k := mustKey(t, "example.com", "s1", true, edKey(t))
	lookup, _ := publish(t, k)
	msg := strings.Replace(testMsg, "alice@example.com", "alice@news.example.com", 1)
	out, m := spoolAll(t, NewFromKeys(k), msg)
	if !bytes.Contains([]byte(m.Fields), []byte("d=example.com")) {
		t.Fatalf("fields: %s", m.Fields)
	}
	if vs := verify(t, lookup, out); vs[0].Err != nil || vs[0].Domain != "example.com" {
		t.Fatalf("verification: domain %q, %v", vs[0].Domain, vs[0].Err)
	}
}

// A message that is all header (no empty line, no body; RFC 5322 §3.5) is
// signed and queued with the empty line that ends a header; the signature
// verifies. Without a key for its From: domain it passes unchanged.
func TestSpool_HeaderOnlyMessage(t *testing.T) {
	t.Parallel()
	k := mustKey(t, "example.com", "rsa1", false, rsaKey())
	lookup, _ := publish(t, k)
	s := NewFromKeys(k)
	const msg = "From: alice@example.com\r\nTo: bob@example.org\r\nSubject: cron: disk 91% full\r\n"
	signed, m := spoolAll(t, s, msg)
	if m.Fields == "" || signed != m.Fields+msg+"\r\n" {
		t.Fatalf("want Fields + the header + an empty line, got:\n%q", signed)
	}
	for _, v := range verify(t, lookup, signed) {
		if v.Err != nil {
			t.Errorf("signature does not verify: %v", v.Err)
		}
	}
	other := "From: carol@unsigned.test\r\nSubject: x\r\n"
	if out, m := spoolAll(t, s, other); out != other || m.Fields != "" {
		t.Errorf("a header-only message without a key changed: %q", out)
	}
}

// Text that follows the fields without an empty line is the body (as the
// relay and Postfix read it): the message is signed and queued with the
// empty line before it. It was queued with one at its end instead, which put
// the text into the header and signed an empty body: verifiers that read the
// text as body (a milter behind Postfix) or refuse text in a header (dkimpy)
// failed the signature.
func TestSpool_TextAfterFieldsWithoutEmptyLine(t *testing.T) {
	t.Parallel()
	k := mustKey(t, "example.com", "rsa1", false, rsaKey())
	lookup, _ := publish(t, k)
	s := NewFromKeys(k)
	const fields = "From: alice@example.com\r\nTo: bob@example.org\r\n"
	for _, text := range []string{
		"backup done\r\nall good\r\n",             // to the end
		"backup done\r\n\r\nsecond paragraph\r\n", // an empty line further down
	} {
		signed, m := spoolAll(t, s, fields+text)
		if m.Fields == "" || signed != m.Fields+fields+"\r\n"+text {
			t.Errorf("want Fields + the fields + an empty line + the text, got:\n%q", signed)
			continue
		}
		for _, v := range verify(t, lookup, signed) {
			if v.Err != nil {
				t.Errorf("signature does not verify: %v", v.Err)
			}
		}
	}
}

// List-Unsubscribe and List-Unsubscribe-Post are signed when present (RFC
// 8058 §4).
func TestSpool_SignsListUnsubscribe(t *testing.T) {
	t.Parallel()
	k := mustKey(t, "example.com", "rsa1", false, rsaKey())
	lookup, _ := publish(t, k)
	msg := strings.Replace(testMsg, "MIME-Version:", "List-Unsubscribe: <https://example.com/u/1>\r\nList-Unsubscribe-Post: List-Unsubscribe=One-Click\r\nMIME-Version:", 1)
	signed, _ := spoolAll(t, NewFromKeys(k), msg)
	for _, v := range verify(t, lookup, signed) {
		got := strings.ToLower(strings.Join(v.HeaderKeys, ":"))
		if v.Err != nil || !strings.Contains(got, "list-unsubscribe:list-unsubscribe-post") {
			t.Errorf("h=%s err=%v", got, v.Err)
		}
	}
}
