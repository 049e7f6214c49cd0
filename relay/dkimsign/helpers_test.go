package dkimsign

import (
	"context"
	"crypto"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/rsa"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/mailhop/mailhop/dnsmx/dnstest"
)

// RSA key generation is slow on a loaded machine: one key for the package.
var rsaKey = sync.OnceValue(func() *rsa.PrivateKey {
	k, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		panic(err)
	}
	return k
})

func edKey(t testing.TB) ed25519.PrivateKey {
	t.Helper()
	_, k, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func mustKey(t testing.TB, domain, selector string, sub bool, k crypto.Signer) *Key {
	t.Helper()
	key, err := NewKey(domain, selector, sub, k)
	if err != nil {
		t.Fatal(err)
	}
	return key
}

// publish starts a loopback DNS server serving the public keys of keys at
// SELECTOR._domainkey.DOMAIN and returns a LookupTXT for dkim.VerifyOptions
// that asks it.
func publish(t *testing.T, keys ...*Key) (func(string) ([]string, error), *dnstest.Server) {
	t.Helper()
	zone := dnstest.Zone{}
	for _, k := range keys {
		rec, err := KeyRecord(k.Public())
		if err != nil {
			t.Fatal(err)
		}
		name := k.Selector + "._domainkey." + k.Domain + "."
		zone[name] = append(zone[name], dnstest.TXT(name, SplitTXT(rec)...))
	}
	srv := dnstest.New(t, zone)
	return lookupVia(srv.Addr), srv
}

// lookupVia returns a TXT lookup that asks only the DNS server at addr.
func lookupVia(addr string) func(string) ([]string, error) {
	r := &net.Resolver{PreferGo: true, Dial: func(ctx context.Context, network, _ string) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, network, addr)
	}}
	return func(name string) ([]string, error) {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		return r.LookupTXT(ctx, name)
	}
}
