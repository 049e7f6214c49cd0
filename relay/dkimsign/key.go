package dkimsign

import (
	"crypto"
	"crypto/ed25519"
	"crypto/rsa"
	"crypto/x509"
	"encoding/base64"
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

// LoadPrivateKey reads a PEM private key file: RSA (PKCS #1 "RSA PRIVATE
// KEY" or PKCS #8 "PRIVATE KEY", at least MinRSABits) or Ed25519 (PKCS #8).
func LoadPrivateKey(path string) (crypto.Signer, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	k, err := ParsePrivateKey(data)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return k, nil
}

// ParsePrivateKey parses the first private key PEM block in data; see
// LoadPrivateKey for the forms accepted.
func ParsePrivateKey(data []byte) (crypto.Signer, error) {
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
		return checkKey(key)
	}
}

func checkKey(key any) (crypto.Signer, error) {
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

// MarshalPrivateKey returns key as a PKCS #8 "PRIVATE KEY" PEM block.
func MarshalPrivateKey(key crypto.Signer) ([]byte, error) {
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, err
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), nil
}

// Algorithm returns the k= tag for pub: "rsa" or "ed25519".
func Algorithm(pub crypto.PublicKey) (string, error) {
	switch pub.(type) {
	case *rsa.PublicKey:
		return "rsa", nil
	case ed25519.PublicKey:
		return "ed25519", nil
	}
	return "", fmt.Errorf("unsupported public key type %T", pub)
}

// KeyRecord returns the value of the DNS TXT record that publishes pub
// (RFC 6376 §3.6.1): "v=DKIM1; k=rsa; p=..." with the SubjectPublicKeyInfo
// of an RSA key, or "v=DKIM1; k=ed25519; p=..." with the raw 32-byte key
// (RFC 8463 §4.2).
func KeyRecord(pub crypto.PublicKey) (string, error) {
	var raw []byte
	switch k := pub.(type) {
	case *rsa.PublicKey:
		der, err := x509.MarshalPKIXPublicKey(k)
		if err != nil {
			return "", err
		}
		raw = der
	case ed25519.PublicKey:
		raw = k
	default:
		return "", fmt.Errorf("unsupported public key type %T", pub)
	}
	alg, _ := Algorithm(pub)
	return "v=DKIM1; k=" + alg + "; p=" + base64.StdEncoding.EncodeToString(raw), nil
}

// SplitTXT cuts a TXT record value into character-strings of at most 255
// bytes (RFC 1035 §3.3.14), which DNS joins back without separators
// (RFC 6376 §3.6.2.2).
func SplitTXT(v string) []string {
	var out []string
	for len(v) > 255 {
		out = append(out, v[:255])
		v = v[255:]
	}
	return append(out, v)
}
