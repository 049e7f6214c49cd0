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

// FuzzParsePayload decodes arbitrary record payloads (what a CRC collision
// or a bug in the writer would hand recovery): never a panic, and a state
// record's recipient indexes are checked where they are applied. A state
// update encoded from the fuzz values reads back the same.
func FuzzParsePayload(f *testing.F) {
	e := &encoder{}
	e.state(&StateUpdate{ID: "q1", Attempts: 2, LastError: "451 x", Rcpts: []RcptUpdate{{Index: 1, State: Failed, Code: 550, Reply: "no"}}})
	f.Add(recState, e.b, "q1", "451 later", uint16(3))
	f.Add(recGroup, []byte{recDone, 3, 0, 0, 0, 2, 'q', '1'}, "", "", uint16(0))
	f.Add(recMessage, []byte{bodyFile, 0, 0, 0, 0, 0, 0, 0, 0, 2, 'q', '1'}, "x", "", uint16(70))
	f.Fuzz(func(t *testing.T, typ byte, payload []byte, id, reply string, idx uint16) {
		if r, err := parsePayload(typ, payload); err == nil && r.typ == recState {
			env := newEnv("a@x.test")
			r.st.apply(env)
		}
		u := &StateUpdate{ID: id, Attempts: int(idx), LastError: reply, DelayWarned: idx&1 != 0,
			Rcpts: []RcptUpdate{{Index: int(idx), State: RcptState(idx % 4), Code: int(idx), Reply: reply}, {Index: 0, Reply: reply}}}
		e := &encoder{}
		e.state(u)
		r, err := parsePayload(recState, e.b)
		if err != nil {
			t.Fatalf("state %+v: %v", u, err)
		}
		if got := r.st; got.ID != u.ID || got.Attempts != u.Attempts || got.LastError != u.LastError || got.DelayWarned != u.DelayWarned ||
			len(got.Rcpts) != 2 || got.Rcpts[0] != u.Rcpts[0] || got.Rcpts[1] != u.Rcpts[1] {
			t.Fatalf("state %+v read back as %+v", u, got)
		}
	})
}
