package queue

import (
	"encoding/binary"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
)

// FuzzRecover feeds arbitrary bytes to the queue as a segment file: opening
// it must never panic or fail, every message it recovers has its whole
// body, and the queue opened again finds the same messages in the same
// state.
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
		// Every message recovered has its body, of the size its
		// envelope says.
		first := map[string]string{}
		for _, e := range q.List() {
			b, err := q.Body(e.ID)
			if err != nil {
				t.Fatalf("recovered %s without its body: %v", e.ID, err)
			}
			n, err := io.Copy(io.Discard, io.NewSectionReader(b, 0, b.Size()))
			b.Close()
			if err != nil || n != e.Size {
				t.Fatalf("recovered %s: %d of %d bytes of its body read: %v", e.ID, n, e.Size, err)
			}
			first[e.ID] = fmt.Sprintf("%+v", *e)
		}
		if err := q.Close(); err != nil {
			t.Fatal(err)
		}
		// What one start recovered is what it left on disk: the queue
		// opened again (read-only, as `mailhop queue list` opens it with
		// the relay stopped, which costs no fsync) holds the same.
		q, err = Open(dir, Options{Logger: quiet, ReadOnly: true})
		if err != nil {
			t.Fatalf("Open after recovery: %v", err)
		}
		defer q.Close()
		again := q.List()
		for _, e := range again {
			if first[e.ID] != fmt.Sprintf("%+v", *e) {
				t.Fatalf("opened again: %+v; recovery had %s", *e, first[e.ID])
			}
		}
		if len(again) != len(first) {
			t.Fatalf("opened again: %d messages; recovery had %d", len(again), len(first))
		}
	})
}

// FuzzParsePayload decodes arbitrary record payloads (what a CRC collision
// or a bug in the writer would hand recovery): never a panic, and a state
// record's recipient indexes are checked where they are applied. A state or
// message record that decodes, encoded again, decodes to the same values;
// a state update encoded from the fuzz values reads back the same.
func FuzzParsePayload(f *testing.F) {
	e := &encoder{}
	e.state(&StateUpdate{ID: "q1", Attempts: 2, LastError: "451 x", Rcpts: []RcptUpdate{{Index: 1, State: Failed, Code: 550, Reply: "no"}}})
	f.Add(recState, e.b, "q1", "451 later", uint16(3))
	f.Add(recGroup, []byte{recDone, 3, 0, 0, 0, 2, 'q', '1'}, "", "", uint16(0))
	f.Add(recMessage, []byte{bodyFile, 0, 0, 0, 0, 0, 0, 0, 0, 2, 'q', '1'}, "x", "", uint16(70))
	m := &encoder{b: []byte{bodyInline, 4, 0, 0, 0, 0, 0, 0, 0, 'b', 'o', 'd', 'y'}}
	env := newEnv("a@x.test", "b@y.test")
	env.ID, env.Size, env.LastError, env.Recipients[1].Reply = "q1", 4, "451 x", "451 x"
	m.envelope(env)
	f.Add(recMessage, m.b, "", "", uint16(1))
	f.Fuzz(func(t *testing.T, typ byte, payload []byte, id, reply string, idx uint16) {
		if r, err := parsePayload(typ, payload); err == nil {
			// What was read, written again as the store writes it,
			// reads back the same.
			e := &encoder{}
			switch r.typ {
			case recState:
				env := newEnv("a@x.test")
				r.st.apply(env)
				e.state(r.st)
				if r2, err := parsePayload(recState, e.b); err != nil || !reflect.DeepEqual(r2.st, r.st) {
					t.Fatalf("state %+v written again reads back as %+v, %v", r.st, r2, err)
				}
			case recMessage:
				body := payload[r.boff : uint64(r.boff)+binary.LittleEndian.Uint64(payload[1:9])]
				e.byte1(r.where)
				e.b = binary.LittleEndian.AppendUint64(e.b, uint64(len(body)))
				e.b = append(e.b, body...)
				e.envelope(r.env)
				if r2, err := parsePayload(recMessage, e.b); err != nil || !reflect.DeepEqual(r2.env, r.env) || r2.where != r.where {
					t.Fatalf("envelope %+v written again reads back as %+v, %v", r.env, r2, err)
				}
			}
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
