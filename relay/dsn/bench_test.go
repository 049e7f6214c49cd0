package dsn

import (
	"bytes"
	"strings"
	"testing"
	"time"

	"github.com/mailhop/mailhop/queue"
)

// benchReport builds a failure report with RET=FULL about a 10 KiB message
// to two recipients, and returns it.
func benchReport(b *testing.B) []byte {
	env := &queue.Envelope{ID: "q1", From: "s@sender.test", Ret: "FULL", EnvID: "E1", Arrived: time.Unix(1699990000, 0),
		Recipients: []queue.Recipient{{Address: "a@example.test", ORCPT: "rfc822;A@example.test"}, {Address: "b@example.test"}}}
	return buildTestDSN(b, "failed", env, "From: s@sender.test\r\nSubject: x\r\n\r\n"+strings.Repeat("a line of text in the original message.\r\n", 250))
}

// BenchmarkBuild builds and reads the report of benchReport.
func BenchmarkBuild(b *testing.B) {
	for b.Loop() {
		benchReport(b)
	}
}

// BenchmarkParse parses the report of benchReport.
func BenchmarkParse(b *testing.B) {
	raw := benchReport(b)
	b.SetBytes(int64(len(raw)))
	for b.Loop() {
		if _, err := Parse(bytes.NewReader(raw)); err != nil {
			b.Fatal(err)
		}
	}
}
