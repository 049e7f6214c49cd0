package main

import (
	"bytes"
	"testing"
)

// FuzzQualifyAddrs: any header field value, however broken, is qualified
// without a panic, and only by inserting "@hostname": nothing of the
// field is lost or changed.
func FuzzQualifyAddrs(f *testing.F) {
	for _, s := range []string{"root", "root (Cron Daemon)", "A <root>, b@x, \"q, r\" <s>", "g: a, b;", "(\\", "\"\\", "<a:b>", "a,,b"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, v string) {
		raw := []byte("To: " + v)
		out := qualifyAddrs(raw, 3, "h.test")
		if got := bytes.ReplaceAll(out, []byte("@h.test"), nil); !bytes.Equal(got, bytes.ReplaceAll(raw, []byte("@h.test"), nil)) {
			t.Errorf("qualifyAddrs(%q) = %q: more than @h.test added", raw, out)
		}
	})
}
