package queue

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"hash/crc32"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
)

// recover replays every segment, oldest first. Damage never stops a start:
// a record that fails its checksum is skipped (its bytes copied to
// quarantine/), and an incomplete record at the end of a segment, the trace
// of a crash in mid-write, was never acknowledged and is ignored. Messages
// that dropped records are known to have taken are logged by queue ID
// (reportOrphans).
func (s *LogStore) recover() error {
	entries, err := os.ReadDir(s.dir)
	if err != nil {
		return fmt.Errorf("queue: %w", err)
	}
	var seqs []uint64
	for _, e := range entries {
		name := e.Name()
		if !strings.HasPrefix(name, "seg-") || !strings.HasSuffix(name, ".log") {
			continue
		}
		seq, err := strconv.ParseUint(strings.TrimSuffix(strings.TrimPrefix(name, "seg-"), ".log"), 16, 64)
		if err != nil {
			s.log.Warn("queue: ignoring unexpected file", "name", name)
			continue
		}
		seqs = append(seqs, seq)
	}
	slices.Sort(seqs)
	if err := s.loadKey(seqs); err != nil {
		return err
	}
	for _, seq := range seqs {
		seg := &segment{seq: seq, path: s.segPath(seq)}
		data, err := os.ReadFile(seg.path)
		if err != nil {
			s.damaged = true
			s.log.Error("queue: unreadable segment moved aside", "path", seg.path, "err", err)
			s.moveAside(seg.path)
			continue
		}
		seg.size = int64(len(data))
		s.segs = append(s.segs, seg)
		s.bySeq[seq] = seg
		s.replay(seg, data)
	}
	s.reportOrphans()
	s.checkBodies()
	s.deleteDead()
	if s.key == 0 && len(s.segs) == 0 && !s.readOnly {
		// A queue written before keys (logkey.go) kept key 0, and so went
		// without their protection, for as long as it lived. With no
		// segment left, no record salted with it is either: a key now.
		// Only a protection, not a condition of the start: where the key
		// file cannot be written (a full disk) the queue goes on with the
		// key the file holds, and a later start tries again.
		k, err := randomKey()
		if err == nil {
			err = s.setKey(k)
		}
		if err != nil {
			s.key = 0
			if fk, ok := readKeyFile(s.dir); ok && fk == k {
				s.key = k // written; only the directory's sync failed
			}
			s.log.Warn("queue: the queue, written before queue keys, is empty but could not be given a key; it keeps the key in its key file until a later start",
				"path", filepath.Join(s.dir, keyName), "key", fmt.Sprintf("%08x", s.key), "err", err)
		} else {
			s.log.Info("queue: the queue, written before queue keys, is empty: it has a key now", "path", filepath.Join(s.dir, keyName))
		}
	}
	return nil
}

// reportOrphans names the messages recovery lost by their queue IDs, where
// later records name them: a state or hold record of a message with no
// message record before or after it (nor a done record: it may have left
// the queue) is a message whose record was in a damaged or cut part of the
// queue. Only when records were dropped: in an undamaged log such a record
// is one written after the message's done record (an attempt's outcome and
// `queue delete` at once), the done record in a segment deleted since —
// unless the message's body file is still there, which the done record
// removed: then records are missing although every segment read cleanly
// (one cut short exactly at the end of a record).
// Each is logged once, as a done record is written for it.
func (s *LogStore) reportOrphans() {
	orphans := s.orphans
	s.orphans = nil
	if len(orphans) == 0 {
		return
	}
	if !s.damaged && !s.cut {
		id := s.orphanWithBody(orphans)
		if id == "" {
			return
		}
		s.dropDone(orphans)
		if id = s.orphanWithBody(orphans); id == "" {
			return
		}
		s.cut = true
		s.log.Error("queue: records are missing from a segment (cut short at the end of a record, or a segment removed): a later record names a message whose body file is there and whose message record is not",
			"queue_id", id, "segment", orphans[id])
	} else {
		s.dropDone(orphans)
	}
	ids := make([]string, 0, len(orphans))
	for id := range orphans {
		ids = append(ids, id)
	}
	slices.Sort(ids)
	for _, id := range ids {
		// Its body file, if any, is all that is left of it: kept.
		s.damaged = true
		s.log.Error("queue: message lost: its message record was in a damaged or cut part of the queue; a later record names it",
			"queue_id", id, "segment", orphans[id])
		s.lost = append(s.lost, id)
	}
}

// orphanWithBody returns an orphan whose body file exists, or "".
func (s *LogStore) orphanWithBody(orphans map[string]string) string {
	for id := range orphans {
		if fi, err := os.Stat(s.bodyPath(id)); err == nil && fi.Mode().IsRegular() {
			return id
		}
	}
	return ""
}

// dropDone removes from orphans the messages that a done record names,
// reading the segments again (only after damage, so rarely).
func (s *LogStore) dropDone(orphans map[string]string) {
	var walk func(r *parsedRecord)
	walk = func(r *parsedRecord) {
		switch r.typ {
		case recDone:
			delete(orphans, r.id)
		case recGroup:
			for _, in := range r.group {
				walk(in)
			}
		}
	}
	for _, seg := range s.segs {
		data, err := os.ReadFile(seg.path)
		if err != nil {
			continue
		}
		for off := 0; off < len(data); {
			n, st := recordAt(data, off, seg.seq, s.key)
			if st != frameOK {
				if off = nextRecord(data, off+1, seg.seq, s.key); off < 0 {
					break
				}
				continue
			}
			if r, err := parsePayload(data[off+headerSize], data[off+headerSize+1:off+headerSize+n]); err == nil {
				walk(r)
			}
			off += headerSize + n
		}
	}
}

// replay applies the records of one segment.
func (s *LogStore) replay(seg *segment, data []byte) {
	off := 0
	for off < len(data) {
		n, st := recordAt(data, off, seg.seq, s.key)
		if st != frameOK {
			next := nextRecord(data, off+1, seg.seq, s.key)
			if next < 0 {
				switch {
				case st == frameStale || staleAfter(data, off, seg.seq, s.key):
					// The rest is a recycled file's earlier life (its
					// first bytes overwritten by this one's records).
				case framesFollow(data, off):
					// Whole frames, one after the other, that fail their
					// checksum: no write cut short by a crash of the
					// process leaves a frame behind the cut one. They are
					// records of another queue (a segment copied in, its
					// key not this one's) or of another segment number,
					// perhaps acknowledged mail — or, after a power loss,
					// a batch whose pages reached the disk out of order
					// (never acknowledged: its fsync did not return).
					s.damaged = true
					s.quarantine(fmt.Sprintf("seg-%016x-%d.bad", seg.seq, off), data[off:])
					s.log.Error("queue: records this queue did not write (a segment of another queue or renamed, a key file that is not this queue's, or a write torn by a power loss) moved to quarantine: messages recorded there are not queued",
						"segment", seg.path, "offset", off, "bytes", len(data)-off)
				case !allZero(data[off:]):
					s.cut = true
					s.log.Warn("queue: ignoring incomplete record at end of segment (a write cut short by a crash or a full disk; it was never acknowledged)",
						"segment", seg.path, "offset", off, "bytes", len(data)-off)
				case int64(len(data)) < s.segMax:
					// Zeros end a segment that started from a spare; a
					// segment that started empty is only ever appended to,
					// so zeros there are records wiped by damage.
					s.damaged = true
					s.log.Error("queue: segment ends in zeros where records were written (damage, or a power loss before the data reached the disk): messages recorded there are lost",
						"segment", seg.path, "offset", off, "bytes", len(data)-off)
				}
				return
			}
			if st == frameStale {
				// Records of this segment after old ones: only a write
				// that never completed (and was never acknowledged)
				// leaves that; the old records are no one's.
				s.log.Warn("queue: skipping old records of a recycled segment", "segment", seg.path, "offset", off, "bytes", next-off)
			} else {
				s.damaged = true
				s.quarantine(fmt.Sprintf("seg-%016x-%d.bad", seg.seq, off), data[off:next])
				s.log.Error("queue: damaged record moved to quarantine", "segment", seg.path, "offset", off, "bytes", next-off)
			}
			off = next
			continue
		}
		body := data[off+headerSize : off+headerSize+n]
		rec, err := parsePayload(body[0], body[1:])
		if err != nil {
			s.damaged = true
			s.quarantine(fmt.Sprintf("seg-%016x-%d.bad", seg.seq, off), data[off:off+headerSize+n])
			s.log.Error("queue: undecodable record moved to quarantine", "segment", seg.path, "offset", off, "err", err)
		} else {
			s.replayRecord(seg, int64(off+headerSize+1), rec)
		}
		off += headerSize + n
	}
}

// What recordAt found.
const (
	frameOK    = iota // a record of this segment
	frameBad          // no record, or a damaged one
	frameStale        // a whole record of an earlier life of a recycled file
)

// recordAt checks the frame at off in segment seq of a queue with key and
// returns its length (type+payload) and what it is.
func recordAt(data []byte, off int, seq uint64, key uint32) (int, int) {
	n := frameLen(data, off)
	if n == 0 {
		return 0, frameBad
	}
	h := data[off:]
	salt := crc32.Checksum(h[headerSize:headerSize+n], crcTable) ^ binary.LittleEndian.Uint32(h[8:])
	st := saltKind(salt, seq, key)
	if st == frameBad {
		return 0, frameBad
	}
	return n, st
}

// saltKind tells what a whole frame salted with salt is in segment seq of
// a queue with key: a record of this segment, one of an earlier life of the
// file (a smaller segment number), or neither.
func saltKind(salt uint32, seq uint64, key uint32) int {
	switch {
	case salt == segSalt(seq, key) || (key == 0 && salt == 0): // 0: written before salting
		return frameOK
	case saltSeq(salt, key) < uint32(seq):
		return frameStale
	}
	return frameBad
}

// nextRecord finds the next record of segment seq at or after off, or -1.
func nextRecord(data []byte, off int, seq uint64, key uint32) int {
	return findFrame(data, off, seq, key, frameOK)
}

// findFrame finds the first frame at or after off that recordAt says is
// want (frameOK or frameStale), or -1.
func findFrame(data []byte, off int, seq uint64, key uint32, want int) int {
	var magic [4]byte
	binary.LittleEndian.PutUint32(magic[:], recordMagic)
	for off < len(data) {
		i := bytes.Index(data[off:], magic[:])
		if i < 0 {
			return -1
		}
		if _, st := recordAt(data, off+i, seq, key); st == want {
			return off + i
		}
		off += i + 1
	}
	return -1
}

// staleAfter reports whether a record of an earlier life of the file
// starts at or after off.
func staleAfter(data []byte, off int, seq uint64, key uint32) bool {
	return findFrame(data, off, seq, key, frameStale) >= 0
}

// framesFollow reports whether a whole frame (magic, and a length that
// fits) starts at off and another one right after it.
func framesFollow(data []byte, off int) bool {
	n := frameLen(data, off)
	return n > 0 && frameLen(data, off+headerSize+n) > 0
}

// frameLen returns the length of the frame at off when its magic is there
// and its length fits in data, else 0. The checksum is not checked.
func frameLen(data []byte, off int) int {
	if len(data)-off < headerSize+1 || binary.LittleEndian.Uint32(data[off:]) != recordMagic {
		return 0
	}
	n := int(binary.LittleEndian.Uint32(data[off+4:]))
	if n < 1 || n > maxRecordLen || n > len(data)-off-headerSize {
		return 0
	}
	return n
}

func allZero(b []byte) bool {
	for _, c := range b {
		if c != 0 {
			return false
		}
	}
	return true
}

// replayRecord applies one record read back at start. payloadOff is where
// the record's payload starts in the segment.
func (s *LogStore) replayRecord(seg *segment, payloadOff int64, r *parsedRecord) {
	switch r.typ {
	case recMessage:
		m, ok := s.msgs[r.env.ID]
		if !ok {
			m = &storedMsg{}
			s.msgs[r.env.ID] = m
		}
		delete(s.orphans, r.env.ID)
		m.env, m.file = r.env, r.where == bodyFile
		if !m.file {
			m.seq, m.boff = seg.seq, payloadOff+int64(r.boff)
		}
		s.touch(m, seg)
	case recState:
		if m, ok := s.msgs[r.st.ID]; ok {
			r.st.apply(m.env)
			s.touch(m, seg)
		} else {
			s.orphan(r.st.ID, seg)
		}
	case recHold:
		if m, ok := s.msgs[r.id]; ok {
			m.env.Held = r.held
			s.touch(m, seg)
		} else {
			s.orphan(r.id, seg)
		}
	case recDone:
		delete(s.orphans, r.id)
		if m, ok := s.msgs[r.id]; ok {
			s.drop(r.id, m)
		}
	case recGroup:
		for i, in := range r.group {
			s.replayRecord(seg, payloadOff+int64(r.offs[i]), in)
		}
	}
}

// orphan notes that a record in seg names id, a message not read (yet).
// Most are not lost: the message's record was in a segment deleted since,
// and a copy of it (compaction's snapshot) or its done record follows.
func (s *LogStore) orphan(id string, seg *segment) {
	if _, ok := s.orphans[id]; ok {
		return
	}
	if s.orphans == nil {
		s.orphans = make(map[string]string)
	}
	s.orphans[id] = seg.path
}

// checkBodies moves aside messages whose body file is missing or short, and
// removes body files that no message refers to (left by a crash between the
// body's fsync and its record's). When recovery found damage, such a body
// may be all that is left of a message that was acknowledged: it is moved
// to quarantine instead.
func (s *LogStore) checkBodies() {
	if s.readOnly {
		return // reading only: nothing is moved or removed
	}
	for id, m := range s.msgs {
		if !m.file {
			continue
		}
		fi, err := os.Stat(s.bodyPath(id))
		switch {
		case err != nil:
		case !fi.Mode().IsRegular():
			err = fmt.Errorf("%s is not a regular file", s.bodyPath(id))
		case fi.Size() != m.env.Size:
			err = fmt.Errorf("%s has %d bytes, its record says %d", s.bodyPath(id), fi.Size(), m.env.Size)
		default:
			continue
		}
		s.log.Error("queue: message without its body moved to quarantine", "queue_id", id, "err", err)
		if js, err := json.MarshalIndent(m.env, "", "  "); err == nil {
			s.quarantine(id+".envelope.json", js)
		}
		s.moveAside(s.bodyPath(id))
		m.file = false
		s.drop(id, m) // a later start finds it again only if no done record is written; Open writes one
		s.lost = append(s.lost, id)
	}
	entries, _ := os.ReadDir(filepath.Join(s.dir, "bodies"))
	for _, e := range entries {
		if m, ok := s.msgs[e.Name()]; !ok || !m.file {
			path := filepath.Join(s.dir, "bodies", e.Name())
			if s.damaged {
				s.log.Error("queue: body without a message record moved to quarantine (its record was in a damaged part of the queue)", "queue_id", e.Name())
				s.moveAside(path)
				continue
			}
			os.Remove(path)
		}
	}
}

// quarantine writes data to quarantine/name.
func (s *LogStore) quarantine(name string, data []byte) {
	if s.readOnly {
		return
	}
	if err := os.WriteFile(filepath.Join(s.dir, "quarantine", name), data, 0o600); err != nil {
		s.log.Error("queue: cannot write to quarantine", "name", name, "err", err)
	}
}

// moveAside renames path into quarantine/.
func (s *LogStore) moveAside(path string) {
	if s.readOnly {
		return
	}
	if _, err := os.Stat(path); err != nil {
		return
	}
	if err := os.Rename(path, filepath.Join(s.dir, "quarantine", filepath.Base(path))); err != nil {
		s.log.Error("queue: cannot move aside", "path", path, "err", err)
	}
}
