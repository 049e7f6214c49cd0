// Package testpipe is an in-memory connection for tests whose ends can
// close their direction alone (CloseWrite), as TCP's shutdown does: a
// client sends all of its input, ends it, and still reads every reply, and
// a server sends all of its replies, ends them, and still reads what the
// client writes. net.Pipe has no such half-close: closing an end to end
// its output also loses what was not read of its input (the fuzz targets
// of the SMTP session and of the client's reply parsing need both).
package testpipe

import (
	"io"
	"net"
	"sync"
	"time"
)

// Conn is one end of a Pipe. Deadlines are accepted and not kept: the
// tests that use it end each side's input instead.
type Conn struct {
	r      *io.PipeReader
	w      *io.PipeWriter
	once   sync.Once
	closed chan struct{}
	local  net.Addr
	remote net.Addr
}

// Pipe returns the two ends of a connection, client and server, whose
// addresses are loopback TCP ones (127.0.0.1, port 4242 the client's and
// 25 the server's), as a server that checks its client's IP needs.
func Pipe() (client, server *Conn) {
	cr, sw := io.Pipe()
	sr, cw := io.Pipe()
	c := &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 4242}
	s := &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 25}
	return &Conn{r: cr, w: cw, closed: make(chan struct{}), local: c, remote: s},
		&Conn{r: sr, w: sw, closed: make(chan struct{}), local: s, remote: c}
}

// Read reads what the other end wrote; io.EOF once it closed its writing.
func (c *Conn) Read(b []byte) (int, error) { return c.r.Read(b) }

// Write blocks until the other end has read b, or closed.
func (c *Conn) Write(b []byte) (int, error) { return c.w.Write(b) }

// CloseWrite ends what the other end reads; this end still reads.
func (c *Conn) CloseWrite() error { return c.w.Close() }

// Close ends both directions.
func (c *Conn) Close() error {
	c.once.Do(func() { close(c.closed) })
	c.w.Close()
	return c.r.Close()
}

// Closed is closed when Close is first called on this end.
func (c *Conn) Closed() <-chan struct{} { return c.closed }

// LocalAddr returns this end's address.
func (c *Conn) LocalAddr() net.Addr { return c.local }

// RemoteAddr returns the other end's address.
func (c *Conn) RemoteAddr() net.Addr { return c.remote }

// SetDeadline does nothing.
func (*Conn) SetDeadline(time.Time) error { return nil }

// SetReadDeadline does nothing.
func (*Conn) SetReadDeadline(time.Time) error { return nil }

// SetWriteDeadline does nothing.
func (*Conn) SetWriteDeadline(time.Time) error { return nil }
