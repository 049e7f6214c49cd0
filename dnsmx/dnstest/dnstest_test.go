package dnstest

import (
	"fmt"
	"net"
	"testing"
	"time"

	"github.com/miekg/dns"
)

func ask(t *testing.T, s *Server, network, name string, qtype uint16, edns bool) *dns.Msg {
	t.Helper()
	q := new(dns.Msg)
	q.SetQuestion(dns.Fqdn(name), qtype)
	if edns {
		q.SetEdns0(1232, false)
	}
	c := &dns.Client{Net: network, Timeout: 2 * time.Second}
	m, _, err := c.Exchange(q, s.Addr)
	if err != nil {
		t.Fatalf("%s %s over %s: %v", name, dns.TypeToString[qtype], network, err)
	}
	return m
}

func hasSOA(m *dns.Msg) bool {
	return len(m.Ns) == 1 && m.Ns[0].Header().Rrtype == dns.TypeSOA
}

func TestServer_Answers(t *testing.T) {
	t.Parallel()
	s := New(t, Zone{
		"Example.COM":     {MX("example.com", 10, "mx.example.com"), TXT("example.com", "v=spf1 -all")},
		"mx.example.com.": {A("mx.example.com", "192.0.2.1"), AAAA("mx.example.com", "2001:db8::1")},
	})
	for _, network := range []string{"udp", "tcp"} {
		m := ask(t, s, network, "EXAMPLE.com", dns.TypeMX, true)
		if m.Rcode != dns.RcodeSuccess || len(m.Answer) != 1 || m.Answer[0].(*dns.MX).Mx != "mx.example.com." {
			t.Errorf("%s MX: %v", network, m)
		}
		if m.IsEdns0() == nil || !m.RecursionAvailable {
			t.Errorf("%s: reply lacks EDNS0 or RA", network)
		}
		m = ask(t, s, network, "example.com", dns.TypeA, false)
		if m.Rcode != dns.RcodeSuccess || len(m.Answer) != 0 || !hasSOA(m) {
			t.Errorf("%s NODATA: %v", network, m)
		}
		m = ask(t, s, network, "nope.example.com", dns.TypeA, false)
		if m.Rcode != dns.RcodeNameError || !hasSOA(m) {
			t.Errorf("%s NXDOMAIN: %v", network, m)
		}
	}
	if n := s.Queries(); n != 6 {
		t.Errorf("Queries() = %d, want 6", n)
	}
}

func TestServer_Faults(t *testing.T) {
	t.Parallel()
	s := New(t, Zone{"example.com.": {A("example.com", "192.0.2.1")}})

	s.SetRcode("example.com", dns.RcodeRefused)
	if m := ask(t, s, "udp", "example.com", dns.TypeA, false); m.Rcode != dns.RcodeRefused {
		t.Errorf("rcode %s", dns.RcodeToString[m.Rcode])
	}
	s.Reset("example.com")

	s.Truncate("example.com")
	if m := ask(t, s, "udp", "example.com", dns.TypeA, true); !m.Truncated || len(m.Answer) != 0 {
		t.Errorf("udp: want empty truncated answer, got %v", m)
	}
	if m := ask(t, s, "tcp", "example.com", dns.TypeA, true); m.Truncated || len(m.Answer) != 1 {
		t.Errorf("tcp: want full answer, got %v", m)
	}
	s.Reset("example.com")

	s.Drop("example.com")
	q := new(dns.Msg)
	q.SetQuestion("example.com.", dns.TypeA)
	c := &dns.Client{Timeout: 100 * time.Millisecond}
	if _, _, err := c.Exchange(q, s.Addr); err == nil {
		t.Error("dropped name answered")
	}
	s.Reset("example.com")

	s.SetAD(true)
	if m := ask(t, s, "udp", "example.com", dns.TypeA, true); !m.AuthenticatedData {
		t.Error("AD bit not set")
	}
	s.Set("example.com", AAAA("example.com", "2001:db8::2"))
	if m := ask(t, s, "tcp", "example.com", dns.TypeAAAA, false); len(m.Answer) != 1 {
		t.Errorf("after Set: %v", m)
	}
	s.Set("example.com")
	if m := ask(t, s, "tcp", "example.com", dns.TypeAAAA, false); m.Rcode != dns.RcodeNameError {
		t.Errorf("after Set with no records: %v", m)
	}
}

func TestServer_CNAME(t *testing.T) {
	t.Parallel()
	s := New(t, Zone{
		"www.example.com.": {CNAME("www.example.com", "web.example.com")},
		"web.example.com.": {A("web.example.com", "192.0.2.1")},
	})
	if m := ask(t, s, "udp", "www.example.com", dns.TypeA, false); len(m.Answer) != 2 {
		t.Errorf("chased: %v", m)
	}
	if m := ask(t, s, "udp", "www.example.com", dns.TypeCNAME, false); len(m.Answer) != 1 {
		t.Errorf("CNAME query: %v", m)
	}
	s.ChaseCNAME(false)
	if m := ask(t, s, "udp", "www.example.com", dns.TypeA, false); len(m.Answer) != 1 {
		t.Errorf("not chased: %v", m)
	}
}

func TestServer_LargeAnswerTruncatedOverUDP(t *testing.T) {
	t.Parallel()
	var rrs []dns.RR
	for i := range 60 {
		rrs = append(rrs, A("big.example", fmt.Sprintf("192.0.2.%d", i)))
	}
	s := New(t, Zone{"big.example.": rrs})
	if m := ask(t, s, "udp", "big.example", dns.TypeA, false); !m.Truncated {
		t.Errorf("60 A records fit in 512 bytes? %d answers", len(m.Answer))
	}
	if m := ask(t, s, "udp", "big.example", dns.TypeA, true); m.Truncated || len(m.Answer) != 60 {
		t.Errorf("EDNS0 1232: truncated=%v answers=%d", m.Truncated, len(m.Answer))
	}
}

func TestStartClose(t *testing.T) {
	t.Parallel()
	s, err := Start(Zone{"h.example.": {A("h.example", "192.0.2.1")}})
	if err != nil {
		t.Fatal(err)
	}
	host, _, err := net.SplitHostPort(s.Addr)
	if err != nil || host != "127.0.0.1" {
		t.Fatalf("Addr %q", s.Addr)
	}
	ask(t, s, "udp", "h.example", dns.TypeA, false)
	ask(t, s, "tcp", "h.example", dns.TypeA, false)
	s.Close()
	s.Close()
	if _, err := net.DialTimeout("tcp", s.Addr, time.Second); err == nil {
		t.Error("TCP still accepting after Close")
	}
}

func TestHelpers(t *testing.T) {
	t.Parallel()
	if rr := RR("example.com. 60 IN MX 5 mx.example.com."); rr.Header().Ttl != 60 {
		t.Errorf("RR: %v", rr)
	}
	if rr := WithTTL(TXT("Example.com", "a", "b"), 7); rr.Header().Ttl != 7 || rr.Header().Name != "example.com." {
		t.Errorf("TXT: %v", rr)
	}
	for _, f := range []func(){func() { A("x", "2001:db8::1") }, func() { AAAA("x", "192.0.2.1") }, func() { RR("bad") }} {
		func() {
			defer func() {
				if recover() == nil {
					t.Error("no panic for bad input")
				}
			}()
			f()
		}()
	}
}

// Respond's octets reach the client as they are but for the ID, over UDP
// and TCP; Respond(nil) serves the zone again.
func TestServer_Respond(t *testing.T) {
	t.Parallel()
	s := New(t, Zone{"example.com.": {A("example.com", "192.0.2.1")}})
	raw := new(dns.Msg)
	raw.SetQuestion("other.example.", dns.TypeMX)
	raw.Response, raw.Id = true, 0
	raw.Answer = []dns.RR{MX("other.example", 7, "mx.other.example")}
	b, err := raw.Pack()
	if err != nil {
		t.Fatal(err)
	}
	asked := make(chan string, 2)
	s.Respond(func(req *dns.Msg) []byte {
		asked <- req.Question[0].Name
		return b
	})
	for _, network := range []string{"udp", "tcp"} {
		q := new(dns.Msg)
		q.SetQuestion("example.com.", dns.TypeA)
		c := &dns.Client{Net: network, Timeout: 2 * time.Second}
		m, _, err := c.Exchange(q, s.Addr)
		if err != nil {
			t.Fatalf("%s: %v", network, err)
		}
		if m.Id != q.Id || len(m.Question) != 1 || m.Question[0].Name != "other.example." || len(m.Answer) != 1 || m.Answer[0].(*dns.MX).Preference != 7 {
			t.Errorf("%s: %v", network, m)
		}
	}
	if len(asked) != 2 || <-asked != "example.com." {
		t.Errorf("respond saw %d queries", len(asked))
	}
	s.Respond(nil)
	if m := ask(t, s, "udp", "example.com", dns.TypeA, false); len(m.Answer) != 1 {
		t.Errorf("zone not served after Respond(nil): %v", m)
	}
}
