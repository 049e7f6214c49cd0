package tlsrpt

import (
	"testing"
	"time"
)

func TestNextPeriodEnd_UTCMidnight(t *testing.T) {
	t.Parallel()
	paris := time.FixedZone("CET", 3600)
	now := time.Date(2026, 3, 1, 23, 30, 0, 0, paris) // 22:30 UTC
	if got, want := NextPeriodEnd(now, 24*time.Hour), time.Date(2026, 3, 2, 0, 0, 0, 0, time.UTC); !got.Equal(want) {
		t.Errorf("next daily report at %v, want %v", got, want)
	}
	if got, want := NextPeriodEnd(now, time.Hour), time.Date(2026, 3, 1, 23, 0, 0, 0, time.UTC); !got.Equal(want) {
		t.Errorf("next hourly report at %v, want %v", got, want)
	}
}
