// Package logbuf makes a busy relay's logging cheap: it coalesces log
// lines into fewer writes, and logs the lines written for every message
// without the caller lookup slog does for each.
//
// Under load mailhop logs several lines per message; written one by one
// they cost a system call each. A Writer passes a line straight through
// when the log has been quiet for its window, so a lightly loaded relay
// logs exactly as before. A line that follows another within the window
// is kept and written, with the rest of its burst, when the window ends
// or the buffer fills: a busy log is at most one window behind.
package logbuf

import (
	"context"
	"io"
	"log/slog"
	"sync"
	"time"
)

// DefaultWindow is the longest a line waits in a busy log.
const DefaultWindow = 5 * time.Millisecond

// maxBuffered is how much is kept before a write, whatever the window.
const maxBuffered = 64 << 10

// Writer coalesces writes to an underlying writer; safe for concurrent use.
// Each Write call is kept whole (slog handlers write one line per call).
type Writer struct {
	mu     sync.Mutex
	w      io.Writer
	window time.Duration
	buf    []byte
	last   time.Time   // when w was last written
	timer  *time.Timer // flushes buf when the window ends; armed while buf holds lines
	closed bool
}

// New returns a Writer for w with the given window (DefaultWindow if 0 or less).
func New(w io.Writer, window time.Duration) *Writer {
	if window <= 0 {
		window = DefaultWindow
	}
	b := &Writer{w: w, window: window}
	b.timer = time.AfterFunc(time.Hour, b.timerFlush)
	b.timer.Stop()
	return b
}

// Write writes p at once when the log was quiet for the window, else keeps
// it for the burst's write. Errors of a kept line's later write are lost,
// as they are when slog writes straight to a file.
func (b *Writer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	now := time.Now()
	if b.closed || (len(b.buf) == 0 && now.Sub(b.last) >= b.window) {
		b.last = now
		return b.w.Write(p)
	}
	if len(b.buf) == 0 {
		b.timer.Reset(b.window)
	}
	b.buf = append(b.buf, p...)
	if len(b.buf) >= maxBuffered {
		b.flushLocked(now)
	}
	return len(p), nil
}

// timerFlush writes what the window kept.
func (b *Writer) timerFlush() {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.flushLocked(time.Now())
}

// flushLocked writes buf to w; b.mu is held.
func (b *Writer) flushLocked(now time.Time) error {
	if len(b.buf) == 0 {
		return nil
	}
	b.timer.Stop()
	_, err := b.w.Write(b.buf)
	b.last = now
	if cap(b.buf) > 2*maxBuffered {
		b.buf = nil
	} else {
		b.buf = b.buf[:0]
	}
	return err
}

// Flush writes every kept line now.
func (b *Writer) Flush() error {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.flushLocked(time.Now())
}

// Close writes every kept line; later writes go straight through.
func (b *Writer) Close() error {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.closed = true
	return b.flushLocked(time.Now())
}

// Info logs msg with attrs at level Info, as l.LogAttrs does but without
// looking up the caller, which a handler without AddSource never reads:
// for the few lines logged for every message.
func Info(l *slog.Logger, msg string, attrs ...slog.Attr) {
	ctx := context.Background()
	if !l.Enabled(ctx, slog.LevelInfo) {
		return
	}
	r := slog.NewRecord(time.Now(), slog.LevelInfo, msg, 0)
	r.AddAttrs(attrs...)
	_ = l.Handler().Handle(ctx, r)
}
