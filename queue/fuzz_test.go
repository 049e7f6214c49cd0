package queue

import (
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// FuzzRecover feeds arbitrary bytes to the queue as a segment file: opening
// it must never panic or fail, and whatever it recovers must be readable.
func FuzzRecover(f *testing.F) {
	// Seeds: a real segment with a few records, and damaged copies of it.
	dir := f.TempDir()
	q, err := Open(dir, Options{})
	if err != nil {
		f.Fatal(err)
	}
	env := newEnv("a@x.test", "b@y.test")
	q.Enqueue(env, strings.NewReader("Subject: x\r\n\r\nbody\r\n"))
	q.Next(f.Context())
	q.Done(env.ID, Result{LastError: "451 later", Recipients: []RcptUpdate{{Index: 0, State: Delivered, Code: 250}}})
	q.Hold(env.ID)
	env3 := newEnv("d@x.test")
	q.Enqueue(env3, strings.NewReader("third\r\n"))
	for e, _ := q.Next(f.Context()); e != nil && e.ID != env3.ID; e, _ = q.Next(f.Context()) {
	}
	q.DoneWithReports(env3.ID, Result{Recipients: []RcptUpdate{{Index: 0, State: Failed, Code: 550}}},
		[]Report{{Env: &Envelope{Recipients: []Recipient{{Address: env3.From}}}, Body: strings.NewReader("report\r\n")}})
	env2 := newEnv("c@x.test")
	q.Enqueue(env2, strings.NewReader("second\r\n"))
	q.Delete(env2.ID)
	q.Close()
	segs, _ := filepath.Glob(filepath.Join(dir, "seg-*.log"))
	for _, s := range segs {
		data, _ := os.ReadFile(s)
		f.Add(data)
		if len(data) > 40 {
			f.Add(data[:len(data)/2])
			d := append([]byte(nil), data...)
			d[30] ^= 0x55
			f.Add(d)
		}
	}
	f.Add([]byte{})
	quiet := slog.New(slog.NewTextHandler(io.Discard, nil))
	f.Fuzz(func(t *testing.T, data []byte) {
		dir := t.TempDir()
		if err := os.WriteFile(filepath.Join(dir, "seg-0000000000000001.log"), data, 0o600); err != nil {
			t.Fatal(err)
		}
		q, err := Open(dir, Options{Logger: quiet})
		if err != nil {
			t.Fatalf("Open refused a damaged queue: %v", err)
		}
		defer q.Close()
		for _, e := range q.List() {
			if b, err := q.Body(e.ID); err == nil {
				io.Copy(io.Discard, b)
				b.Close()
			}
		}
	})
}
