package queue

import (
	"io"
	"time"
)

// Store keeps queued messages durably: envelopes with their per-recipient
// state, and bodies. The Queue schedules on top of it. The embedded store is
// LogStore; a replicated store shared by several nodes implements the same
// interface.
//
// Every method that changes state returns only once the change is on stable
// storage.
type Store interface {
	// Messages returns a copy of every stored envelope, in ID order.
	Messages() []*Envelope
	// Put stores a new message. body is read to EOF; an error reading it
	// aborts the message and is returned wrapped. env.Size is set.
	Put(env *Envelope, body io.Reader) error
	// Update applies the outcome of an attempt and returns the envelope as
	// it now stands. When no recipient is left Pending the message is
	// removed, and removed is true.
	Update(u *StateUpdate) (env *Envelope, removed bool, err error)
	// SetHeld sets or clears the hold flag.
	SetHeld(id string, held bool) error
	// Remove deletes a message.
	Remove(id string) error
	// Get returns a copy of one envelope.
	Get(id string) (*Envelope, error)
	// Body opens a message body for reading.
	Body(id string) (Body, error)
	// Close releases the store.
	Close() error
}

// StateUpdate is what one delivery attempt changes in an envelope.
type StateUpdate struct {
	ID          string
	Attempts    int
	NextAttempt time.Time
	LastError   string
	DelayWarned bool
	Rcpts       []RcptUpdate
}

// apply changes env as u says.
func (u *StateUpdate) apply(env *Envelope) {
	env.Attempts = u.Attempts
	env.NextAttempt = u.NextAttempt
	env.LastError = u.LastError
	env.DelayWarned = u.DelayWarned
	for _, r := range u.Rcpts {
		if r.Index < 0 || r.Index >= len(env.Recipients) {
			continue
		}
		rc := &env.Recipients[r.Index]
		rc.State, rc.Code, rc.Reply = r.State, r.Code, r.Reply
	}
}
