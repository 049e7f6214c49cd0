package outbound

import (
	"bytes"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/mailhop/mailhop/queue"
)

// fileBodyOf is a queue.Body over a real file, counting reads and Close.
type fileBodyOf struct {
	*io.SectionReader
	f      *os.File
	reads  int
	closed bool
}

func (b *fileBodyOf) ReadAt(p []byte, off int64) (int, error) {
	b.reads++
	return b.SectionReader.ReadAt(p, off)
}
func (b *fileBodyOf) Close() error { b.closed = true; return b.f.Close() }

func openFileBody(t *testing.T, content string, size int64) *fileBodyOf {
	t.Helper()
	p := filepath.Join(t.TempDir(), "body")
	if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	f, err := os.Open(p)
	if err != nil {
		t.Fatal(err)
	}
	return &fileBodyOf{SectionReader: io.NewSectionReader(f, 0, size), f: f}
}

// A small message is read once and served from memory: the file is closed
// (its queue segment free) and every later read, at any offset, gives the
// stored bytes.
func TestInMemory_SmallBodyReadOnce(t *testing.T) {
	content := strings.Repeat("Subject: x\r\n", 10) + "\r\n" + strings.Repeat("line of text\r\n", 700)
	fb := openFileBody(t, content, int64(len(content)))
	var b queue.Body = inMemory(fb)
	if _, ok := b.(*pooledBody); !ok || !fb.closed || fb.reads != 1 {
		t.Fatalf("inMemory = %T, file closed %v after %d reads; want *pooledBody, closed, 1 read", b, fb.closed, fb.reads)
	}
	if b.Size() != int64(len(content)) {
		t.Fatalf("Size = %d, want %d", b.Size(), len(content))
	}
	got, err := io.ReadAll(io.NewSectionReader(b, 0, b.Size()))
	if err != nil || !bytes.Equal(got, []byte(content)) {
		t.Fatalf("content read back differs (err %v)", err)
	}
	part := make([]byte, 12)
	if _, err := b.ReadAt(part, int64(len(content))-12); err != nil || string(part) != content[len(content)-12:] {
		t.Fatalf("ReadAt near the end = %q, %v", part, err)
	}
	b.Close()
	if n, _ := b.ReadAt(part, 0); n != 0 {
		t.Fatalf("a closed body still reads %d bytes of a buffer given back", n)
	}
}

// A message over smallBody, or one whose file is shorter than its recorded
// size, is left to the queue's reader.
func TestInMemory_LargeOrShortBodyPassesThrough(t *testing.T) {
	big := strings.Repeat("x", smallBody+1)
	fb := openFileBody(t, big, int64(len(big)))
	if b := inMemory(fb); b != queue.Body(fb) || fb.closed {
		t.Fatalf("a %d-byte body: inMemory = %T (closed %v), want the file's reader", len(big), b, fb.closed)
	}
	fb.Close()
	short := openFileBody(t, "only this", 100)
	if b := inMemory(short); b != queue.Body(short) || short.closed {
		t.Fatalf("a short file: inMemory = %T (closed %v), want the file's reader", b, short.closed)
	}
	short.Close()
}
