package smtp_test

// mailhop patch test: the SIZE parameter of MAIL (RFC 1870).

import (
	"context"
	"io"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/emersion/go-smtp"
)

func TestMailSizeParameter(t *testing.T) {
	for _, tc := range []struct {
		size string
		want string
	}{
		{"1099511627776", "552 5.3.4"},
		{"99999999999999999999", "552 5.3.4"},
		{"100", "250 "},
		{"", "501 5.5.4"},
		{"+5", "501 5.5.4"},
		{"-5", "501 5.5.4"},
		{"12x", "501 5.5.4"},
	} {
		_, _, c, scanner, _ := testServerEhlo(t, func(s *smtp.Server) { s.MaxMessageBytes = 1000 })
		io.WriteString(c, "MAIL FROM:<a@b.test> SIZE="+tc.size+"\r\n")
		scanner.Scan()
		if got := scanner.Text(); !strings.HasPrefix(got, tc.want) {
			t.Errorf("SIZE=%q: %q, want %q", tc.size, got, tc.want)
		}
		c.Close()
	}
}

// Concurrent Shutdown and Close calls must not panic (mailhop patch).
func TestConcurrentShutdown(t *testing.T) {
	for i := 0; i < 50; i++ {
		_, s, c, _ := testServerGreeted(t)
		c.Close()
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		var wg sync.WaitGroup
		for j := 0; j < 4; j++ {
			wg.Add(2)
			go func() { defer wg.Done(); s.Shutdown(ctx) }()
			go func() { defer wg.Done(); s.Close() }()
		}
		wg.Wait()
		cancel()
	}
}
