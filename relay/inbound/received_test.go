package inbound

import (
	"strings"
	"testing"
)

// The loop check counts the Received fields of the header only: a message
// whose header runs into its body without the empty line (a line that is no
// field starts the body, as Postfix's cleanup reads it) is not refused for
// Received lines quoted in that body.
func TestCountReceived_HeaderOnly(t *testing.T) {
	t.Parallel()
	hops := strings.Repeat("Received: from a by b; Thu, 26 Nov 2026 18:00:00 +0000\r\n", 60)
	for _, tc := range []struct {
		name, msg string
		want      int
	}{
		{"in the header", "Received: x\r\nReceived: y\r\nSubject: s\r\n\r\n" + hops, 2},
		{"body without the empty line", "Subject: s\r\nThe bounce I got:\r\n" + hops, 0},
		{"all in the header", hops + "\r\nbody\r\n", 60},
	} {
		if got := countReceived([]byte(tc.msg)); got != tc.want {
			t.Errorf("%s: %d Received fields, want %d", tc.name, got, tc.want)
		}
	}
}
