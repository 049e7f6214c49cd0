package queue

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"math"
	"time"
)

// On-disk record framing, in every segment file:
//
//	magic  uint32  recordMagic, so a reader can find the next record after damage
//	length uint32  length of type+payload
//	crc    uint32  CRC-32C of type+payload, XOR segSalt(segment number, queue key)
//	type   uint8
//	payload
//
// All integers in the frame are little-endian; the payload uses varints.
// The salt lets recovery tell the records of a recycled segment file's
// earlier life from its new ones (logspare.go); records written before
// salting (salt 0) are still read.
const (
	recordMagic  = 0x314c484d // "MHL1" little-endian
	headerSize   = 12
	maxRecordLen = 256 << 20
)

// Record types.
const (
	recMessage byte = 1 // a whole message: envelope, schedule, body location (new, or a compaction snapshot)
	recState   byte = 2 // the outcome of an attempt: schedule fields and changed recipients
	recHold    byte = 3 // hold flag set or cleared
	recDone    byte = 4 // the message left the queue
	// recGroup holds several records that must be kept all or none: new
	// messages (reports) and the state or done record of the attempt that
	// called for them (LogStore.UpdateWithReports). Its payload is a
	// sequence of entries, type u8 | length u32 little-endian | payload,
	// applied in order; no group is inside another. Being one frame under
	// one checksum, a write cut anywhere keeps none of it.
	recGroup byte = 5
)

// groupEntryHeader is the size of an entry's type and length in a recGroup.
const groupEntryHeader = 5

// Body locations in a recMessage.
const (
	bodyInline byte = 1 // the body follows the envelope in the same record
	bodyFile   byte = 2 // the body is in bodies/ID
)

var crcTable = crc32.MakeTable(crc32.Castagnoli)

// errCorrupt marks a record that failed its checks.
var errCorrupt = errors.New("corrupt record")

// beginRecord appends a frame header with a placeholder length and CRC.
func beginRecord(b []byte, typ byte) []byte {
	b = binary.LittleEndian.AppendUint32(b, recordMagic)
	b = append(b, 0, 0, 0, 0, 0, 0, 0, 0, typ)
	return b
}

// finishRecord fills in the length and CRC of the record that starts at b[start:].
func finishRecord(b []byte, start int) {
	body := b[start+headerSize:]
	binary.LittleEndian.PutUint32(b[start+4:], uint32(len(body)))
	binary.LittleEndian.PutUint32(b[start+8:], crc32.Checksum(body, crcTable))
}

// saltMul is odd, so segSalt is one-to-one on the low 32 bits of seq and
// segSalt(seq) is 0 only for seq 0 (never a segment number: they start
// at 1); saltInv is its inverse modulo 2^32.
const saltMul uint32 = 0x9e3779b1

var saltInv = func() uint32 {
	x := saltMul // Newton's iteration: each step doubles the correct bits
	for range 5 {
		x *= 2 - saltMul*x
	}
	return x
}()

// segSalt is what the CRC of every record written to segment seq of a
// queue with key (logkey.go) is XORed with.
func segSalt(seq uint64, key uint32) uint32 { return uint32(seq)*saltMul ^ key }

// saltSeq returns the low 32 bits of the segment number a salt of a queue
// with key was made from.
func saltSeq(salt, key uint32) uint32 { return (salt ^ key) * saltInv }

// saltRecord salts the CRC of the record that starts at b[0].
func saltRecord(b []byte, salt uint32) {
	binary.LittleEndian.PutUint32(b[8:], binary.LittleEndian.Uint32(b[8:])^salt)
}

// encoder appends varint-framed values.
type encoder struct{ b []byte }

func (e *encoder) uvarint(v uint64) { e.b = binary.AppendUvarint(e.b, v) }
func (e *encoder) varint(v int64)   { e.b = binary.AppendVarint(e.b, v) }
func (e *encoder) byte1(v byte)     { e.b = append(e.b, v) }
func (e *encoder) str(s string)     { e.uvarint(uint64(len(s))); e.b = append(e.b, s...) }
func (e *encoder) time(t time.Time) {
	if t.IsZero() {
		e.varint(0)
		return
	}
	if t.After(maxRecordTime) {
		t = maxRecordTime // a later time's UnixNano wraps into the past
	}
	e.varint(t.UnixNano())
}

// maxRecordTime is the latest time a record holds (nanoseconds since 1970
// in an int64, in April 2262); a later one, such as a next attempt a
// retry interval of centuries away, is stored as it.
var maxRecordTime = time.Unix(0, math.MaxInt64)

func (e *encoder) bool(v bool) {
	if v {
		e.byte1(1)
	} else {
		e.byte1(0)
	}
}

// decoder reads what encoder wrote; the first error sticks.
type decoder struct {
	b   []byte
	err error
}

func (d *decoder) fail() {
	if d.err == nil {
		d.err = errCorrupt
	}
}

func (d *decoder) uvarint() uint64 {
	if d.err != nil {
		return 0
	}
	v, n := binary.Uvarint(d.b)
	if n <= 0 {
		d.fail()
		return 0
	}
	d.b = d.b[n:]
	return v
}

// varint undoes binary.AppendVarint: a zig-zag encoded uvarint.
func (d *decoder) varint() int64 {
	ux := d.uvarint()
	x := int64(ux >> 1)
	if ux&1 != 0 {
		x = ^x
	}
	return x
}

func (d *decoder) byte1() byte {
	if d.err != nil || len(d.b) < 1 {
		d.fail()
		return 0
	}
	v := d.b[0]
	d.b = d.b[1:]
	return v
}

func (d *decoder) bool() bool { return d.byte1() != 0 }

func (d *decoder) str() string {
	n := d.uvarint()
	if d.err != nil || n > uint64(len(d.b)) {
		d.fail()
		return ""
	}
	s := string(d.b[:n])
	d.b = d.b[n:]
	return s
}

// internStr reads a string, sharing the copy with an equal one read before.
func (d *decoder) internStr(seen map[string]string) string {
	n := d.uvarint()
	if d.err != nil || n > uint64(len(d.b)) {
		d.fail()
		return ""
	}
	raw := d.b[:n]
	d.b = d.b[n:]
	if s, ok := seen[string(raw)]; ok {
		return s
	}
	s := string(raw)
	seen[s] = s
	return s
}

func (d *decoder) time() time.Time {
	v := d.varint()
	if v == 0 {
		return time.Time{}
	}
	return time.Unix(0, v)
}

// count reads a length that must fit in what is left (each element takes at
// least min bytes), so corrupt input cannot make us allocate without bound.
func (d *decoder) count(min int) int {
	n := d.uvarint()
	if d.err != nil || n > uint64(len(d.b)/min) {
		d.fail()
		return 0
	}
	return int(n)
}

// encodeEnvelope appends every field of env.
func (e *encoder) envelope(env *Envelope) {
	e.str(env.ID)
	e.str(env.From)
	e.time(env.Arrived)
	e.str(env.User)
	e.str(env.ClientAddr)
	e.str(env.ClientHelo)
	e.str(env.BodyType)
	e.bool(env.SMTPUTF8)
	e.bool(env.RequireTLS)
	e.str(env.Ret)
	e.str(env.EnvID)
	e.varint(env.Size)
	e.uvarint(uint64(env.Attempts))
	e.time(env.NextAttempt)
	e.str(env.LastError)
	e.bool(env.Held)
	e.bool(env.DelayWarned)
	e.uvarint(uint64(len(env.Recipients)))
	for i := range env.Recipients {
		r := &env.Recipients[i]
		e.str(r.Address)
		e.str(r.ORCPT)
		e.byte1(byte(r.Notify))
		e.byte1(byte(r.State))
		e.uvarint(uint64(r.Code))
		e.str(r.Reply)
	}
}

func (d *decoder) envelope() *Envelope {
	env := &Envelope{}
	env.ID = d.str()
	env.From = d.str()
	env.Arrived = d.time()
	env.User = d.str()
	env.ClientAddr = d.str()
	env.ClientHelo = d.str()
	env.BodyType = d.str()
	env.SMTPUTF8 = d.bool()
	env.RequireTLS = d.bool()
	env.Ret = d.str()
	env.EnvID = d.str()
	env.Size = d.varint()
	env.Attempts = int(d.uvarint())
	env.NextAttempt = d.time()
	env.LastError = d.str()
	env.Held = d.bool()
	env.DelayWarned = d.bool()
	n := d.count(5)
	env.Recipients = make([]Recipient, n)
	replies := map[string]string{}
	for i := 0; i < n && d.err == nil; i++ {
		r := &env.Recipients[i]
		r.Address = d.str()
		r.ORCPT = d.str()
		r.Notify = Notify(d.byte1())
		r.State = RcptState(d.byte1())
		r.Code = int(d.uvarint())
		r.Reply = d.internStr(replies)
	}
	if d.err == nil && (env.ID == "" || env.Size < 0) {
		d.fail()
	}
	return env
}

func (e *encoder) state(s *StateUpdate) {
	e.str(s.ID)
	e.uvarint(uint64(s.Attempts))
	e.time(s.NextAttempt)
	e.str(s.LastError)
	e.bool(s.DelayWarned)
	e.uvarint(uint64(len(s.Rcpts)))
	for _, r := range s.Rcpts {
		e.uvarint(uint64(r.Index))
		e.byte1(byte(r.State))
		e.uvarint(uint64(r.Code))
		e.str(r.Reply)
	}
}

func (d *decoder) state() *StateUpdate {
	s := &StateUpdate{}
	s.ID = d.str()
	s.Attempts = int(d.uvarint())
	s.NextAttempt = d.time()
	s.LastError = d.str()
	s.DelayWarned = d.bool()
	n := d.count(4)
	s.Rcpts = make([]RcptUpdate, n)
	replies := map[string]string{} // one attempt often gives many recipients the same reply
	for i := 0; i < n && d.err == nil; i++ {
		s.Rcpts[i] = RcptUpdate{Index: int(d.uvarint()), State: RcptState(d.byte1()), Code: int(d.uvarint()), Reply: d.internStr(replies)}
	}
	return s
}

// parsedRecord is one record read back from a segment.
type parsedRecord struct {
	typ   byte
	env   *Envelope       // recMessage
	where byte            // recMessage: bodyInline or bodyFile
	boff  int             // recMessage inline: offset of the body within the payload
	st    *StateUpdate    // recState
	id    string          // recHold, recDone
	held  bool            // recHold
	group []*parsedRecord // recGroup: its records, in order
	offs  []int           // recGroup: where each one's payload starts within the group's payload
}

// parsePayload decodes the type+payload bytes of one record.
func parsePayload(typ byte, p []byte) (*parsedRecord, error) {
	d := &decoder{b: p}
	r := &parsedRecord{typ: typ}
	switch typ {
	case recMessage:
		// where(1) | body length (8, little-endian) | body, when inline | envelope
		if len(p) < 9 {
			return nil, fmt.Errorf("%w: short message record", errCorrupt)
		}
		r.where = p[0]
		n := binary.LittleEndian.Uint64(p[1:9])
		if n > uint64(len(p)-9) {
			return nil, fmt.Errorf("%w: body length", errCorrupt)
		}
		r.boff = 9
		d.b = p[9+n:]
		r.env = d.envelope()
		if d.err == nil {
			switch r.where {
			case bodyInline:
				if uint64(r.env.Size) != n {
					d.fail()
				}
			case bodyFile:
				if n != 0 {
					d.fail()
				}
			default:
				d.fail()
			}
		}
	case recState:
		r.st = d.state()
	case recHold:
		r.id = d.str()
		r.held = d.bool()
	case recDone:
		r.id = d.str()
	case recGroup:
		for off := 0; off < len(p); {
			if len(p)-off < groupEntryHeader {
				return nil, fmt.Errorf("%w: short group entry", errCorrupt)
			}
			typ, n := p[off], binary.LittleEndian.Uint32(p[off+1:])
			off += groupEntryHeader
			if uint64(n) > uint64(len(p)-off) || typ == recGroup {
				return nil, fmt.Errorf("%w: group entry of type %d", errCorrupt, typ)
			}
			in, err := parsePayload(typ, p[off:off+int(n)])
			if err != nil {
				return nil, fmt.Errorf("group entry %d: %w", len(r.group), err)
			}
			r.group = append(r.group, in)
			r.offs = append(r.offs, off)
			off += int(n)
		}
	default:
		return nil, fmt.Errorf("%w: unknown type %d", errCorrupt, typ)
	}
	if d.err != nil {
		return nil, fmt.Errorf("%w: type %d", d.err, typ)
	}
	return r, nil
}
