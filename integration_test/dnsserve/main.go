// Command dnsserve runs a loopback DNS server from a few zone-file lines,
// for load runs that need MX records (scripts/bench-mx.sh). It prints the
// address it listens on (UDP and TCP, same port) and serves until killed.
//
//	dnsserve 'dest.example. 300 IN MX 10 mx.dest.example.' 'mx.dest.example. 300 IN A 127.0.0.2'
package main

import (
	"fmt"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"github.com/miekg/dns"

	"github.com/mailhop/mailhop/dnsmx/dnstest"
)

func main() {
	zone := dnstest.Zone{}
	for _, line := range os.Args[1:] {
		rr, err := dns.NewRR(line)
		if err != nil || rr == nil {
			fmt.Fprintf(os.Stderr, "dnsserve: bad record %q: %v\n", line, err)
			os.Exit(2)
		}
		name := strings.ToLower(rr.Header().Name)
		zone[name] = append(zone[name], rr)
	}
	s, err := dnstest.Start(zone)
	if err != nil {
		fmt.Fprintln(os.Stderr, "dnsserve:", err)
		os.Exit(1)
	}
	fmt.Println(s.Addr)
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGTERM, syscall.SIGINT)
	<-sig
	s.Close()
}
