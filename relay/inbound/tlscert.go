package inbound

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"time"

	"github.com/mailhop/mailhop/relay/config"
)

// selfSignedValidity is how long a generated certificate is valid; an
// expired one is generated again at the next start or reload.
const selfSignedValidity = 2 * 365 * 24 * time.Hour

// certPaths returns the certificate and key files in use: the configured
// ones, or the self-signed pair in data_dir/tls.
func (s *Server) certPaths() (cert, key string, selfSigned bool) {
	cfg := s.cfg.Load()
	if cfg.TLS.CertFile != "" {
		return cfg.TLS.CertFile, cfg.TLS.KeyFile, false
	}
	dir := filepath.Join(cfg.DataDir, "tls")
	return filepath.Join(dir, "selfsigned.crt"), filepath.Join(dir, "selfsigned.key"), true
}

// ReloadCertificate loads the certificate and key again (after SIGHUP, or
// when the configured files changed). New handshakes use the new
// certificate; on error the old one stays in use.
func (s *Server) ReloadCertificate() error {
	certFile, keyFile, selfSigned := s.certPaths()
	if selfSigned {
		if err := s.ensureSelfSigned(certFile, keyFile); err != nil {
			return err
		}
	}
	cert, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		return fmt.Errorf("tls: loading %s: %w", certFile, err)
	}
	s.cert.Store(&cert)
	return nil
}

// ensureSelfSigned generates a self-signed certificate for the hostname
// unless a valid one is already there (it is reused from start to start).
func (s *Server) ensureSelfSigned(certFile, keyFile string) error {
	if cert, err := tls.LoadX509KeyPair(certFile, keyFile); err == nil && cert.Leaf != nil &&
		time.Now().Before(cert.Leaf.NotAfter) {
		s.log.Warn("using a self-signed TLS certificate; set tls.cert_file and tls.key_file for clients to verify this server",
			"cert_file", certFile)
		return nil
	}
	cfg := s.cfg.Load()
	host := cfg.Hostname
	dnsNames, ips := selfSignedNames(cfg)
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return err
	}
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 128))
	if err != nil {
		return err
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{CommonName: host},
		DNSNames:              dnsNames,
		IPAddresses:           ips,
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(selfSignedValidity),
		KeyUsage:              x509.KeyUsageDigitalSignature,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return err
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Dir(certFile), 0o700); err != nil {
		return err
	}
	if err := writeFileAtomic(keyFile, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}), 0o600); err != nil {
		return err
	}
	if err := writeFileAtomic(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o644); err != nil {
		return err
	}
	s.log.Warn("generated a self-signed TLS certificate; set tls.cert_file and tls.key_file for clients to verify this server",
		"cert_file", certFile, "hostname", host)
	return nil
}

// selfSignedNames are the names a generated certificate holds: the
// hostname and localhost, the loopback addresses, and the address of each
// listener bound to one, so a client that trusts the file can verify it
// whether it connects by name or by address.
func selfSignedNames(cfg *config.Config) ([]string, []net.IP) {
	dns := []string{cfg.Hostname}
	if cfg.Hostname != "localhost" {
		dns = append(dns, "localhost")
	}
	ips := []net.IP{net.IPv4(127, 0, 0, 1), net.IPv6loopback}
	for _, l := range cfg.Listener {
		host, _, err := net.SplitHostPort(l.Address)
		if err != nil {
			continue
		}
		a, err := netip.ParseAddr(host)
		if err != nil || a.IsUnspecified() || a.Zone() != "" {
			continue
		}
		ip := net.IP(a.Unmap().AsSlice())
		if !slices.ContainsFunc(ips, ip.Equal) {
			ips = append(ips, ip)
		}
	}
	return dns, ips
}

// writeFileAtomic writes data to a temporary file, syncs it and renames it
// over name, so a crash never leaves half a key behind.
func writeFileAtomic(name string, data []byte, perm os.FileMode) error {
	f, err := os.CreateTemp(filepath.Dir(name), ".tmp-*")
	if err != nil {
		return err
	}
	tmp := f.Name()
	_, err = f.Write(data)
	if err == nil {
		err = f.Chmod(perm)
	}
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, name)
	}
	if err != nil {
		os.Remove(tmp)
	}
	return err
}

// newTLSConfig returns the listeners' TLS configuration: TLS 1.2 or newer,
// Go's default cipher suites, and the certificate that ReloadCertificate
// last stored.
func (s *Server) newTLSConfig() *tls.Config {
	return &tls.Config{
		MinVersion: tls.VersionTLS12,
		GetCertificate: func(*tls.ClientHelloInfo) (*tls.Certificate, error) {
			if c := s.cert.Load(); c != nil {
				return c, nil
			}
			return nil, errors.New("no certificate")
		},
	}
}
