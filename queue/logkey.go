package queue

import (
	"crypto/rand"
	"encoding/binary"
	"fmt"
	"hash/crc32"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// The queue's key.
//
// Recovery looks for records at offsets it did not reach by reading record
// after record: after a damaged record, and where a recycled file's earlier
// life begins (logspare.go). Such a search also passes over message bodies,
// which clients write, and a body can hold bytes framed like a record. Were
// the salt a function of the segment number alone, a client could plant a
// frame that passes for a record of a later segment — a message with an
// envelope of its choosing — to be replayed by the start after a crash. So
// the salt also carries a random 32-bit key kept in the file "key": a frame
// written without it passes with odds of one in 2^32.
//
// The key is made with the queue. Should the file go missing or be damaged,
// it is found again from the records at the start of the segments, where no
// client's bytes can be (the first record of a segment is the relay's own):
// the key most of them agree on. A queue written before keys has key 0,
// which that finds too.
//
// A file that holds a key of the right form that fits none of those
// records (a bit flipped, or a key file from another queue) is not believed
// when two of them agree on another key: with it every record would look
// damaged and every message would be lost with its body.

const keyName = "key"

// loadKey sets s.key: from the key file, else from the segments seqs, else
// (a new queue) a random one. A store that may write keeps the file.
func (s *LogStore) loadKey(seqs []uint64) error {
	starts := s.segmentStarts(seqs)
	path := filepath.Join(s.dir, keyName)
	data, err := os.ReadFile(path)
	if err == nil {
		k, perr := strconv.ParseUint(strings.TrimSpace(string(data)), 16, 32)
		if perr != nil {
			s.log.Error("queue: key file damaged; finding the key from the segments", "path", path)
		} else if found, ok := keyConfirmed(starts); ok && !keyFits(starts, uint32(k)) {
			// A key of the right form that no segment was written with
			// (a damaged or foreign file) made every record look damaged,
			// and their messages' bodies orphans.
			s.log.Error("queue: key file does not match the segments; using the key found in them", "path", path)
			return s.keepFoundKey(found)
		} else {
			s.key = uint32(k)
			return nil
		}
	} else if !os.IsNotExist(err) {
		return fmt.Errorf("queue: reading the key: %w", err)
	}
	if k, ok := keyFromSegments(starts); ok {
		if k == 0 {
			// Not damage: a queue written by a mailhop older than keys.
			s.log.Info("queue: no key file: a queue written before queue keys; it keeps key 0 until it is empty", "path", path)
		} else {
			s.log.Warn("queue: key file missing or damaged; using the key the segments were written with", "path", path)
		}
		return s.keepFoundKey(k)
	}
	if len(seqs) > 0 {
		s.log.Error("queue: no segment starts with a readable record; their records cannot be told from planted ones and are skipped")
		return s.keepFoundKey(0)
	}
	k, err := randomKey()
	if err != nil {
		return err
	}
	return s.setKey(k)
}

// keepFoundKey makes key, found from the segments, the queue's and keeps it
// in the key file. A file that cannot be written (a full disk) does not
// stop the start: the segments give the key again at the next one. It
// stopped it, at the first start after an upgrade from a build before
// keys, with the queue's mail in it.
func (s *LogStore) keepFoundKey(key uint32) error {
	if err := s.setKey(key); err != nil {
		s.log.Warn("queue: cannot keep the queue's key in its key file; the next start finds it in the segments again",
			"path", filepath.Join(s.dir, keyName), "err", err)
	}
	return nil
}

// randomKey makes a new queue's key.
func randomKey() (uint32, error) {
	var b [4]byte
	if _, err := io.ReadFull(rand.Reader, b[:]); err != nil {
		return 0, fmt.Errorf("queue: making the key: %w", err)
	}
	return binary.LittleEndian.Uint32(b[:]), nil
}

// setKey makes key the queue's and, unless read-only, keeps it in the file.
func (s *LogStore) setKey(key uint32) error {
	s.key = key
	if s.readOnly {
		return nil
	}
	return writeKey(s.dir, key)
}

// segStart is the start of a segment file: the salts of its first whole
// records (at most two), always mailhop's own.
type segStart struct {
	seq   uint64
	salts []uint32
}

// segmentStarts reads the start of every segment once.
func (s *LogStore) segmentStarts(seqs []uint64) []segStart {
	var starts []segStart
	for _, seq := range seqs {
		if salts := startSalts(s.segPath(seq), 2); len(salts) > 0 {
			starts = append(starts, segStart{seq, salts})
		}
	}
	return starts
}

// keyFits reports whether key can be the queue's: some segment's first
// record was written with it (in this life of the file or an earlier one),
// or no segment starts with a whole record.
func keyFits(starts []segStart, key uint32) bool {
	for _, st := range starts {
		if saltKind(st.salts[0], st.seq, key) != frameBad {
			return true
		}
	}
	return len(starts) == 0
}

// keyConfirmed returns a key that two records at the starts of the segments
// agree on: the first records of two segments, or the first two of one. A
// damaged first record gives a key no other record agrees with.
func keyConfirmed(starts []segStart) (uint32, bool) {
	votes := map[uint32]int{}
	for _, st := range starts {
		k := st.salts[0] ^ segSalt(st.seq, 0)
		if len(st.salts) == 2 && st.salts[1] == segSalt(st.seq, k) {
			return k, true
		}
		if votes[k]++; votes[k] == 2 {
			return k, true
		}
	}
	return 0, false
}

// keyFromSegments returns the key that fits the first records of the most
// segments: written with it, or (a recycled file whose first write never
// reached it, the crash coming between taking the spare and writing) with
// it and an earlier segment number. Such an old first record votes for a
// key of its own, with which the file's earlier life would be replayed as
// current (delivered messages back) and the other segments' records lost;
// the queue's key fits it as old. Ties go to the key most records were
// written with, then to the smaller.
func keyFromSegments(starts []segStart) (uint32, bool) {
	best, bestFits, bestVotes := uint32(0), -1, 0
	for _, c := range starts {
		k := c.salts[0] ^ segSalt(c.seq, 0)
		fits, votes := 0, 0
		for _, f := range starts {
			switch saltKind(f.salts[0], f.seq, k) {
			case frameOK:
				fits++
				votes++
			case frameStale:
				fits++
			}
		}
		if fits > bestFits || fits == bestFits && (votes > bestVotes || votes == bestVotes && k < best) {
			best, bestFits, bestVotes = k, fits, votes
		}
	}
	return best, bestFits > 0
}

// startSalts returns the salts of the first max whole records of the
// segment file at path (fewer where they end).
func startSalts(path string, max int) []uint32 {
	f, err := os.Open(path)
	if err != nil {
		return nil
	}
	defer f.Close()
	var salts []uint32
	for len(salts) < max {
		var h [headerSize]byte
		if _, err := io.ReadFull(f, h[:]); err != nil || binary.LittleEndian.Uint32(h[:]) != recordMagic {
			break
		}
		n := binary.LittleEndian.Uint32(h[4:])
		if n < 1 || n > maxRecordLen {
			break
		}
		crc := crc32.New(crcTable)
		if m, err := io.CopyN(crc, f, int64(n)); err != nil || m != int64(n) {
			break
		}
		salts = append(salts, crc.Sum32()^binary.LittleEndian.Uint32(h[8:]))
	}
	return salts
}

// readKeyFile returns the key the key file in dir holds, if it holds one.
func readKeyFile(dir string) (uint32, bool) {
	data, err := os.ReadFile(filepath.Join(dir, keyName))
	if err != nil {
		return 0, false
	}
	k, err := strconv.ParseUint(strings.TrimSpace(string(data)), 16, 32)
	return uint32(k), err == nil
}

// writeKey stores key in dir durably (a new file renamed into place).
func writeKey(dir string, key uint32) error {
	tmp := filepath.Join(dir, keyName+".tmp")
	f, err := os.OpenFile(tmp, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, 0o600)
	if err != nil {
		return fmt.Errorf("queue: writing the key: %w", err)
	}
	_, err = fmt.Fprintf(f, "%08x\n", key)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, filepath.Join(dir, keyName))
	}
	if err == nil {
		err = syncDir(dir)
	}
	if err != nil {
		os.Remove(tmp)
		return fmt.Errorf("queue: writing the key: %w", err)
	}
	return nil
}
