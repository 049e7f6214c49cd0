// Package dkimsign signs outgoing mail with DKIM (RFC 6376; Ed25519 keys
// per RFC 8463), using github.com/emersion/go-msgauth/dkim.
//
// A message is signed once, as it is queued, so every delivery attempt
// carries the same signature. The key is chosen by the domain of the
// message's From: field (the author, which DMARC aligns with d=): the
// [[dkim]] entries for exactly that domain, or, failing that, those of the
// nearest parent domain whose entry has sub_domains = true. Every entry for
// the chosen domain adds its own DKIM-Signature field, so an RSA and an
// Ed25519 key can sign side by side. A message with no From: field, several
// of them, or mailboxes of several domains in it is not signed.
//
// Signing uses relaxed/relaxed canonicalisation and SHA-256. The signed
// fields are those of RFC 6376 §5.4.1 that occur in the message; From, To,
// Subject, Date and Message-ID are listed once more than they occur
// (over-signed, §8.15), so adding one in transit breaks the signature.
//
// The DKIM-Signature field goes at the top of the message, but depends on
// the hash of the whole body. Spool therefore reads the message once —
// hashing it while keeping it in memory up to 64 KiB and in an unlinked
// temporary file beyond — and returns a reader over the signature fields
// followed by the message, for queue.Enqueue. Memory does not grow with
// the size of the body.
package dkimsign

import (
	"bytes"
	"crypto"
	"errors"
	"fmt"
	"io"
	"strings"

	"github.com/emersion/go-msgauth/dkim"

	"github.com/mailhop/mailhop/internal/idn"
	"github.com/mailhop/mailhop/relay/config"
	"github.com/mailhop/mailhop/relay/dkimsign/dkimkey"
	"github.com/mailhop/mailhop/relay/mailhdr"
)

// Key is one signing key of a domain.
type Key struct {
	Domain     string // the d= tag: lower-case ASCII, no trailing dot
	Selector   string // the s= tag
	SubDomains bool   // also signs mail from subdomains of Domain
	signer     crypto.Signer
}

// Algorithm returns "rsa" or "ed25519".
func (k *Key) Algorithm() string {
	a, _ := Algorithm(k.signer.Public())
	return a
}

// Public returns the public half of the key.
func (k *Key) Public() crypto.PublicKey { return k.signer.Public() }

// Signer holds the keys of the [[dkim]] entries. It is safe for concurrent
// use; a configuration reload makes a new one.
type Signer struct {
	keys []*Key // in configuration order
}

// New loads the key files of the [[dkim]] entries. A key that cannot be
// read or is unsuitable (RSA under MinRSABits, another algorithm) is an
// error naming the entry.
func New(entries []config.DKIM) (*Signer, error) {
	s := &Signer{}
	for i, e := range entries {
		k, err := dkimkey.Load(e.KeyFile)
		if err != nil {
			return nil, fmt.Errorf("dkim[%d].key_file: %w", i, err)
		}
		if e.Selector == "" {
			return nil, fmt.Errorf("dkim[%d].selector: is required", i)
		}
		d := canonDomain(e.Domain)
		if d == "" {
			return nil, fmt.Errorf("dkim[%d].domain: is required", i)
		}
		s.keys = append(s.keys, &Key{Domain: d, Selector: e.Selector, SubDomains: e.SubDomains, signer: k})
	}
	return s, nil
}

// NewFromKeys makes a Signer from keys already loaded, for tests and tools.
// Each key needs Domain, Selector and the signer key.
func NewFromKeys(keys ...*Key) *Signer {
	return &Signer{keys: keys}
}

// NewKey makes a Key from its parts.
func NewKey(domain, selector string, subDomains bool, key crypto.Signer) (*Key, error) {
	if _, err := dkimkey.Check(key); err != nil {
		return nil, err
	}
	d := canonDomain(domain)
	if d == "" || selector == "" {
		return nil, errors.New("dkimsign: domain and selector are required")
	}
	return &Key{Domain: d, Selector: selector, SubDomains: subDomains, signer: key}, nil
}

// Len returns the number of keys.
func (s *Signer) Len() int {
	if s == nil {
		return 0
	}
	return len(s.keys)
}

// canonDomain returns the lower-case A-label form of a domain, without a
// trailing dot; "" if it is empty.
func canonDomain(d string) string {
	return idn.Key(strings.TrimSuffix(strings.TrimSpace(d), "."))
}

// KeyFor returns the first key that signs mail from fromDomain, or nil.
func (s *Signer) KeyFor(fromDomain string) *Key {
	if ks := s.KeysFor(fromDomain); len(ks) > 0 {
		return ks[0]
	}
	return nil
}

// KeysFor returns every key that signs mail from fromDomain: the entries
// for exactly that domain or, when there are none, those of the nearest
// parent domain with SubDomains set. Nil means the mail is not signed.
func (s *Signer) KeysFor(fromDomain string) []*Key {
	if s == nil {
		return nil
	}
	d := canonDomain(fromDomain)
	if d == "" {
		return nil
	}
	for exact := true; d != ""; exact = false {
		var out []*Key
		for _, k := range s.keys {
			if k.Domain == d && (exact || k.SubDomains) {
				out = append(out, k)
			}
		}
		if len(out) > 0 {
			return out
		}
		i := strings.IndexByte(d, '.')
		if i < 0 {
			break
		}
		d = d[i+1:]
	}
	return nil
}

// keysForHeader returns the keys for the message with this header block,
// and the h= list to sign.
func (s *Signer) keysForHeader(header []byte, allow func(string) bool) ([]*Key, []string) {
	fs := fields(header)
	d := fromDomain(fs)
	if d == "" || allow != nil && !allow(d) {
		return nil, nil
	}
	keys := s.KeysFor(d)
	if keys == nil {
		return nil, nil
	}
	return keys, headerKeys(fs)
}

// Sign computes the DKIM-Signature fields for a message: header is its
// header block up to and including the empty line that ends it, body the
// rest, read to its end. The result is one field per key (each ending in
// CRLF) to put above the message, or "" when no key applies. Only the
// header is held in memory.
func (s *Signer) Sign(header []byte, body io.Reader) (string, error) {
	keys, hk := s.keysForHeader(header, nil)
	if keys == nil {
		return "", nil
	}
	return signWith(keys, hk, header, body, io.Discard)
}

// Sign computes this key's DKIM-Signature field over a whole message read
// from msg, signing the usual fields (see the package doc). The field ends
// in CRLF.
func (k *Key) Sign(msg io.Reader) (string, error) {
	br := newReader(msg)
	h, err := mailhdr.Read(br, MaxHeaderBytes)
	if err != nil {
		return "", err
	}
	return signWith([]*Key{k}, headerKeys(fields(h)), h, br, io.Discard)
}

// signWith signs header+body with every key, copying body to sink too.
// An error reading body is returned as it is (so the caller's SMTP
// errors survive); an error writing to sink or signing is wrapped.
func signWith(keys []*Key, hk []string, header []byte, body io.Reader, sink io.Writer) (string, error) {
	signers := make([]*dkim.Signer, 0, len(keys))
	abort := func() {
		for _, s := range signers {
			s.Close()
		}
	}
	ws := make([]io.Writer, 0, len(keys)+1)
	ws = append(ws, sink)
	for _, k := range keys {
		ds, err := dkim.NewSigner(&dkim.SignOptions{
			Domain:                 k.Domain,
			Selector:               k.Selector,
			Signer:                 k.signer,
			Hash:                   crypto.SHA256,
			HeaderCanonicalization: dkim.CanonicalizationRelaxed,
			BodyCanonicalization:   dkim.CanonicalizationRelaxed,
			HeaderKeys:             hk,
		})
		if err != nil {
			abort()
			return "", fmt.Errorf("dkimsign: %s/%s: %w", k.Domain, k.Selector, err)
		}
		signers = append(signers, ds)
		ws = append(ws, ds)
	}
	for _, ds := range signers {
		if _, err := ds.Write(header); err != nil {
			abort()
			return "", fmt.Errorf("dkimsign: %w", err)
		}
	}
	rr := &readErr{r: body}
	if _, err := io.Copy(io.MultiWriter(ws...), rr); err != nil {
		abort()
		if rr.err != nil {
			return "", rr.err
		}
		return "", fmt.Errorf("dkimsign: %w", err)
	}
	var out bytes.Buffer
	for i, ds := range signers {
		if err := ds.Close(); err != nil {
			for _, rest := range signers[i+1:] {
				rest.Close()
			}
			return "", fmt.Errorf("dkimsign: %s/%s: %w", keys[i].Domain, keys[i].Selector, err)
		}
		out.WriteString(ds.Signature())
	}
	return out.String(), nil
}

// readErr remembers the error its reader returned, to tell a failure of
// the message source from one of the sink.
type readErr struct {
	r   io.Reader
	err error
}

func (r *readErr) Read(p []byte) (int, error) {
	n, err := r.r.Read(p)
	if err != nil && err != io.EOF {
		r.err = err
	}
	return n, err
}
