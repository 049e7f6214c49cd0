package testpipe

import (
	"io"
	"testing"
)

// After CloseWrite the other end reads the end of the input and can still
// write back, and this end still reads it.
func TestHalfClose(t *testing.T) {
	client, server := Pipe()
	got := make(chan string, 1)
	go func() {
		b, _ := io.ReadAll(server)
		server.Write([]byte("reply to " + string(b)))
		server.Close()
	}()
	go func() {
		b, _ := io.ReadAll(client)
		got <- string(b)
	}()
	if _, err := client.Write([]byte("input")); err != nil {
		t.Fatal(err)
	}
	client.CloseWrite()
	if s := <-got; s != "reply to input" {
		t.Fatalf("client read %q", s)
	}
	<-server.Closed()
	client.Close()
	if _, err := client.Write([]byte("x")); err == nil {
		t.Error("write after Close succeeded")
	}
	if client.RemoteAddr().String() != "127.0.0.1:25" || server.RemoteAddr().String() != "127.0.0.1:4242" {
		t.Errorf("addresses %v, %v", client.RemoteAddr(), server.RemoteAddr())
	}
}
