package outbound

import (
	"strings"
	"sync"

	"github.com/mailhop/mailhop/queue"
	"github.com/mailhop/mailhop/relay/mime7bit"
)

// msgForms is what the transactions of one attempt may need to know about
// the message beyond its bytes, each found at most once and only when a
// server calls for it (the domain groups of a message run in parallel).
type msgForms struct {
	body queue.Body

	sevenOnce sync.Once
	seven     *mime7bit.Conversion // nil: the message is 7-bit already
	sevenErr  error

	hdrOnce  sync.Once
	hdrASCII bool

	eightOnce sync.Once
	eight     bool
	eightErr  error
}

// eightBit reports whether the message needs 8BITMIME: declared 8-bit
// (BODY=8BITMIME or BINARYMIME) or holding an octet above 127.
func (m *msgForms) eightBit(env *queue.Envelope) (bool, error) {
	if strings.EqualFold(env.BodyType, "8BITMIME") || strings.EqualFold(env.BodyType, "BINARYMIME") {
		return true, nil
	}
	m.eightOnce.Do(func() { m.eight, m.eightErr = mime7bit.Has8bit(m.body, m.body.Size()) })
	return m.eight, m.eightErr
}

// headerASCII reports whether the message's header is all ASCII (RFC
// 6531 §3.2: otherwise it needs SMTPUTF8).
func (m *msgForms) headerASCII() bool {
	m.hdrOnce.Do(func() {
		bp := headBufs.Get().(*[]byte)
		defer headBufs.Put(bp)
		m.hdrASCII = mime7bit.IsASCII(storedHeaderBlock(m.body, *bp))
	})
	return m.hdrASCII
}

// sevenBit returns the message's 7-bit form (see mime7bit.Convert).
func (m *msgForms) sevenBit() (*mime7bit.Conversion, error) {
	m.sevenOnce.Do(func() { m.seven, m.sevenErr = mime7bit.Convert(m.body, m.body.Size()) })
	return m.seven, m.sevenErr
}
