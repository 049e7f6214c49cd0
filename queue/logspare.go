package queue

import (
	"fmt"
	"os"
	"path/filepath"
	"syscall"
)

// Spare segments.
//
// Appending to a file makes every fdatasync also commit the file's new size
// and block allocation to the file system's journal; overwriting blocks that
// are already allocated and written needs a flush of the data alone. On the
// project's ext4 disk that halves the time of a group commit (about 490 to
// 270 µs) and cuts its CPU by a quarter. So a new segment starts, when it
// can, as a file of segMax bytes that is already written: the spare.
//
// A spare comes from one of two places:
//   - recycling: a segment made by this process that no message needs any
//     more is renamed to spare.log instead of being deleted (and taken
//     once no body of its earlier life is being read);
//   - preparing: when none is ready half way through the active segment,
//     or a segment had to start as an empty file, a goroutine writes
//     segMax zero bytes to spare.tmp, syncs it and renames it to
//     spare.log, and the next segment starts from it.
//
// A recycled file still holds the records of its earlier life. Every
// record's CRC is therefore salted with the number of the segment it was
// written to (see segSalt), so recovery tells an old record (salted with an
// earlier number) from a new one and stops there. Only segments made by this
// process are recycled, and a start deletes any spare left behind, so old
// records always carry a smaller segment number than the file's new one.

const (
	spareName    = "spare.log"
	spareTmpName = "spare.tmp"
	// earlySwitch: an empty-file segment is left for a ready spare once it
	// holds this fraction of segMax (1 MiB of 32), so a fresh queue soon
	// writes to a spare too.
	earlySwitch = 32
)

func (s *LogStore) sparePath() string    { return filepath.Join(s.dir, spareName) }
func (s *LogStore) spareTmpPath() string { return filepath.Join(s.dir, spareTmpName) }

// removeSpares deletes spares left by an earlier process: their old records
// may carry any segment number.
func (s *LogStore) removeSpares() {
	for _, p := range []string{s.sparePath(), s.spareTmpPath()} {
		if err := os.Remove(p); err != nil && !os.IsNotExist(err) {
			s.log.Warn("queue: removing an old spare segment", "path", p, "err", err)
		}
	}
}

// spareIsReady reports whether spare.log is there to be taken.
func (s *LogStore) spareIsReady() bool {
	s.spareMu.Lock()
	defer s.spareMu.Unlock()
	return s.spareReady
}

// spareTakable reports whether takeSpare would take the spare now.
func (s *LogStore) spareTakable() bool {
	s.mu.Lock() // for spareFrom's readers
	defer s.mu.Unlock()
	s.spareMu.Lock()
	defer s.spareMu.Unlock()
	return s.takableLocked()
}

// takableLocked: a spare is ready and no reader of its earlier life still
// reads it. mu and spareMu are held.
func (s *LogStore) takableLocked() bool {
	return s.spareReady && (s.spareFrom == nil || s.spareFrom.readers == 0)
}

// takeSpare renames the spare to path, if it is takable.
func (s *LogStore) takeSpare(path string) bool {
	s.mu.Lock() // for spareFrom's readers
	defer s.mu.Unlock()
	s.spareMu.Lock()
	defer s.spareMu.Unlock()
	if !s.takableLocked() {
		return false
	}
	s.spareReady, s.spareFrom = false, nil
	if err := os.Rename(s.sparePath(), path); err != nil {
		s.log.Warn("queue: cannot use the spare segment", "err", err)
		os.Remove(s.sparePath())
		return false
	}
	return true
}

// recycle turns a dead segment's file into the spare, if none is ready and
// the file may be reused. A body of it may still be read (a delivery
// records its outcome before it closes the body): the spare is then taken
// only once that is done (takeSpare). Waiting for the readers here, the
// segment was deleted nearly every time, and every other segment started
// as an empty file while a spare was written full of zeros. Called by the
// committer, under mu.
func (s *LogStore) recycle(seg *segment) bool {
	if !seg.owned || seg.size < s.segMax {
		return false
	}
	s.spareMu.Lock()
	defer s.spareMu.Unlock()
	if s.spareReady {
		return false
	}
	if err := os.Rename(seg.path, s.sparePath()); err != nil {
		s.log.Warn("queue: recycling segment", "path", seg.path, "err", err)
		return false
	}
	s.spareReady, s.spareFrom = true, seg
	return true
}

// kickPreparer asks for a spare to be prepared.
func (s *LogStore) kickPreparer() {
	select {
	case s.prepKick <- struct{}{}:
	default:
	}
}

// prepareSpares runs until Close, preparing a spare whenever kicked.
func (s *LogStore) prepareSpares() {
	defer close(s.prepDone)
	for {
		select {
		case <-s.prepQuit:
			return
		case <-s.prepKick:
		}
		if err := s.prepareSpare(); err != nil {
			s.log.Warn("queue: preparing a spare segment (the queue works without one)", "err", err)
		}
	}
}

// spareRoomFactor: a spare is prepared only when the file system has room
// for this many segments.
const spareRoomFactor = 4

// roomFor reports whether the file system holding the queue has n bytes
// free for mailhop's user (true when it cannot tell).
func (s *LogStore) roomFor(n int64) bool {
	if s.freeSpace != nil {
		return s.freeSpace() >= n
	}
	var st syscall.Statfs_t
	if err := syscall.Statfs(s.dir, &st); err != nil {
		return true
	}
	return int64(st.Bavail)*int64(st.Bsize) >= n
}

// prepareSpare writes segMax zero bytes to spare.tmp, syncs it, and makes
// it the spare unless one was recycled meanwhile.
func (s *LogStore) prepareSpare() error {
	if s.spareIsReady() {
		return nil
	}
	// A spare is an optimisation: not at the price of filling a small or
	// nearly full disk with zeros, even for a moment.
	if !s.roomFor(spareRoomFactor * s.segMax) {
		return nil
	}
	tmp := s.spareTmpPath()
	f, err := os.OpenFile(tmp, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, 0o600)
	if err != nil {
		return fmt.Errorf("queue: %w", err)
	}
	fail := func(err error) error {
		f.Close()
		os.Remove(tmp)
		return err
	}
	zero := make([]byte, 1<<20)
	for left := s.segMax; left > 0; {
		select {
		case <-s.prepQuit:
			return fail(nil)
		default:
		}
		n := min(int64(len(zero)), left)
		if _, err := f.Write(zero[:n]); err != nil {
			return fail(fmt.Errorf("queue: writing %s: %w", tmp, err))
		}
		left -= n
	}
	if err := f.Sync(); err != nil {
		return fail(fmt.Errorf("queue: syncing %s: %w", tmp, err))
	}
	if err := f.Close(); err != nil {
		os.Remove(tmp)
		return fmt.Errorf("queue: %w", err)
	}
	s.spareMu.Lock()
	defer s.spareMu.Unlock()
	if s.spareReady {
		os.Remove(tmp)
		return nil
	}
	if err := os.Rename(tmp, s.sparePath()); err != nil {
		os.Remove(tmp)
		return fmt.Errorf("queue: %w", err)
	}
	s.spareReady, s.spareFrom = true, nil
	return nil
}

// stopPreparer ends prepareSpares and removes the spare files.
func (s *LogStore) stopPreparer() {
	close(s.prepQuit)
	<-s.prepDone
	s.removeSpares()
}
