package smtp

import (
	"errors"
)

// ErrTooLongLine is upstream's error for a reply line over its limit. The
// client no longer returns it: a longer line loses its excess instead
// (mailhop patch: lineCutReader in client.go); it is kept for callers that
// compare with it.
var ErrTooLongLine = errors.New("smtp: too long a line in input stream")
