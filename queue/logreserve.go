package queue

// The reserve: room kept on the disk for the records that free space.
//
// When the disk fills up, new mail must be refused (451) but the queue must
// still be able to let mail go: a delivered or bounced message, or one an
// operator deletes, is only gone once its "done" record is written, and that
// record needs a few bytes in a segment. Without room for it, a full disk
// could only be fixed by hand. So the store keeps a file of reserveSize
// bytes, "reserve". A record that is not a new message and fails for lack of
// space (ENOSPC, EDQUOT) deletes the reserve and is written again. From then
// on new messages are refused until the reserve can be written again, which
// the next Put tries at most once per reserveRetry; so the room is back
// before any new mail takes space.

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"syscall"
	"time"
)

const (
	reserveName    = "reserve"
	reserveTmpName = "reserve.tmp"
	// reserveSize holds about ten thousand done records.
	reserveSize = 1 << 20
	// reserveRetry spaces the attempts to write the reserve again.
	reserveRetry = time.Second
)

// ErrDiskFull is returned by Put when the disk has no room for the message
// and the reserve kept for deletions. It wraps syscall.ENOSPC.
var ErrDiskFull = fmt.Errorf("queue: the disk is full (no room for new mail and the %d KiB kept for deletions): %w",
	reserveSize>>10, syscall.ENOSPC)

// isNoSpace reports whether err means the file system is full.
func isNoSpace(err error) bool {
	return errors.Is(err, syscall.ENOSPC) || errors.Is(err, syscall.EDQUOT)
}

// makeReserve writes the reserve file if it is not there. A failure leaves
// no partial file behind.
func (s *LogStore) makeReserve() error {
	s.resMu.Lock()
	defer s.resMu.Unlock()
	if s.reserved.Load() {
		return nil
	}
	s.resTried = time.Now()
	path := filepath.Join(s.dir, reserveName)
	if fi, err := os.Stat(path); err == nil && fi.Size() == reserveSize {
		s.reserved.Store(true)
		return nil
	}
	tmp := filepath.Join(s.dir, reserveTmpName)
	f, err := os.OpenFile(tmp, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, 0o600)
	if err != nil {
		return fmt.Errorf("queue: reserve: %w", err)
	}
	_, err = f.Write(make([]byte, reserveSize))
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, path)
	}
	if err == nil {
		err = syncDir(s.dir)
	}
	if err != nil {
		os.Remove(tmp)
		return fmt.Errorf("queue: writing the reserve: %w", err)
	}
	s.reserved.Store(true)
	return nil
}

// haveReserve reports whether the reserve is in place, trying to write it
// again when it is not and the last try is reserveRetry old.
func (s *LogStore) haveReserve() bool {
	if s.reserved.Load() {
		return true
	}
	s.resMu.Lock()
	recent := time.Since(s.resTried) < reserveRetry
	s.resMu.Unlock()
	if recent {
		return false
	}
	if err := s.makeReserve(); err != nil {
		return false
	}
	s.log.Info("queue: the reserve kept for deletions is back; new mail is accepted again")
	return true
}

// useReserve deletes the reserve to make room; it reports whether there was
// one to delete.
func (s *LogStore) useReserve() bool {
	s.resMu.Lock()
	defer s.resMu.Unlock()
	if !s.reserved.Load() {
		return false
	}
	s.reserved.Store(false)
	s.resTried = time.Now()
	if err := os.Remove(filepath.Join(s.dir, reserveName)); err != nil {
		s.log.Error("queue: deleting the reserve", "err", err)
		return false
	}
	s.log.Warn("queue: the disk is full: using the reserve kept for deletions; new mail is refused until there is room again")
	return true
}

// submitFreeing submits a record that is not a new message. When it fails
// for lack of space, the reserve makes room and it is submitted again.
func (s *LogStore) submitFreeing(r *commitReq) error {
	err := s.submit(r)
	if isNoSpace(err) && s.useReserve() {
		err = s.submit(r)
	}
	return err
}
