package dnsmx

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"fmt"
	"io"
	"math/big"
	"net"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/mailhop/mailhop/dnsmx/dnstest"
)

type testCert struct {
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
}

// issue makes a certificate: a CA when names is nil, else a server
// certificate for names; signed by parent (self-signed when nil).
func issue(t *testing.T, parent *testCert, notAfter time.Time, names ...string) *testCert {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(time.Now().UnixNano()),
		NotBefore:    time.Now().Add(-48 * time.Hour),
		NotAfter:     notAfter,
	}
	if names == nil {
		tmpl.Subject = pkix.Name{CommonName: "test CA"}
		tmpl.IsCA, tmpl.BasicConstraintsValid = true, true
		tmpl.KeyUsage = x509.KeyUsageCertSign
	} else {
		tmpl.Subject = pkix.Name{CommonName: names[0]}
		tmpl.DNSNames = names
		tmpl.KeyUsage = x509.KeyUsageDigitalSignature
		tmpl.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}
	}
	signer, signKey := tmpl, key
	if parent != nil {
		signer, signKey = parent.cert, parent.key
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, signer, &key.PublicKey, signKey)
	if err != nil {
		t.Fatal(err)
	}
	c, _ := x509.ParseCertificate(der)
	return &testCert{cert: c, key: key}
}

func tlsa(t *testing.T, usage, selector, matching uint8, c *x509.Certificate) *dns.TLSA {
	t.Helper()
	rec := &dns.TLSA{Hdr: dns.RR_Header{Name: "_25._tcp.mx.example.com.", Rrtype: dns.TypeTLSA, Class: dns.ClassINET, Ttl: 300},
		Usage: usage, Selector: selector, MatchingType: matching}
	h, err := dns.CertificateToDANE(selector, matching, c)
	if err != nil {
		t.Fatal(err)
	}
	rec.Certificate = h
	return rec
}

func state(name string, chain ...*testCert) tls.ConnectionState {
	s := tls.ConnectionState{ServerName: name}
	for _, c := range chain {
		s.PeerCertificates = append(s.PeerCertificates, c.cert)
	}
	return s
}

func TestLookupTLSA_ADBitAndAnswers(t *testing.T) {
	t.Parallel()
	day := time.Now().Add(24 * time.Hour)
	leaf := issue(t, nil, day, "mx.example.com")
	rec := tlsa(t, 3, 1, 1, leaf.cert)
	srv := dnstest.New(t, dnstest.Zone{
		"_25._tcp.mx.example.com.":    {rec},
		"_25._tcp.alias.example.com.": {dnstest.CNAME("_25._tcp.alias.example.com", "_25._tcp.mx.example.com")},
		"mx.example.com.":             {dnstest.A("mx.example.com", "192.0.2.1")},
	})
	srv.SetRcode("_25._tcp.broken.example.com", dns.RcodeServerFailure)
	r := newResolver(t, srv)
	ctx := context.Background()

	srv.SetAD(true)
	recs, secure, err := r.LookupTLSA(ctx, "MX.example.com.", 25)
	if err != nil || !secure || len(recs) != 1 || recs[0].Certificate != rec.Certificate {
		t.Fatalf("with AD: %v, secure %v, %v", recs, secure, err)
	}
	recs, secure, err = r.LookupTLSA(ctx, "alias.example.com", 25)
	if err != nil || !secure || len(recs) != 1 {
		t.Errorf("through a CNAME: %v, secure %v, %v", recs, secure, err)
	}

	// A second lookup is answered from the cache, with its AD bit.
	n := srv.Queries()
	if recs, secure, err = r.LookupTLSA(ctx, "mx.example.com", 25); err != nil || !secure || len(recs) != 1 {
		t.Errorf("from the cache: %v, secure %v, %v", recs, secure, err)
	}
	if srv.Queries() != n {
		t.Error("the second TLSA lookup asked the server")
	}

	srv.SetAD(false)
	r = newResolver(t, srv) // nothing cached
	recs, secure, err = r.LookupTLSA(ctx, "mx.example.com", 25)
	if err != nil || secure || len(recs) != 1 {
		t.Errorf("without AD: %v, secure %v, %v; want the records, not secure", recs, secure, err)
	}

	srv.SetAD(true)
	for _, q := range []struct {
		host string
		port int
	}{{"nothere.example.com", 25}, {"mx.example.com", 587}} {
		recs, secure, err = r.LookupTLSA(ctx, q.host, q.port)
		if err != nil || len(recs) != 0 || !secure {
			t.Errorf("%s port %d: %v, secure %v, %v; want none, secure denial", q.host, q.port, recs, secure, err)
		}
	}
	_, _, err = r.LookupTLSA(ctx, "broken.example.com", 25)
	wantError(t, err, true, CodeTemporary)
	_, _, err = r.LookupTLSA(ctx, "[192.0.2.1]", 25)
	wantError(t, err, false, CodeNoSuchDomain)
}

// TestLookupTLSA_SendsDOBit checks the query itself, with a server that
// answers only queries carrying DO and AD.
func TestLookupTLSA_SendsDOBit(t *testing.T) {
	t.Parallel()
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	seen := make(chan string, 4)
	srv := &dns.Server{PacketConn: pc, Handler: dns.HandlerFunc(func(w dns.ResponseWriter, q *dns.Msg) {
		opt := q.IsEdns0()
		seen <- fmt.Sprintf("do=%v ad=%v", opt != nil && opt.Do(), q.AuthenticatedData)
		m := new(dns.Msg)
		m.SetReply(q)
		m.AuthenticatedData = true
		w.WriteMsg(m)
	})}
	started := make(chan struct{})
	srv.NotifyStartedFunc = func() { close(started) }
	go srv.ActivateAndServe()
	<-started
	t.Cleanup(func() { srv.Shutdown() })

	r, err := NewResolver([]string{pc.LocalAddr().String()}, testTimeout)
	if err != nil {
		t.Fatal(err)
	}
	if _, secure, err := r.LookupTLSA(context.Background(), "mx.example.com", 25); err != nil || !secure {
		t.Fatalf("secure %v, %v", secure, err)
	}
	if got := <-seen; got != "do=true ad=true" {
		t.Errorf("query flags: %s", got)
	}
}

func TestVerifyDANE(t *testing.T) {
	t.Parallel()
	day := time.Now().Add(24 * time.Hour)
	past := time.Now().Add(-24 * time.Hour)
	ca := issue(t, nil, day)
	inter := issue(t, ca, day)
	leaf := issue(t, inter, day, "mx.example.com", "*.mail.example.com")
	expired := issue(t, inter, past, "mx.example.com")
	selfSigned := issue(t, nil, past, "something.else")
	other := issue(t, nil, day)

	cases := []struct {
		name  string
		recs  []*dns.TLSA
		state tls.ConnectionState
		ok    bool
	}{
		{"EE SPKI SHA-256", []*dns.TLSA{tlsa(t, 3, 1, 1, leaf.cert)}, state("mx.example.com", leaf, inter, ca), true},
		{"EE cert SHA-256", []*dns.TLSA{tlsa(t, 3, 0, 1, leaf.cert)}, state("mx.example.com", leaf), true},
		{"EE SPKI SHA-512", []*dns.TLSA{tlsa(t, 3, 1, 2, leaf.cert)}, state("mx.example.com", leaf), true},
		{"EE cert full", []*dns.TLSA{tlsa(t, 3, 0, 0, leaf.cert)}, state("mx.example.com", leaf), true},
		{"EE ignores name and dates", []*dns.TLSA{tlsa(t, 3, 1, 1, selfSigned.cert)}, state("mx.example.com", selfSigned), true},
		{"EE second record matches", []*dns.TLSA{tlsa(t, 3, 1, 1, other.cert), tlsa(t, 3, 1, 1, leaf.cert)}, state("mx.example.com", leaf), true},
		{"EE mismatch", []*dns.TLSA{tlsa(t, 3, 1, 1, other.cert)}, state("mx.example.com", leaf), false},
		{"EE of the CA is not EE", []*dns.TLSA{tlsa(t, 3, 1, 1, ca.cert)}, state("mx.example.com", leaf, inter, ca), false},

		{"TA root cert", []*dns.TLSA{tlsa(t, 2, 0, 1, ca.cert)}, state("mx.example.com", leaf, inter, ca), true},
		{"TA intermediate SPKI", []*dns.TLSA{tlsa(t, 2, 1, 1, inter.cert)}, state("mx.example.com", leaf, inter), true},
		{"TA wildcard name", []*dns.TLSA{tlsa(t, 2, 0, 1, ca.cert)}, state("a.mail.example.com", leaf, inter, ca), true},
		{"TA trailing dot", []*dns.TLSA{tlsa(t, 2, 0, 1, ca.cert)}, state("mx.example.com.", leaf, inter, ca), true},
		{"TA wildcard is one label", []*dns.TLSA{tlsa(t, 2, 0, 1, ca.cert)}, state("a.b.mail.example.com", leaf, inter, ca), false},
		{"TA wrong name", []*dns.TLSA{tlsa(t, 2, 0, 1, ca.cert)}, state("mx.example.net", leaf, inter, ca), false},
		{"TA no name", []*dns.TLSA{tlsa(t, 2, 0, 1, ca.cert)}, state("", leaf, inter, ca), false},
		{"TA expired leaf", []*dns.TLSA{tlsa(t, 2, 0, 1, ca.cert)}, state("mx.example.com", expired, inter, ca), false},
		{"TA not presented", []*dns.TLSA{tlsa(t, 2, 0, 1, ca.cert)}, state("mx.example.com", leaf, inter), false},
		{"TA missing intermediate", []*dns.TLSA{tlsa(t, 2, 0, 1, ca.cert)}, state("mx.example.com", leaf, ca), false},
		{"TA matching the leaf only", []*dns.TLSA{tlsa(t, 2, 0, 1, leaf.cert)}, state("mx.example.com", leaf), false},
		{"TA other CA", []*dns.TLSA{tlsa(t, 2, 0, 1, other.cert)}, state("mx.example.com", leaf, inter, other), false},
		{"no certificates", []*dns.TLSA{tlsa(t, 3, 1, 1, leaf.cert)}, state("mx.example.com"), false},
	}
	for _, c := range cases {
		err := VerifyDANE(c.recs, c.state)
		if (err == nil) != c.ok {
			t.Errorf("%s: err = %v, want ok=%v", c.name, err, c.ok)
		}
		if err != nil && errors.Is(err, ErrNoUsableTLSA) {
			t.Errorf("%s: usable records reported unusable", c.name)
		}
	}

	// PKIX-TA(0) and PKIX-EE(1), and unknown selectors or matching
	// types, are unusable for SMTP (RFC 7672 §3.1.3).
	unusable := []*dns.TLSA{tlsa(t, 0, 0, 1, ca.cert), tlsa(t, 1, 1, 1, leaf.cert)}
	odd := tlsa(t, 3, 1, 1, leaf.cert)
	odd.Selector = 7
	odd2 := tlsa(t, 3, 1, 1, leaf.cert)
	odd2.MatchingType = 9
	unusable = append(unusable, odd, odd2)
	if err := VerifyDANE(unusable, state("mx.example.com", leaf, inter, ca)); !errors.Is(err, ErrNoUsableTLSA) {
		t.Errorf("unusable records: %v, want ErrNoUsableTLSA", err)
	}
	if got := UsableTLSA(append(unusable, tlsa(t, 3, 1, 1, leaf.cert))); len(got) != 1 {
		t.Errorf("UsableTLSA kept %d records, want 1", len(got))
	}
}

// TestVerifyDANE_InHandshake runs a real TLS handshake the way delivery
// would use DANE: WebPKI off, VerifyDANE as VerifyConnection.
func TestVerifyDANE_InHandshake(t *testing.T) {
	t.Parallel()
	day := time.Now().Add(24 * time.Hour)
	ca := issue(t, nil, day)
	leaf := issue(t, ca, day, "mx.example.com")
	serverCert := tls.Certificate{Certificate: [][]byte{leaf.cert.Raw, ca.cert.Raw}, PrivateKey: leaf.key}

	for _, c := range []struct {
		name string
		recs []*dns.TLSA
		ok   bool
	}{
		{"DANE-TA matches", []*dns.TLSA{tlsa(t, 2, 1, 1, ca.cert)}, true},
		{"DANE-EE matches", []*dns.TLSA{tlsa(t, 3, 1, 1, leaf.cert)}, true},
		{"nothing matches", []*dns.TLSA{tlsa(t, 3, 1, 1, ca.cert)}, false},
	} {
		cc, sc := net.Pipe()
		server := tls.Server(sc, &tls.Config{Certificates: []tls.Certificate{serverCert}})
		go func() {
			// Read until the client's close_notify: over net.Pipe two
			// close_notify writes would wait on each other.
			if server.Handshake() == nil {
				io.Copy(io.Discard, server)
			}
			server.Close()
		}()
		client := tls.Client(cc, &tls.Config{
			ServerName:         "mx.example.com",
			InsecureSkipVerify: true, // DANE replaces the WebPKI check
			VerifyConnection:   func(cs tls.ConnectionState) error { return VerifyDANE(c.recs, cs) },
		})
		err := client.Handshake()
		client.Close()
		if (err == nil) != c.ok {
			t.Errorf("%s: handshake err = %v, want ok=%v", c.name, err, c.ok)
		}
	}
}
