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
	// IDs returns the ID of every stored message, in ID order.
	IDs() []string
	// Put stores a new message. body is read to EOF; an error reading it
	// aborts the message and is returned wrapped. env.Size is set.
	Put(env *Envelope, body io.Reader) error
	// Update applies the outcome of an attempt and returns the envelope as
	// it now stands. When no recipient is left Pending the message is
	// removed, and removed is true.
	Update(u *StateUpdate) (env *Envelope, removed bool, err error)
	// UpdateWithReports is Update together with new messages, the reports
	// (DSNs) the outcome calls for, in one atomic commit: after a crash at
	// any moment either every report is stored and the update applied, or
	// nothing is. Reports are stored as Put stores a message (each
	// Env.Size is set) and are applied before the update. It returns once
	// all of it is on stable storage. A message not stored is ErrNotFound,
	// and nothing is written; one removed while the commit was under way
	// gives a nil env and removed true, its reports being stored all the
	// same.
	UpdateWithReports(u *StateUpdate, reports []Report) (env *Envelope, removed bool, err error)
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

// Report is a new message queued in the same commit as the outcome of the
// attempt that calls for it (Queue.DoneWithReports): a delivery status
// notification. Body is read to EOF.
type Report struct {
	Env  *Envelope
	Body io.Reader
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

// settles reports whether u gives a recipient a final state (delivered or
// failed).
func (u *StateUpdate) settles() bool {
	for _, r := range u.Rcpts {
		if r.State != Pending {
			return true
		}
	}
	return false
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
