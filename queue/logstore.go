package queue

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// LogStore is the embedded Store: an append-only log of checksummed records
// in segment files, with group commit. Each writer encodes its record in its
// own goroutine and hands it to one committer goroutine, which writes every
// record that arrived meanwhile with one write and one fdatasync, then wakes
// the writers. So one fsync covers many messages.
//
// Layout of the directory:
//
//	LOCK                 flock: one process at a time
//	key                  the random part of every record's salt (logkey.go)
//	seg-<seq>.log        segments; the newest is appended to
//	spare.log            a written file the next segment starts from (logspare.go)
//	reserve              room kept for deletions on a full disk (logreserve.go)
//	bodies/<ID>          bodies larger than InlineMax, one file each
//	quarantine/          damaged records and envelopes moved aside at start
//
// A segment is deleted when no live message has a record in it and every
// older segment is gone (so a "done" record never outlives the message record
// it cancels). A message that stays long is copied forward (a snapshot
// record) so it does not pin old segments.
type LogStore struct {
	dir  string
	log  *slog.Logger
	lock *os.File

	reqs   chan *commitReq
	cmu    sync.RWMutex // guards closed against sends on reqs
	closed bool
	exited chan struct{}

	mu     sync.Mutex
	msgs   map[string]*storedMsg
	segs   []*segment // oldest first; the last is active
	bySeq  map[uint64]*segment
	active *segment // nil after a write error until a new one is made
	lost   []string // messages moved aside at recovery: a done record is due
	segMax int64    // segment size that starts a new one
	// freeSpace, when set (tests), replaces asking the file system how
	// many bytes are free (roomFor).
	freeSpace func() int64
	damaged   bool     // recovery found damage (set at start only)
	dirty     *segment // holds lazy records not yet fsynced (committer only)
	cut       bool     // recovery ignored an incomplete record (set at start only)

	// orphans: at recovery, the messages that state or hold records name
	// while no message record of them has been read (logrecover.go), with
	// the segment of the first such record.
	orphans map[string]string

	spareMu    sync.Mutex // guards spareReady, spareFrom and renames to and from spare.log
	spareReady bool
	// spareFrom is the segment a recycled spare was, while bodies of it
	// may still be read (through their open handles): the spare is not
	// written over until they are done (its readers, under mu).
	spareFrom *segment
	prepKick  chan struct{} // asks prepareSpares for a spare
	prepQuit  chan struct{} // closed by Close
	prepDone  chan struct{} // closed when prepareSpares returns

	batches, records atomic.Uint64 // commits (fsyncs) and records written

	// The reserve (logreserve.go): reserved is read on every Put; resMu
	// guards writing and deleting the file and resTried.
	reserved atomic.Bool
	resMu    sync.Mutex
	resTried time.Time

	readOnly bool   // OpenLogStoreReadOnly: no goroutines, no writes
	key      uint32 // salted into every record's CRC with the segment number (logkey.go)
}

// CommitStats returns how many group commits (one fsync each) and records
// the store has written: records/batches is the group-commit factor.
func (s *LogStore) CommitStats() (batches, records uint64) {
	return s.batches.Load(), s.records.Load()
}

// InlineMax is the largest body kept inside the log; larger bodies get a
// file of their own, so memory does not grow with message size.
const InlineMax = 64 << 10

// segmentMax is the size at which a new segment is started.
const segmentMax = 32 << 20

// compactAt is the number of segments above which the oldest is compacted.
const compactAt = 4

type segment struct {
	seq  uint64
	path string
	f    *os.File // the active segment only
	size int64
	refs int // live messages with a record in this segment
	// owned: made by this process, so its file may be recycled (see
	// logspare.go); grown: it started as an empty file, not as a spare.
	owned, grown bool

	// Bodies are read through one shared read-only handle per segment,
	// opened on first use and closed when the segment is gone and its
	// last reader is done.
	rf      *os.File
	readers int
	dead    bool
}

type storedMsg struct {
	env  *Envelope
	seq  uint64 // segment of the body (inline)
	boff int64  // offset of the inline body in that segment
	file bool   // body in bodies/ID
	segs []uint64
}

type commitReq struct {
	buf   []byte
	apply func(seg *segment, off int64) // under mu, after the write (and fsync)
	done  chan error
	// lazy: the record must survive a crash of the process (it is written
	// before done) but not necessarily a power loss, so it needs no fsync
	// of its own: the next fsync covers it, at the latest lazySync later.
	lazy bool
}

// lazySync bounds how long a lazy record may wait for an fsync.
const lazySync = 200 * time.Millisecond

// OpenLogStore opens (creating if needed) a log store in dir and recovers it.
func OpenLogStore(dir string, log *slog.Logger) (*LogStore, error) {
	if log == nil {
		log = slog.Default()
	}
	return openLogStore(dir, log)
}

// ErrReadOnly is returned by the changes of a store opened read-only.
var ErrReadOnly = errors.New("queue: opened read-only (the relay is not running)")

// OpenLogStoreReadOnly opens an existing log store in dir to read it, for
// `mailhop queue list` while the relay is stopped: it creates nothing,
// changes nothing (a damaged record is reported, not moved aside), and
// takes a shared lock, so it fails while a relay holds the queue. Changes
// return ErrReadOnly. A directory that is not a queue is an error: a wrong
// data_dir must not look like an empty queue.
func OpenLogStoreReadOnly(dir string, log *slog.Logger) (*LogStore, error) {
	if log == nil {
		log = slog.Default()
	}
	lock, err := os.Open(filepath.Join(dir, "LOCK"))
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return nil, fmt.Errorf("queue: no queue at %s (is data_dir right? the relay creates it at its first start)", dir)
		}
		return nil, fmt.Errorf("queue: %w", err)
	}
	if err := syscall.Flock(int(lock.Fd()), syscall.LOCK_SH|syscall.LOCK_NB); err != nil {
		lock.Close()
		return nil, fmt.Errorf("queue: %s is in use by another process: %w", dir, err)
	}
	s := &LogStore{dir: dir, log: log, lock: lock, readOnly: true,
		msgs: make(map[string]*storedMsg), bySeq: make(map[uint64]*segment), segMax: segmentMax}
	if err := s.recover(); err != nil {
		lock.Close()
		return nil, err
	}
	return s, nil
}

// readerWait is how long a starting relay waits for `mailhop queue list`
// or `show` to finish reading the stopped queue (their shared lock).
const readerWait = 10 * time.Second

// lockExclusive takes the exclusive lock on f. While readers hold shared
// locks (a `mailhop queue list` that read the queue directory because the
// relay was stopped, as a monitoring script does during a restart) it
// waits for them up to wait; another relay's exclusive lock fails at once.
func lockExclusive(f *os.File, wait time.Duration) error {
	fd := int(f.Fd())
	deadline := time.Now().Add(wait)
	for {
		err := syscall.Flock(fd, syscall.LOCK_EX|syscall.LOCK_NB)
		if err == nil {
			return nil
		}
		if !errors.Is(err, syscall.EWOULDBLOCK) {
			return fmt.Errorf("lock: %w", err)
		}
		// A shared lock is granted only when no one holds it exclusively.
		if syscall.Flock(fd, syscall.LOCK_SH|syscall.LOCK_NB) != nil {
			return fmt.Errorf("is in use by another process: %w", err)
		}
		syscall.Flock(fd, syscall.LOCK_UN)
		if time.Now().After(deadline) {
			return fmt.Errorf("is still being read by another process (mailhop queue list or show) after %s: %w", wait, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func openLogStore(dir string, log *slog.Logger) (*LogStore, error) {
	for _, d := range []string{dir, filepath.Join(dir, "bodies"), filepath.Join(dir, "quarantine")} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			return nil, fmt.Errorf("queue: %w", err)
		}
	}
	lock, err := os.OpenFile(filepath.Join(dir, "LOCK"), os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		return nil, fmt.Errorf("queue: %w", err)
	}
	if err := lockExclusive(lock, readerWait); err != nil {
		lock.Close()
		return nil, fmt.Errorf("queue: %s %w", dir, err)
	}
	s := &LogStore{
		dir: dir, log: log, lock: lock,
		reqs:   make(chan *commitReq, 1024),
		exited: make(chan struct{}),
		msgs:   make(map[string]*storedMsg),
		bySeq:  make(map[uint64]*segment),
		segMax: segmentMax,

		prepKick: make(chan struct{}, 1),
		prepQuit: make(chan struct{}),
		prepDone: make(chan struct{}),
	}
	s.removeSpares()
	if err := s.recover(); err != nil {
		lock.Close()
		return nil, err
	}
	os.Remove(filepath.Join(dir, reserveTmpName))
	go s.prepareSpares()
	go s.commitLoop()
	if err := s.makeReserve(); err != nil {
		s.log.Warn("queue: no room for the reserve kept for deletions: new mail is refused until there is", "err", err)
	}
	for _, id := range s.lost {
		if err := s.writeDone(id); err != nil {
			s.log.Warn("queue: recording quarantined message", "queue_id", id, "err", err)
		}
	}
	s.lost = nil
	return s, nil
}

// Close finishes pending writes and releases the directory.
func (s *LogStore) Close() error {
	if s.readOnly {
		s.mu.Lock()
		for _, seg := range s.segs {
			seg.dead = true
			seg.closeReader()
		}
		s.mu.Unlock()
		return s.lock.Close()
	}
	s.cmu.Lock()
	if s.closed {
		s.cmu.Unlock()
		return nil
	}
	s.closed = true
	close(s.reqs)
	s.cmu.Unlock()
	<-s.exited
	s.stopPreparer()
	s.mu.Lock()
	if s.active != nil {
		s.active.f.Close()
	}
	for _, seg := range s.segs {
		seg.dead = true
		seg.closeReader()
	}
	s.mu.Unlock()
	return s.lock.Close()
}

// submit hands a record to the committer and waits until it is durable.
func (s *LogStore) submit(r *commitReq) error {
	if s.readOnly {
		return ErrReadOnly
	}
	r.done = make(chan error, 1)
	s.cmu.RLock()
	if s.closed {
		s.cmu.RUnlock()
		return ErrClosed
	}
	s.reqs <- r
	s.cmu.RUnlock()
	return <-r.done
}

var bufPool = sync.Pool{New: func() any { b := make([]byte, 0, InlineMax+4096); return &b }}

// Put implements Store.
func (s *LogStore) Put(env *Envelope, body io.Reader) error {
	if s.readOnly {
		return ErrReadOnly
	}
	if !s.haveReserve() {
		return ErrDiskFull
	}
	bp := bufPool.Get().(*[]byte)
	defer func() { *bp = (*bp)[:0]; bufPool.Put(bp) }()
	b, bodyStart, file, err := s.appendMessage(beginRecord((*bp)[:0], recMessage), env, body)
	if err != nil {
		return err
	}
	finishRecord(b, 0)
	*bp = b

	stored := &storedMsg{env: env.clone(), file: file}
	err = s.submit(&commitReq{buf: b, apply: func(seg *segment, off int64) {
		if !file {
			stored.seq, stored.boff = seg.seq, off+int64(bodyStart)
		}
		s.msgs[env.ID] = stored
		s.touch(stored, seg)
	}})
	if err != nil && file {
		os.Remove(s.bodyPath(env.ID))
	}
	return err
}

// appendMessage appends the payload of a message record for env to b: where
// the body is, the body itself when it is inline, and the envelope. A body
// larger than InlineMax goes to bodies/ID instead, written and synced
// (file and directory) before appendMessage returns. It returns the offset
// of the inline body in b and whether the body is in a file; env.Size is
// set. body is read to EOF; an error reading it is returned wrapped.
func (s *LogStore) appendMessage(b []byte, env *Envelope, body io.Reader) (_ []byte, bodyStart int, file bool, err error) {
	b = append(b, bodyInline, 0, 0, 0, 0, 0, 0, 0, 0)
	bodyStart = len(b)

	// Read the body into the record until it outgrows InlineMax.
	for err == nil {
		if len(b)-bodyStart > InlineMax {
			break
		}
		if cap(b)-len(b) < 4096 {
			b = slices.Grow(b, 16384)
		}
		var n int
		n, err = body.Read(b[len(b):cap(b)])
		b = b[:len(b)+n]
	}
	if err == io.EOF {
		err = nil
	} else if err == nil {
		// Too big for the log: the body gets its own file.
		n, ferr := s.writeBodyFile(env.ID, b[bodyStart:], body)
		if ferr != nil {
			return b, 0, false, ferr
		}
		file = true
		env.Size = n
		b = b[:bodyStart]
		b[bodyStart-9] = bodyFile
	} else {
		return b, 0, false, fmt.Errorf("queue: reading message: %w", err)
	}
	if !file {
		env.Size = int64(len(b) - bodyStart)
		binary.LittleEndian.PutUint64(b[bodyStart-8:], uint64(env.Size))
	}
	e := encoder{b: b}
	e.envelope(env)
	return e.b, bodyStart, file, nil
}

func (s *LogStore) bodyPath(id string) string { return filepath.Join(s.dir, "bodies", id) }

// writeBodyFile writes head and then the rest of r to bodies/id, durably.
func (s *LogStore) writeBodyFile(id string, head []byte, r io.Reader) (int64, error) {
	if !validID(id) {
		return 0, fmt.Errorf("queue: bad message id %q", id)
	}
	path := s.bodyPath(id)
	f, err := os.OpenFile(path, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o600)
	if err != nil {
		return 0, fmt.Errorf("queue: %w", err)
	}
	fail := func(err error) (int64, error) {
		f.Close()
		os.Remove(path)
		return 0, err
	}
	if _, err := f.Write(head); err != nil {
		return fail(fmt.Errorf("queue: writing body: %w", err))
	}
	n, err := io.Copy(f, r)
	if err != nil {
		var we *os.PathError
		if errors.As(err, &we) {
			return fail(fmt.Errorf("queue: writing body: %w", err))
		}
		return fail(fmt.Errorf("queue: reading message: %w", err))
	}
	if err := f.Sync(); err != nil {
		return fail(fmt.Errorf("queue: syncing body: %w", err))
	}
	if err := f.Close(); err != nil {
		os.Remove(path)
		return 0, fmt.Errorf("queue: %w", err)
	}
	if err := syncDir(filepath.Dir(path)); err != nil {
		os.Remove(path)
		return 0, err
	}
	return int64(len(head)) + n, nil
}

// touch records that m has a record in seg. Called under mu.
func (s *LogStore) touch(m *storedMsg, seg *segment) {
	if !slices.Contains(m.segs, seg.seq) {
		m.segs = append(m.segs, seg.seq)
		seg.refs++
	}
}

// drop forgets m. Called under mu, after its done record is durable. A
// store opened read-only removes no body file: recovery drops a message at
// its done record, and one whose file a crash left behind is the next
// start's to remove (`mailhop queue list` with the relay stopped removed it).
func (s *LogStore) drop(id string, m *storedMsg) {
	delete(s.msgs, id)
	for _, q := range m.segs {
		if seg := s.bySeq[q]; seg != nil {
			seg.refs--
		}
	}
	if m.file && !s.readOnly {
		os.Remove(s.bodyPath(id))
	}
}

// Update implements Store.
func (s *LogStore) Update(u *StateUpdate) (*Envelope, bool, error) {
	removed, ok := s.outcome(u)
	if !ok {
		return nil, false, ErrNotFound
	}
	// An attempt that leaves every recipient pending lets no mail go: on
	// a full disk it must not take the reserve kept for the records that
	// do (a done record, a recipient delivered or bounced). It took it,
	// and the retries of deferred mail wrote state records into the room
	// it made until the disk was full to the last byte: then `queue
	// delete` failed with ENOSPC again. Not written, it is kept in memory
	// (Queue.Done) and the attempt is made again.
	settles := removed || u.settles()
	if !settles && !s.haveReserve() {
		return nil, false, ErrDiskFull
	}
	submit := s.submit
	if settles {
		submit = s.submitFreeing
	}
	var b []byte
	if removed {
		b = appendDone(beginRecord(nil, recDone), u.ID)
	} else {
		e := encoder{b: beginRecord(nil, recState)}
		e.state(u)
		b = e.b
	}
	finishRecord(b, 0)
	var out *Envelope
	// An attempt's outcome is written lazily: lost only to a power loss in
	// the next lazySync, and then the attempt is simply made again (a
	// duplicate, never a loss: a report it calls for goes with it in one
	// record, UpdateWithReports).
	// Postfix does not sync the removal of a delivered message either.
	err := submit(&commitReq{lazy: true, buf: b, apply: func(seg *segment, _ int64) {
		out = s.applyUpdate(seg, u, removed)
	}})
	if err != nil {
		return nil, false, err
	}
	if out == nil {
		return nil, false, ErrNotFound
	}
	return out, removed, nil
}

// outcome reports whether u leaves no recipient of its message pending,
// and whether the message is stored at all.
func (s *LogStore) outcome(u *StateUpdate) (removed, ok bool) {
	s.mu.Lock()
	m, ok := s.msgs[u.ID]
	if !ok {
		s.mu.Unlock()
		return false, false
	}
	after := m.env.clone()
	s.mu.Unlock()
	internReplies(u.Rcpts)
	u.apply(after)
	return after.Pending() == 0, true
}

// applyUpdate applies a written state or done record for u in memory and
// returns the envelope as it now stands, or nil when the message is gone.
// Called under mu.
func (s *LogStore) applyUpdate(seg *segment, u *StateUpdate, removed bool) *Envelope {
	m, ok := s.msgs[u.ID]
	if !ok {
		return nil
	}
	u.apply(m.env)
	out := m.env.clone()
	if removed {
		s.drop(u.ID, m)
	} else {
		s.touch(m, seg)
	}
	return out
}

// UpdateWithReports implements Store. The reports and the update go into
// one group record (record.go): one frame with one checksum, so a write cut
// anywhere, by a crash of the process or of the machine, leaves all of it
// or none. The commit is synced before it returns, since a report must not
// be lost. Large report bodies are written to bodies/ and synced first, as
// Put does.
func (s *LogStore) UpdateWithReports(u *StateUpdate, reports []Report) (*Envelope, bool, error) {
	if len(reports) == 0 {
		return s.Update(u)
	}
	if s.readOnly {
		return nil, false, ErrReadOnly
	}
	removed, ok := s.outcome(u)
	if !ok {
		return nil, false, ErrNotFound
	}
	if !s.haveReserve() {
		return nil, false, ErrDiskFull // new messages: the reserve is not theirs
	}
	var files []string // body files written so far, removed on failure
	fail := func(err error) (*Envelope, bool, error) {
		for _, p := range files {
			os.Remove(p)
		}
		return nil, false, err
	}
	b := beginRecord(nil, recGroup)
	stored := make([]*storedMsg, len(reports))
	bodyStarts := make([]int, len(reports))
	for i, r := range reports {
		start := len(b)
		b = append(b, recMessage, 0, 0, 0, 0)
		var file bool
		var err error
		b, bodyStarts[i], file, err = s.appendMessage(b, r.Env, r.Body)
		if err != nil {
			return fail(fmt.Errorf("queue: report %s: %w", r.Env.ID, err))
		}
		if file {
			files = append(files, s.bodyPath(r.Env.ID))
		}
		binary.LittleEndian.PutUint32(b[start+1:], uint32(len(b)-start-groupEntryHeader))
		stored[i] = &storedMsg{env: r.Env.clone(), file: file}
	}
	// The update last: replayed (and applied) after its reports.
	start := len(b)
	if removed {
		b = append(b, recDone, 0, 0, 0, 0)
		b = appendDone(b, u.ID)
	} else {
		b = append(b, recState, 0, 0, 0, 0)
		e := encoder{b: b}
		e.state(u)
		b = e.b
	}
	binary.LittleEndian.PutUint32(b[start+1:], uint32(len(b)-start-groupEntryHeader))
	finishRecord(b, 0)

	var out *Envelope
	err := s.submit(&commitReq{buf: b, apply: func(seg *segment, off int64) {
		for i, m := range stored {
			if !m.file {
				m.seq, m.boff = seg.seq, off+int64(bodyStarts[i])
			}
			s.msgs[m.env.ID] = m
			s.touch(m, seg)
		}
		out = s.applyUpdate(seg, u, removed)
	}})
	if err != nil {
		return fail(err)
	}
	if out == nil {
		// Removed while the commit was under way: the reports are stored
		// all the same.
		return nil, true, nil
	}
	return out, removed, nil
}

// appendDone appends the payload of a done record for id.
func appendDone(b []byte, id string) []byte {
	e := encoder{b: b}
	e.str(id)
	return e.b
}

// writeDone appends a done record for id.
func (s *LogStore) writeDone(id string) error {
	b := appendDone(beginRecord(nil, recDone), id)
	finishRecord(b, 0)
	return s.submitFreeing(&commitReq{buf: b, apply: func(*segment, int64) {
		if m, ok := s.msgs[id]; ok {
			s.drop(id, m)
		}
	}})
}

// internReplies makes equal reply texts share one string: an attempt often
// gives hundreds of recipients the same reply, and envelopes stay in memory.
func internReplies(rs []RcptUpdate) {
	if len(rs) < 2 {
		return
	}
	seen := make(map[string]string)
	for i := range rs {
		if s, ok := seen[rs[i].Reply]; ok {
			rs[i].Reply = s
		} else {
			seen[rs[i].Reply] = rs[i].Reply
		}
	}
}

// SetHeld implements Store.
func (s *LogStore) SetHeld(id string, held bool) error {
	e := encoder{b: beginRecord(nil, recHold)}
	e.str(id)
	e.bool(held)
	finishRecord(e.b, 0)
	found := false
	err := s.submitFreeing(&commitReq{buf: e.b, apply: func(seg *segment, _ int64) {
		if m, ok := s.msgs[id]; ok {
			found = true
			m.env.Held = held
			s.touch(m, seg)
		}
	}})
	if err == nil && !found {
		err = ErrNotFound
	}
	return err
}

// Remove implements Store.
func (s *LogStore) Remove(id string) error {
	s.mu.Lock()
	_, ok := s.msgs[id]
	s.mu.Unlock()
	if !ok {
		return ErrNotFound
	}
	return s.writeDone(id)
}

// Get implements Store.
func (s *LogStore) Get(id string) (*Envelope, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	m, ok := s.msgs[id]
	if !ok {
		return nil, ErrNotFound
	}
	return m.env.clone(), nil
}

// Messages implements Store.
func (s *LogStore) Messages() []*Envelope {
	s.mu.Lock()
	out := make([]*Envelope, 0, len(s.msgs))
	for _, m := range s.msgs {
		out = append(out, m.env.clone())
	}
	s.mu.Unlock()
	slices.SortFunc(out, func(a, b *Envelope) int { return cmpString(a.ID, b.ID) })
	return out
}

// IDs implements Store.
func (s *LogStore) IDs() []string {
	s.mu.Lock()
	out := make([]string, 0, len(s.msgs))
	for id := range s.msgs {
		out = append(out, id)
	}
	s.mu.Unlock()
	slices.Sort(out)
	return out
}

func cmpString(a, b string) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

// fileBody is a Body over a section of an open file; done releases it.
type fileBody struct {
	*io.SectionReader
	done func()
}

func (b *fileBody) Close() error {
	if b.done != nil {
		b.done()
		b.done = nil
	}
	return nil
}

// Body implements Store. An inline body is read through its segment's
// shared handle, which stays open while any reader has it, even if the
// segment is deleted meanwhile.
func (s *LogStore) Body(id string) (Body, error) {
	s.mu.Lock()
	m, ok := s.msgs[id]
	if !ok {
		s.mu.Unlock()
		return nil, ErrNotFound
	}
	size := m.env.Size
	if m.file {
		s.mu.Unlock()
		f, err := os.Open(s.bodyPath(id))
		if err != nil {
			return nil, fmt.Errorf("queue: opening body of %s: %w", id, err)
		}
		return &fileBody{SectionReader: io.NewSectionReader(f, 0, size), done: func() { f.Close() }}, nil
	}
	defer s.mu.Unlock()
	seg := s.bySeq[m.seq]
	if seg == nil {
		return nil, fmt.Errorf("queue: body of %s: segment %d is gone", id, m.seq)
	}
	if seg.rf == nil {
		f, err := os.Open(seg.path)
		if err != nil {
			return nil, fmt.Errorf("queue: opening body of %s: %w", id, err)
		}
		seg.rf = f
	}
	seg.readers++
	return &fileBody{SectionReader: io.NewSectionReader(seg.rf, m.boff, size), done: func() {
		s.mu.Lock()
		defer s.mu.Unlock()
		seg.readers--
		seg.closeReader()
	}}, nil
}

// closeReader closes the shared read handle of a deleted segment once no
// one reads it. Called under mu.
func (seg *segment) closeReader() {
	if seg.dead && seg.readers == 0 && seg.rf != nil {
		seg.rf.Close()
		seg.rf = nil
	}
}

func (s *LogStore) segPath(seq uint64) string {
	return filepath.Join(s.dir, fmt.Sprintf("seg-%016x.log", seq))
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("queue: %w", err)
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("queue: syncing %s: %w", dir, err)
	}
	return nil
}
