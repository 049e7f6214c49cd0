package testport

import (
	"net"
	"testing"
)

// The port is held on every address until listened on; Listen serves on
// it; Down keeps an address bound but refusing.
func TestReserve(t *testing.T) {
	p := Reserve(t, "127.0.0.2", "127.0.0.3", "127.0.0.4")
	if _, err := net.Listen("tcp", p.Addr("127.0.0.3")); err == nil {
		t.Fatal("another listener got a reserved address")
	}
	ln := p.Listen("127.0.0.3")
	defer ln.Close()
	c, err := net.Dial("tcp", p.Addr("127.0.0.3"))
	if err != nil {
		t.Fatalf("dial the listener: %v", err)
	}
	c.Close()
	if _, err := net.Dial("tcp", p.Addr("127.0.0.4")); err == nil {
		t.Error("a reserved address that is not listening accepted a connection")
	}
	p.Down("127.0.0.5")
	if _, err := net.Listen("tcp", p.Addr("127.0.0.5")); err == nil {
		t.Error("an address made Down could be taken")
	}
}
