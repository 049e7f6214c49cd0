// Package queue is mailhop's durable mail queue.
//
// STUB: the API below is final; the implementation is being written.
package queue

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"time"
)

// ErrNotFound is returned for a queue ID that is not (or no longer) queued.
var ErrNotFound = errors.New("queue: no such message")

// ErrClosed is returned after Close.
var ErrClosed = errors.New("queue: closed")

// Options configures a Queue.
type Options struct {
	// RetryIntervals are the waits between attempts; the last one repeats.
	RetryIntervals []time.Duration
	// Logger receives recovery and storage events. Nil: slog.Default().
	Logger *slog.Logger
	// Now is the clock. Nil: time.Now.
	Now func() time.Time
}

// Queue is the durable queue. Its methods are safe for concurrent use.
type Queue struct{}

// Open opens (creating if needed) the queue stored in dir and recovers every
// message found there.
func Open(dir string, opts Options) (*Queue, error) { return nil, errors.New("not implemented") }

// Close stops the queue; Next returns ErrClosed afterwards.
func (q *Queue) Close() error { return nil }

// NewID returns a fresh queue ID: unique, and sorting by arrival.
func (q *Queue) NewID() string { return "" }

// Enqueue stores a new message durably. env.ID must come from NewID (or be
// empty, and is then assigned). body is read to EOF; an error reading it
// aborts the message and is returned (wrapped: errors.Is/As see it). When
// Enqueue returns nil the envelope and body are on stable storage.
// env.Size is set from the bytes stored.
func (q *Queue) Enqueue(env *Envelope, body io.Reader) error { return errors.New("not implemented") }

// Body is a reader over one stored message body.
type Body interface {
	io.Reader
	io.ReaderAt
	io.Closer
	Size() int64
}

// Body opens the body of a queued message.
func (q *Queue) Body(id string) (Body, error) { return nil, ErrNotFound }

// Next blocks until a message is due for delivery (not held, not already
// handed out, NextAttempt reached) and returns a copy of its envelope. The
// message stays handed out until Done is called for it.
func (q *Queue) Next(ctx context.Context) (*Envelope, error) { return nil, ErrClosed }

// Claim hands out one message now, whatever its schedule (for an operator's
// `bounce`); it fails if the message is already handed out.
func (q *Queue) Claim(id string) (*Envelope, error) { return nil, ErrNotFound }

// RcptUpdate is the outcome of one attempt for one recipient.
type RcptUpdate struct {
	Index int // into Envelope.Recipients
	State RcptState
	Code  int
	Reply string
}

// Result is the outcome of one delivery attempt of a handed-out message.
type Result struct {
	Recipients  []RcptUpdate
	LastError   string
	DelayWarned bool      // set once a delay DSN has been queued
	RetryAt     time.Time // zero: from RetryIntervals and the attempt count, with jitter
}

// Done records an attempt's outcome durably and gives the message back to
// the scheduler. Attempts is incremented. A message with no Pending
// recipient left is removed from the queue.
func (q *Queue) Done(id string, res Result) error { return errors.New("not implemented") }

// Requeue gives a handed-out message back unchanged (no attempt counted),
// due at once; used when delivery was cancelled by shutdown.
func (q *Queue) Requeue(id string) error { return nil }

// List returns copies of every queued envelope, oldest first.
func (q *Queue) List() []*Envelope { return nil }

// Get returns a copy of one envelope.
func (q *Queue) Get(id string) (*Envelope, error) { return nil, ErrNotFound }

// Hold stops delivery of a message until Release.
func (q *Queue) Hold(id string) error { return ErrNotFound }

// Release ends a hold; the message is due at once.
func (q *Queue) Release(id string) error { return ErrNotFound }

// Delete removes a message from the queue without any report.
func (q *Queue) Delete(id string) error { return ErrNotFound }

// Flush makes every queued message (or those with a pending recipient in
// domain, when domain is not "") due now. It returns how many.
func (q *Queue) Flush(domain string) int { return 0 }

// Stats is a summary of the queue for metrics.
type Stats struct {
	Messages   int
	Recipients int // pending recipients
	Oldest     time.Time
}

// Stats returns the queue's current size.
func (q *Queue) Stats() Stats { return Stats{} }
