// Package testlog holds what tests need to read the logs of the code they
// run.
package testlog

import (
	"bytes"
	"strings"
	"sync"
	"time"
)

// Buffer collects log output: safe for concurrent writes, readable while
// the code under test still writes.
type Buffer struct {
	mu      sync.Mutex
	b       bytes.Buffer
	written chan struct{} // closed (and replaced) by every Write
}

// Write appends p.
func (b *Buffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.written != nil {
		close(b.written)
		b.written = nil
	}
	return b.b.Write(p)
}

// WaitLine returns the first line holding every one of parts, waiting for
// writes until it comes or timeout passes ("" then).
func (b *Buffer) WaitLine(timeout time.Duration, parts ...string) string {
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	for {
		b.mu.Lock()
		if ls := Lines(b.b.String(), parts...); len(ls) > 0 {
			b.mu.Unlock()
			return ls[0]
		}
		if b.written == nil {
			b.written = make(chan struct{})
		}
		written := b.written
		b.mu.Unlock()
		select {
		case <-written:
		case <-deadline.C:
			return ""
		}
	}
}

// String returns everything written so far.
func (b *Buffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.String()
}

// Lines returns the lines of logs that contain every one of parts, in
// order.
func Lines(logs string, parts ...string) []string {
	var out []string
	for _, l := range strings.Split(logs, "\n") {
		all := true
		for _, p := range parts {
			all = all && strings.Contains(l, p)
		}
		if all {
			out = append(out, l)
		}
	}
	return out
}
