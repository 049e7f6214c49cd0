package dnsmx

import (
	"context"
	"errors"
	"net/netip"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/miekg/dns"

	"github.com/mailhop/mailhop/dnsmx/dnstest"
)

// FuzzAnswer has a real DNS server on loopback answer every query of the
// lookups delivery makes (MX and the hosts' A and AAAA, a smarthost's
// addresses, TXT, TLSA) with the same message from the fuzzer: MX records
// with huge counts, CNAME loops, names with odd octets, error codes, the
// TC bit, garbage. The message is sent as the answer to each question (its
// question section and ID made the query's, when it parses at all), so
// one message can hold the records of every name asked for. Nothing may
// panic or hang; an error is a *Error about the name asked for; the MX
// hosts returned are at most 10, in order of preference, each once, each a
// host name (lower-case letters, digits, '-', '_' and dots; no final dot,
// no IP address) with at least one address, each a unicast address given
// once; and nothing is secure (DNSSEC, for DANE) without the AD bit.
func FuzzAnswer(f *testing.F) {
	msg := func(rcode int, tc bool, rrs ...dns.RR) []byte {
		m := new(dns.Msg)
		m.SetQuestion("example.test.", dns.TypeMX)
		m.Response, m.Rcode, m.Truncated = true, rcode, tc
		m.Answer = rrs
		b, err := m.Pack()
		if err != nil {
			f.Fatal(err)
		}
		return b
	}
	mx, a, aaaa, cname := dnstest.MX, dnstest.A, dnstest.AAAA, dnstest.CNAME
	f.Add(msg(dns.RcodeSuccess, false, mx("example.test", 10, "mx1.example.test"), mx("example.test", 20, "mx2.example.test"),
		a("mx1.example.test", "192.0.2.1"), aaaa("mx2.example.test", "2001:db8::2"), a("mx.example.test", "192.0.2.3"),
		dnstest.TXT("_mta-sts.example.test", "v=STSv1; id=1"),
		dnstest.RR("_25._tcp.mx.example.test. 300 IN TLSA 3 1 1 0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef")))
	secure := msg(dns.RcodeSuccess, false, mx("example.test", 10, "mx.example.test"), a("mx.example.test", "192.0.2.3"),
		dnstest.RR("_25._tcp.mx.example.test. 300 IN TLSA 3 1 1 0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"))
	secure[3] |= 0x20 // the AD bit: a validating resolver vouches for it
	f.Add(secure)
	f.Add(msg(dns.RcodeSuccess, false, mx("example.test", 0, ".")))
	f.Add(msg(dns.RcodeSuccess, false, mx("example.test", 0, "."), mx("example.test", 5, "mx.example.test"), a("mx.example.test", "0.0.0.0")))
	f.Add(msg(dns.RcodeSuccess, false, cname("example.test", "a.example.test"), cname("a.example.test", "example.test"),
		cname("mx.example.test", "mx.example.test"), cname("_25._tcp.mx.example.test", "_25._tcp.mx.example.test")))
	f.Add(msg(dns.RcodeSuccess, false, cname("example.test", "Other.Example."), mx("other.example", 1, "192.0.2.1."),
		mx("other.example", 2, "[192.0.2.1]."), mx("other.example", 3, "MX\\032odd\\.name.example."), a("mx\\032odd\\.name.example", "192.0.2.7")))
	many := []dns.RR{a("example.test", "192.0.2.9"), a("example.test", "192.0.2.9"), a("example.test", "255.255.255.255")}
	for i := range 30 {
		many = append(many, mx("example.test", uint16(30-i), "mx"+strings.Repeat("x", i%4)+".example.test"))
	}
	f.Add(msg(dns.RcodeSuccess, false, many...))
	f.Add(msg(dns.RcodeNameError, false))
	f.Add(msg(dns.RcodeServerFailure, false, mx("example.test", 10, "mx.example.test")))
	f.Add(msg(dns.RcodeSuccess, true, mx("example.test", 10, "mx.example.test"), a("mx.example.test", "192.0.2.3")))
	f.Add([]byte{0, 0, 0x81, 0x80, 0, 1, 0xff, 0xff, 0, 0, 0, 0})

	var answer atomic.Pointer[[]byte]
	srv := dnstest.New(f, nil)
	srv.Respond(func(req *dns.Msg) []byte {
		data := *answer.Load()
		m := new(dns.Msg)
		if m.Unpack(data) != nil {
			return data
		}
		m.Question, m.Compress = req.Question, true
		if b, err := m.Pack(); err == nil {
			return b
		}
		return data
	})
	f.Fuzz(func(t *testing.T, data []byte) {
		if len(data) > 16<<10 {
			return // more than a TCP answer can be; UDP reads see what fits
		}
		answer.Store(&data)
		// Every answer carries the AD bit of this message, if any.
		ad := false
		if m := new(dns.Msg); m.Unpack(data) == nil {
			ad = m.AuthenticatedData
		}
		r := newResolver(t, srv)
		ctx := context.Background()
		isErr := func(what, name string, err error) {
			var e *Error
			if !errors.As(err, &e) || e.Domain != name || e.Enhanced == "" {
				t.Fatalf("%s: error %v (%T)", what, err, err)
			}
		}
		checkAddrs := func(what string, addrs []netip.Addr) {
			if len(addrs) == 0 {
				t.Fatalf("%s: no address and no error", what)
			}
			seen := map[netip.Addr]bool{}
			for _, a := range addrs {
				if !a.IsValid() || !unicast(a) || seen[a] {
					t.Fatalf("%s: address %v in %v", what, a, addrs)
				}
				seen[a] = true
			}
		}

		mxs, err := r.LookupMX(ctx, "example.test")
		if err != nil {
			isErr("LookupMX", "example.test", err)
		} else {
			if len(mxs) == 0 || len(mxs) > maxMXHosts {
				t.Fatalf("LookupMX: %d hosts", len(mxs))
			}
			seen := map[string]bool{}
			for i, m := range mxs {
				if m.Implicit && (len(mxs) != 1 || m.Host != "example.test") {
					t.Fatalf("LookupMX: implicit MX %+v", mxs)
				}
				if m.Host == "" || strings.HasSuffix(m.Host, ".") || isIPLiteral(m.Host) || seen[m.Host] ||
					strings.ContainsFunc(m.Host, func(r rune) bool {
						return !(r >= 'a' && r <= 'z' || r >= '0' && r <= '9' || r == '-' || r == '_' || r == '.')
					}) {
					t.Fatalf("LookupMX: host %q in %v", m.Host, hosts(mxs))
				}
				seen[m.Host] = true
				if i > 0 && m.Pref < mxs[i-1].Pref {
					t.Fatalf("LookupMX: preference %d after %d", m.Pref, mxs[i-1].Pref)
				}
				checkAddrs("LookupMX "+m.Host, m.Addrs)
				if m.Secure && !ad {
					t.Fatalf("LookupMX: %s secure without the AD bit", m.Host)
				}
			}
		}
		if addrs, err := r.LookupHost(ctx, "mx.example.test"); err != nil {
			isErr("LookupHost", "mx.example.test", err)
		} else {
			checkAddrs("LookupHost", addrs)
		}
		if _, err := r.LookupTXT(ctx, "_mta-sts.example.test"); err != nil {
			isErr("LookupTXT", "_mta-sts.example.test", err)
		}
		if recs, secure, err := r.LookupTLSA(ctx, "mx.example.test", 25); err != nil {
			isErr("LookupTLSA", "_25._tcp.mx.example.test", err)
		} else {
			for _, rec := range recs {
				if rec == nil {
					t.Fatal("LookupTLSA: nil record")
				}
			}
			if secure && !ad {
				t.Fatal("LookupTLSA: secure without the AD bit")
			}
		}
	})
}
