package queue

import (
	"encoding/binary"
	"fmt"
	"os"
	"slices"
	"syscall"
	"time"
)

// maxBatch bounds how many records one write+fsync carries.
const maxBatch = 512

// commitDelay is how long the committer may wait for more records before a
// write+fsync when the previous commit carried several that writers waited
// for (writers are concurrent): up to twice as many as last time, and never
// when there is a single writer. Like PostgreSQL's commit_delay it trades a
// fraction of a millisecond of latency for fewer fsyncs, and an fsync costs
// far more CPU than waiting: on the project's machine the relay accepted about 5% more
// messages per second under the 20-session load with it (medians of
// alternating runs with and without).
const commitDelay = 250 * time.Microsecond

// commitLoop is the only writer of the log. It takes every record waiting,
// writes them with one write and one fdatasync, applies their effects in log
// order, and then wakes their writers.
func (s *LogStore) commitLoop() {
	defer close(s.exited)
	batch := make([]*commitReq, 0, maxBatch)
	var buf []byte
	syncTimer := time.NewTimer(time.Hour)
	syncTimer.Stop()
	gather := time.NewTimer(time.Hour)
	gather.Stop()
	lastN := 0 // records in the previous commit that a writer waited for
	defer s.syncDirty()
	for {
		var r *commitReq
		var ok bool
		select {
		case r, ok = <-s.reqs:
		case <-syncTimer.C:
			s.syncDirty()
			continue
		}
		if !ok {
			return
		}
		batch = append(batch[:0], r)
		if lastN > 1 && !r.lazy {
			gather.Reset(commitDelay)
			batch = s.gather(batch, min(2*lastN, maxBatch), gather.C)
			gather.Stop()
		}
		// Whatever else is waiting (the committer is the only receiver, so
		// a buffered request is there to take).
		for len(batch) < maxBatch && len(s.reqs) > 0 {
			batch = append(batch, <-s.reqs)
		}
		lastN = 0 // lazy records come from deliveries, not from waiting writers
		for _, r := range batch {
			if !r.lazy {
				lastN++
			}
		}
		wasDirty := s.dirty != nil
		buf = s.commit(batch, buf[:0])
		if cap(buf) > 8<<20 {
			buf = nil
		}
		if !wasDirty && s.dirty != nil {
			syncTimer.Reset(lazySync)
		}
		s.maintain()
	}
}

// gather adds records to batch until it holds want or deadline fires (or
// the store is closing).
func (s *LogStore) gather(batch []*commitReq, want int, deadline <-chan time.Time) []*commitReq {
	for len(batch) < want {
		select {
		case r, ok := <-s.reqs:
			if !ok {
				return batch
			}
			batch = append(batch, r)
		case <-deadline:
			return batch
		}
	}
	return batch
}

// syncDirty fsyncs the segment holding lazy records not yet synced.
func (s *LogStore) syncDirty() {
	seg := s.dirty
	if seg == nil {
		return
	}
	s.dirty = nil
	if seg.f == nil {
		return // closed after a write error; nothing more to do
	}
	if err := syscall.Fdatasync(int(seg.f.Fd())); err != nil {
		s.log.Error("queue: syncing lazy records", "segment", seg.path, "err", err)
	}
	s.batches.Add(1)
}

// commit writes one batch durably and applies it; it tells each writer.
func (s *LogStore) commit(batch []*commitReq, buf []byte) []byte {
	err := s.ensureActive()
	var offs []int64
	if err == nil {
		seg := s.active
		offs = make([]int64, len(batch))
		salt := segSalt(seg.seq, s.key)
		for i, r := range batch {
			offs[i] = seg.size + int64(len(buf))
			start := len(buf)
			buf = append(buf, r.buf...)
			saltRecord(buf[start:], salt)
		}
		lazy := true
		for _, r := range batch {
			lazy = lazy && r.lazy
		}
		if _, err = seg.f.WriteAt(buf, seg.size); err == nil {
			if lazy {
				s.dirty = seg
			} else {
				err = syscall.Fdatasync(int(seg.f.Fd()))
				if s.dirty == seg {
					s.dirty = nil
				}
			}
		}
		if err != nil {
			// After a failed write or fsync the file's state is unknown:
			// never append to it again.
			err = fmt.Errorf("queue: writing %s: %w", seg.path, err)
			s.log.Error("queue write failed", "err", err)
			s.mu.Lock()
			seg.f.Close()
			seg.f = nil
			s.active = nil
			// (Not when its file cannot be removed: the next segment
			// takes its number.)
			empty := seg.size == 0 && seg.refs == 0 && s.segs[len(s.segs)-1] == seg
			if empty && os.Remove(seg.path) == nil {
				// Nothing in it was ever acknowledged: delete it. Kept,
				// every failed write on a full disk left a segment behind
				// (thousands), whose number set off compaction (compactAt)
				// of the oldest one: once space came back, the copies of
				// its messages took it all again.
				s.segs = s.segs[:len(s.segs)-1]
				delete(s.bySeq, seg.seq)
				seg.dead = true
			}
			s.mu.Unlock()
		} else {
			if !lazy {
				s.batches.Add(1)
			}
			s.records.Add(uint64(len(batch)))
			s.mu.Lock()
			seg.size += int64(len(buf))
			for i, r := range batch {
				if r.apply != nil {
					r.apply(seg, offs[i])
				}
			}
			s.mu.Unlock()
		}
	}
	for _, r := range batch {
		r.done <- err
	}
	return buf
}

// ensureActive makes sure there is a segment to append to.
func (s *LogStore) ensureActive() error {
	if s.active != nil {
		return nil
	}
	var seq uint64 = 1
	if n := len(s.segs); n > 0 {
		seq = s.segs[n-1].seq + 1
	}
	seg := &segment{seq: seq, path: s.segPath(seq), owned: true}
	var f *os.File
	var err error
	if s.takeSpare(seg.path) {
		if f, err = os.OpenFile(seg.path, os.O_RDWR, 0o600); err != nil {
			os.Remove(seg.path) // or the next try could not create it
		}
	} else {
		seg.grown = true
		f, err = os.OpenFile(seg.path, os.O_CREATE|os.O_EXCL|os.O_RDWR, 0o600)
		s.kickPreparer()
	}
	if err == nil {
		if err = syncDir(s.dir); err != nil {
			f.Close()
			os.Remove(seg.path)
		}
	}
	if err != nil {
		return fmt.Errorf("queue: new segment: %w", err)
	}
	seg.f = f
	s.mu.Lock()
	s.segs = append(s.segs, seg)
	s.bySeq[seq] = seg
	s.active = seg
	s.mu.Unlock()
	return nil
}

// maintain rotates a full segment, deletes segments nothing needs, and
// copies long-lived messages out of the oldest segment when there are many.
func (s *LogStore) maintain() {
	// A segment that started as an empty file is left only for a spare
	// that can be taken: one a body of its earlier life is still read
	// from cannot, and every switch to it started another empty file.
	if a := s.active; a != nil && (a.size >= s.segMax || a.grown && a.size >= s.segMax/earlySwitch && s.spareTakable()) {
		if s.dirty == s.active {
			s.syncDirty()
		}
		s.mu.Lock()
		s.active.f.Close()
		s.active.f = nil
		s.active = nil
		s.mu.Unlock()
	}
	s.deleteDead()
	// Half way through a segment, a spare should be on its way: a dead
	// segment recycled by now (as under steady load), or else one of
	// zeros prepared in time. Prepared only when the next segment had to
	// start as an empty file, every full segment was followed by one that
	// did: it left for the spare at earlySwitch, too small to recycle, so
	// the next rotation found no spare again — 32 MiB of zeros written
	// for every 32 MiB of mail.
	if a := s.active; a != nil && !a.grown && a.size >= s.segMax/2 && !s.spareIsReady() {
		s.kickPreparer()
	}
	// Compaction copies up to a segment of live records forward before the
	// oldest segment goes: not on a disk without room for that (and the
	// reserve), where the copies would take the last free space — once
	// space came back after a full disk, they took it all again.
	if len(s.segs) > compactAt && s.segs[0] != s.active && s.roomFor(s.segMax+reserveSize) {
		s.compactOldest()
		s.deleteDead()
	}
}

// deleteDead removes leading segments that no live message refers to. A
// store opened read-only removes nothing: recovery calls this too, and
// `mailhop queue list` with the relay stopped deleted the stopped relay's
// dead segments (and any a misread made look dead) under its shared lock.
func (s *LogStore) deleteDead() {
	if s.readOnly {
		return
	}
	s.mu.Lock()
	var gone []string
	for len(s.segs) > 0 && s.segs[0].refs == 0 && s.segs[0] != s.active {
		seg := s.segs[0]
		s.segs = s.segs[1:]
		delete(s.bySeq, seg.seq)
		seg.dead = true
		seg.closeReader()
		if !s.recycle(seg) {
			gone = append(gone, seg.path)
		}
	}
	s.mu.Unlock()
	for _, p := range gone {
		if err := os.Remove(p); err != nil {
			s.log.Warn("queue: removing segment", "path", p, "err", err)
		}
	}
	if len(gone) > 0 {
		if err := syncDir(s.dir); err != nil {
			s.log.Warn("queue: syncing after segment removal", "err", err)
		}
	}
}

// compactOldest writes a snapshot of every live message that has a record
// in the oldest segment, so that segment can go. Runs in the committer, so
// the snapshots see every record applied so far and nothing else.
func (s *LogStore) compactOldest() {
	old := s.segs[0]
	var f *os.File
	var fseq uint64
	var batch []*commitReq
	size := 0
	s.mu.Lock()
	for id, m := range s.msgs {
		if !slices.Contains(m.segs, old.seq) {
			continue
		}
		b := beginRecord(nil, recMessage)
		b = append(b, bodyInline, 0, 0, 0, 0, 0, 0, 0, 0)
		bodyStart := len(b)
		if m.file {
			b[bodyStart-9] = bodyFile
		} else {
			if f == nil || fseq != m.seq {
				var err error
				if f != nil {
					f.Close()
				}
				fseq = m.seq
				if f, err = os.Open(s.segPath(m.seq)); err != nil {
					s.log.Error("queue: compaction cannot read segment", "err", err)
					s.mu.Unlock()
					return
				}
			}
			b = slices.Grow(b, int(m.env.Size))[:bodyStart+int(m.env.Size)]
			if _, err := f.ReadAt(b[bodyStart:], m.boff); err != nil {
				s.log.Error("queue: compaction cannot read body", "queue_id", id, "err", err)
				f.Close()
				s.mu.Unlock()
				return
			}
			binary.LittleEndian.PutUint64(b[bodyStart-8:], uint64(m.env.Size))
		}
		e := encoder{b: b}
		e.envelope(m.env)
		finishRecord(e.b, 0)
		id, m, file := id, m, m.file
		batch = append(batch, &commitReq{buf: e.b, done: make(chan error, 1), apply: func(seg *segment, off int64) {
			if cur, ok := s.msgs[id]; !ok || cur != m {
				return
			}
			for _, q := range m.segs {
				if sg := s.bySeq[q]; sg != nil {
					sg.refs--
				}
			}
			m.segs = m.segs[:0]
			if !file {
				m.seq, m.boff = seg.seq, off+int64(bodyStart)
			}
			s.touch(m, seg)
		}})
		size += len(e.b)
		if len(batch) >= maxBatch || size > 8<<20 {
			break
		}
	}
	s.mu.Unlock()
	if f != nil {
		f.Close()
	}
	if len(batch) > 0 {
		s.commit(batch, nil)
	}
}
