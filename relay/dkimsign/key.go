package dkimsign

import (
	"crypto"
	"crypto/ed25519"
	"crypto/rsa"
	"crypto/x509"
	"encoding/base64"
	"encoding/pem"
	"fmt"

	"github.com/mailhop/mailhop/relay/dkimsign/dkimkey"
)

// MinRSABits is the smallest RSA key accepted (dkimkey.MinRSABits).
const MinRSABits = dkimkey.MinRSABits

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
