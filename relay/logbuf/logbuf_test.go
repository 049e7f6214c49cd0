package logbuf

import (
	"bytes"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"
)

// syncBuffer is a bytes.Buffer that counts writes, safe for the timer's goroutine.
type syncBuffer struct {
	mu     sync.Mutex
	b      bytes.Buffer
	writes int
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.writes++
	return s.b.Write(p)
}

func (s *syncBuffer) state() (string, int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String(), s.writes
}

func TestQuietLineGoesOutAtOnce(t *testing.T) {
	var out syncBuffer
	w := New(&out, time.Hour)
	fmt.Fprintln(w, "first")
	if got, n := out.state(); got != "first\n" || n != 1 {
		t.Fatalf("after one line: %q in %d writes, want it written at once", got, n)
	}
}

func TestBurstIsOneWrite(t *testing.T) {
	var out syncBuffer
	w := New(&out, time.Hour)
	for i := range 100 {
		fmt.Fprintf(w, "line %d\n", i)
	}
	if got, n := out.state(); got != "line 0\n" || n != 1 {
		t.Fatalf("during the burst: %q in %d writes, want only the first line", got, n)
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	got, n := out.state()
	if n != 2 || strings.Count(got, "\n") != 100 || !strings.HasSuffix(got, "line 99\n") {
		t.Fatalf("after Close: %d writes, %d lines, want 2 writes of all 100 lines in order", n, strings.Count(got, "\n"))
	}
	fmt.Fprintln(w, "after close")
	if got, _ := out.state(); !strings.HasSuffix(got, "after close\n") {
		t.Fatal("a line after Close was not written at once")
	}
}

func TestWindowEndFlushes(t *testing.T) {
	var out syncBuffer
	w := New(&out, 20*time.Millisecond)
	fmt.Fprintln(w, "a")
	fmt.Fprintln(w, "b") // within the window: kept
	deadline := time.Now().Add(10 * time.Second)
	for {
		if got, _ := out.state(); got == "a\nb\n" {
			return
		}
		if time.Now().After(deadline) {
			got, _ := out.state()
			t.Fatalf("the kept line was not written when the window ended: %q", got)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func TestFullBufferIsWritten(t *testing.T) {
	var out syncBuffer
	w := New(&out, time.Hour)
	line := strings.Repeat("x", 1023) + "\n"
	for range 2 * maxBuffered / len(line) {
		w.Write([]byte(line))
	}
	if got, n := out.state(); n < 2 || len(got) < maxBuffered {
		t.Fatalf("%d bytes in %d writes while 2×%d were logged: a full buffer must be written", len(got), n, maxBuffered)
	}
}

func TestConcurrentLinesStayWhole(t *testing.T) {
	var out syncBuffer
	w := New(&out, time.Millisecond)
	log := slog.New(slog.NewTextHandler(w, nil))
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Go(func() {
			for i := range 500 {
				Info(log, "delivered", slog.Int("g", g), slog.Int("i", i))
			}
		})
	}
	wg.Wait()
	w.Close()
	got, _ := out.state()
	lines := strings.Split(strings.TrimSuffix(got, "\n"), "\n")
	if len(lines) != 8*500 {
		t.Fatalf("%d lines, want %d", len(lines), 8*500)
	}
	for _, l := range lines {
		if !strings.Contains(l, "level=INFO msg=delivered g=") || strings.Count(l, "time=") != 1 {
			t.Fatalf("a line was torn or malformed: %q", l)
		}
	}
}

func TestInfoHonoursLevelAndAttrs(t *testing.T) {
	var out bytes.Buffer
	lv := new(slog.LevelVar)
	log := slog.New(slog.NewTextHandler(&out, &slog.HandlerOptions{Level: lv})).With("client", "192.0.2.1")
	Info(log, "message accepted", slog.String("queue_id", "Q1"), slog.Int("code", 250))
	if l := out.String(); !strings.Contains(l, `msg="message accepted" client=192.0.2.1 queue_id=Q1 code=250`) {
		t.Fatalf("line %q lacks the logger's and the call's attributes", l)
	}
	out.Reset()
	lv.Set(slog.LevelWarn)
	Info(log, "quiet")
	if out.Len() != 0 {
		t.Fatalf("logged %q above the level", out.String())
	}
}
