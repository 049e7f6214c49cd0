// Package dkimkey reads DKIM private keys. It imports nothing of mailhop, so
// the configuration check can load the keys that signing will use.
package dkimkey

import (
	"crypto"
	"crypto/ed25519"
	"crypto/rsa"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"os"
	"strings"
)

// MinRSABits is the smallest RSA key accepted. RFC 8301 §3.2 requires
// verifiers to accept 1024 to 4096 bits and signers to use at least 1024;
// 2048 is what receivers expect today.
const MinRSABits = 2048

// Load reads a PEM private key file: RSA (PKCS #1 "RSA PRIVATE
// KEY" or PKCS #8 "PRIVATE KEY", at least MinRSABits) or Ed25519 (PKCS #8).
func Load(path string) (crypto.Signer, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	k, err := Parse(data)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return k, nil
}

// Parse parses the first private key PEM block in data; see Load for the
// forms accepted.
func Parse(data []byte) (crypto.Signer, error) {
	for {
		var b *pem.Block
		b, data = pem.Decode(data)
		if b == nil {
			return nil, errors.New("no PEM private key found")
		}
		if !strings.HasSuffix(b.Type, "PRIVATE KEY") {
			continue // e.g. EC PARAMETERS or a certificate before the key
		}
		if _, enc := b.Headers["Proc-Type"]; enc {
			return nil, errors.New("encrypted PEM keys are not supported")
		}
		var key any
		var err error
		switch b.Type {
		case "RSA PRIVATE KEY":
			key, err = x509.ParsePKCS1PrivateKey(b.Bytes)
		case "PRIVATE KEY":
			key, err = x509.ParsePKCS8PrivateKey(b.Bytes)
		default:
			return nil, fmt.Errorf("unsupported PEM block %q (want RSA or Ed25519)", b.Type)
		}
		if err != nil {
			return nil, fmt.Errorf("parsing %s: %v", b.Type, err)
		}
		return Check(key)
	}
}

// Check returns key as a signer when it is a DKIM signing key mailhop
// accepts: RSA of at least MinRSABits, or Ed25519.
func Check(key any) (crypto.Signer, error) {
	switch k := key.(type) {
	case *rsa.PrivateKey:
		if bits := k.N.BitLen(); bits < MinRSABits {
			return nil, fmt.Errorf("RSA key has %d bits; at least %d are required", bits, MinRSABits)
		}
		return k, nil
	case ed25519.PrivateKey:
		return k, nil
	}
	return nil, fmt.Errorf("unsupported key type %T (want RSA or Ed25519)", key)
}
