package admin

import (
	"bytes"
	"encoding/json"
	"testing"
	"time"
)

// An array written an element at a time reads exactly as the whole array
// encoded at once, so `queue list --json` kept its layout when it began to
// stream.
func TestArrayWriter_LayoutOfEncoder(t *testing.T) {
	m := func(id string) Message {
		return Message{ID: id, From: "a@example.com", Arrived: time.Unix(1e9, 0).UTC(),
			Recipients: []Recipient{{Address: "b@example.org", State: "pending", Reply: "451 <later> & more"}}}
	}
	for _, msgs := range [][]Message{{}, {m("1")}, {m("1"), m("2"), m("3")}} {
		var want bytes.Buffer
		enc := json.NewEncoder(&want)
		enc.SetIndent("", "  ")
		enc.Encode(msgs)
		var got bytes.Buffer
		a := NewArrayWriter(&got)
		for _, x := range msgs {
			if err := a.Add(x); err != nil {
				t.Fatal(err)
			}
		}
		if err := a.Close(); err != nil {
			t.Fatal(err)
		}
		if got.String() != want.String() {
			t.Errorf("%d messages:\ngot  %q\nwant %q", len(msgs), got.String(), want.String())
		}
	}
}
