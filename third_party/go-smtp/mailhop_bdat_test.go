package smtp_test

// mailhop patch test: the cost of BDAT chunks.

import (
	"io"
	"runtime"
	"strings"
	"testing"
)

// Many small BDAT chunks must not cost an allocation of a copy buffer each
// (mailhop patch): io.Copy allocated 32 KiB per chunk, so "BDAT 8" sent
// 2,000 times made the server allocate 64 MiB for 16 KB of message.
func TestBdatSmallChunksDoNotAllocatePerChunk(t *testing.T) {
	_, s, c, scanner, _ := testServerEhlo(t)
	defer s.Close()
	defer c.Close()
	io.WriteString(c, "MAIL FROM:<a@b.test>\r\nRCPT TO:<c@d.test>\r\n")
	for i := 0; i < 2; i++ {
		if !scanner.Scan() || !strings.HasPrefix(scanner.Text(), "250 ") {
			t.Fatalf("MAIL/RCPT: %q", scanner.Text())
		}
	}
	const chunks = 2000
	send := func(n int) {
		var b strings.Builder
		for i := 0; i < n; i++ {
			b.WriteString("BDAT 8\r\nabcdef\r\n")
		}
		io.WriteString(c, b.String())
		for i := 0; i < n; i++ {
			if !scanner.Scan() || !strings.HasPrefix(scanner.Text(), "250 ") {
				t.Fatalf("BDAT chunk %d: %q", i, scanner.Text())
			}
		}
	}
	send(10) // the session's goroutines and buffers exist before measuring
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	send(chunks)
	runtime.ReadMemStats(&after)
	if got := after.TotalAlloc - before.TotalAlloc; got > 8<<20 {
		t.Errorf("%d BDAT chunks of 8 bytes allocated %d bytes (%d per chunk)", chunks, got, got/chunks)
	}
	io.WriteString(c, "BDAT 0 LAST\r\n")
	if !scanner.Scan() || !strings.HasPrefix(scanner.Text(), "250 ") {
		t.Fatalf("BDAT LAST: %q", scanner.Text())
	}
}

// A BDAT refused for its arguments whose chunk size can be read still has
// its chunk follow it (RFC 3030 §2): the chunk is read and discarded, so
// none of its octets (a relayed message's body) is run as a command.
func TestBdatRefusedArgumentsDiscardTheChunk(t *testing.T) {
	be, s, c, scanner, _ := testServerEhlo(t)
	defer s.Close()
	defer c.Close()
	const chunk = "MAIL FROM:<x@b.test>\r\nRCPT TO:<y@d.test>\r\nNOOP\r\n"
	for _, cmd := range []string{"BDAT 48 FOO", "BDAT 48 LAST MORE"} {
		io.WriteString(c, "MAIL FROM:<a@b.test>\r\nRCPT TO:<c@d.test>\r\n")
		for i := 0; i < 2; i++ {
			if !scanner.Scan() || !strings.HasPrefix(scanner.Text(), "250 ") {
				t.Fatalf("MAIL/RCPT: %q", scanner.Text())
			}
		}
		io.WriteString(c, cmd+"\r\n"+chunk+"RSET\r\n")
		if !scanner.Scan() || !strings.HasPrefix(scanner.Text(), "501 ") {
			t.Fatalf("%s: %q, want 501", cmd, scanner.Text())
		}
		if !scanner.Scan() || scanner.Text() != "250 2.0.0 Session reset" {
			t.Fatalf("%s: after the chunk %q, want RSET's reply (the chunk ran as commands)", cmd, scanner.Text())
		}
	}
	if len(be.messages) != 0 {
		t.Errorf("%d messages stored", len(be.messages))
	}
}
