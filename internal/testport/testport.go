// Package testport reserves one TCP port number on several loopback
// addresses at once, for tests whose servers must all listen on the same
// port (an MX port, delivery.mx_port) at different 127.0.0.x addresses.
//
// The port is held by a bound socket on every address from the start, so a
// test running in parallel — in this package or another — can never be
// given it by the kernel in the meantime. Listen turns a reservation into a
// listener without letting the port go.
package testport

import (
	"fmt"
	"net"
	"os"
	"strconv"
	"sync"
	"syscall"
	"testing"
)

// Ports is one port number reserved on a set of IPv4 loopback addresses.
type Ports struct {
	t    testing.TB
	port int
	mu   sync.Mutex
	fds  map[string]int // ip → a socket bound (not listening) to ip:port
}

// Reserve finds a port free on every one of ips (IPv4) and binds it there
// until the test ends. It fails the test when no such port is found.
func Reserve(t testing.TB, ips ...string) *Ports {
	t.Helper()
	if len(ips) == 0 {
		t.Fatal("testport: no addresses")
	}
	for try := 0; try < 50; try++ {
		fd, port, err := bind(ips[0], 0)
		if err != nil {
			t.Fatalf("testport: reserving a port on %s: %v", ips[0], err)
		}
		fds := map[string]int{ips[0]: fd}
		ok := true
		for _, ip := range ips[1:] {
			fd, _, err := bind(ip, port)
			if err != nil {
				ok = false
				break
			}
			fds[ip] = fd
		}
		if ok {
			p := &Ports{t: t, port: port, fds: fds}
			t.Cleanup(p.release)
			return p
		}
		for _, fd := range fds {
			syscall.Close(fd)
		}
	}
	t.Fatalf("testport: no port free on every one of %v", ips)
	return nil
}

// bind binds a TCP socket to ip:port (port 0: the kernel chooses) and
// returns it and its port. Without SO_REUSEADDR: then no other socket can
// bind ip:port, net.Listen's (which sets it) included, until it is closed;
// with it, a second socket with SO_REUSEADDR could bind the same address
// while this one is not listening yet.
func bind(ip string, port int) (int, int, error) {
	a := net.ParseIP(ip).To4()
	if a == nil {
		return -1, 0, fmt.Errorf("not an IPv4 address: %q", ip)
	}
	fd, err := syscall.Socket(syscall.AF_INET, syscall.SOCK_STREAM, 0)
	if err != nil {
		return -1, 0, err
	}
	sa := &syscall.SockaddrInet4{Port: port}
	copy(sa.Addr[:], a)
	if err := syscall.Bind(fd, sa); err != nil {
		syscall.Close(fd)
		return -1, 0, err
	}
	got, err := syscall.Getsockname(fd)
	if err != nil {
		syscall.Close(fd)
		return -1, 0, err
	}
	return fd, got.(*syscall.SockaddrInet4).Port, nil
}

func (p *Ports) release() {
	p.mu.Lock()
	defer p.mu.Unlock()
	for ip, fd := range p.fds {
		syscall.Close(fd)
		delete(p.fds, ip)
	}
}

// Port is the reserved port number.
func (p *Ports) Port() int { return p.port }

// Addr is ip:port.
func (p *Ports) Addr(ip string) string { return net.JoinHostPort(ip, strconv.Itoa(p.port)) }

// Listen returns a listener on ip:port: the reservation made into one, or,
// for an address that was not reserved, a new listener.
func (p *Ports) Listen(ip string) net.Listener {
	p.t.Helper()
	p.mu.Lock()
	fd, ok := p.fds[ip]
	delete(p.fds, ip)
	p.mu.Unlock()
	if !ok {
		ln, err := net.Listen("tcp", p.Addr(ip))
		if err != nil {
			p.t.Fatalf("testport: listen %s: %v", p.Addr(ip), err)
		}
		return ln
	}
	// From now on as net.Listen's sockets are: its connections (and their
	// TIME_WAIT) must not stop a later server from binding ip:port again.
	syscall.SetsockoptInt(fd, syscall.SOL_SOCKET, syscall.SO_REUSEADDR, 1)
	if err := syscall.Listen(fd, 128); err != nil {
		syscall.Close(fd)
		p.t.Fatalf("testport: listen %s: %v", p.Addr(ip), err)
	}
	f := os.NewFile(uintptr(fd), p.Addr(ip))
	defer f.Close() // FileListener has its own copy
	ln, err := net.FileListener(f)
	if err != nil {
		p.t.Fatalf("testport: listen %s: %v", p.Addr(ip), err)
	}
	return ln
}

// Down makes ip:port refuse connections while the test runs: bound, so
// that nothing else takes it, but not listening.
func (p *Ports) Down(ip string) {
	p.t.Helper()
	p.mu.Lock()
	defer p.mu.Unlock()
	if _, ok := p.fds[ip]; ok {
		return
	}
	fd, _, err := bind(ip, p.port)
	if err != nil {
		p.t.Fatalf("testport: reserving %s: %v", p.Addr(ip), err)
	}
	p.fds[ip] = fd
}
