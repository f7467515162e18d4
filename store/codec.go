package store

import (
	"encoding/binary"
	"fmt"
	"math"
	"unicode/utf8"
)

// Key layout (one Badger database, one leading byte per key space):
//
//	'm' name                          meta: format version, counters, clock
//	'i' seq                           inbox entry
//	'p' seq                           local publish outbox
//	'o' target 0x00 seq               per-target upstream outbox
//	'r' seq                           record
//	'X' stream 0x00 function 0x00     record index: one key per record, by
//	    device 0x00 ts seq            stream, function, device, then time
//	'x' ...                           format 2's four index keys per record
//	                                  (migrated away, see migrate.go)
//	's' function 0x00 key             function state
//	'l' seq / 'L' function 0x00 seq   invocation logs / index by function
//	'd' seq / 'D' function 0x00 seq   dead letters / index by function
//	'u' function 0x00 minute          usage per function and minute
//	'f' name 0x00 version             deployed function versions
//	'a' name                          active version of a function
//	'b' bucket 0x00 name              blob metadata (blob.go)
//	'c' sha256                        reference count of a blob object
//	'O' target 0x00 seq               index of the blob sends in outbox
//	                                  target (blobsend.go)
//	'B' opaque key                    embedded broker sessions and
//	                                  retained messages (sessions.go)
//
// seq, ts, minute and version are 8-byte big-endian (ts biased by 1<<63 so
// that negative times sort first), so keys sort in numeric order.
const (
	pMeta     = 'm'
	pInbox    = 'i'
	pPublish  = 'p'
	pOutbox   = 'o'
	pRecord   = 'r'
	pIndex    = 'X'
	pIndexV2  = 'x' // format 2 (migrate.go)
	pState    = 's'
	pLog      = 'l'
	pLogIdx   = 'L'
	pDead     = 'd'
	pDeadIdx  = 'D'
	pUsage    = 'u'
	pFunction = 'f'
	pActive   = 'a'
)

var (
	keyFormat   = []byte("mformat")
	keyCounters = []byte("mcounters")
	keyClock    = []byte("mclock")
)

// maxName bounds names used inside keys (targets, streams, functions...).
const maxName = 1024

func seqKey(prefix byte, seq uint64) []byte {
	k := make([]byte, 9)
	k[0] = prefix
	binary.BigEndian.PutUint64(k[1:], seq)
	return k
}

func nameSeqKey(prefix byte, name string, seq uint64) []byte {
	k := make([]byte, 0, 1+len(name)+1+8)
	k = append(k, prefix)
	k = append(k, name...)
	k = append(k, 0)
	return binary.BigEndian.AppendUint64(k, seq)
}

func namePrefix(prefix byte, name string) []byte {
	k := make([]byte, 0, 1+len(name)+1)
	k = append(k, prefix)
	k = append(k, name...)
	return append(k, 0)
}

func stateKey(function, key string) []byte {
	k := namePrefix(pState, function)
	return append(k, key...)
}

func tsBits(ts int64) uint64 { return uint64(ts) ^ (1 << 63) }

// comboPrefix is the index prefix of the records of one stream, function
// and device.
func comboPrefix(stream, function, device string) []byte {
	k := make([]byte, 0, 4+len(stream)+len(function)+len(device)+16)
	k = append(k, pIndex)
	k = append(append(k, stream...), 0)
	k = append(append(k, function...), 0)
	return append(append(k, device...), 0)
}

// indexKey is the index key of a record.
func indexKey(r *Record) []byte {
	k := comboPrefix(r.Stream, r.Function, r.Device)
	k = binary.BigEndian.AppendUint64(k, tsBits(recordTS(r)))
	return binary.BigEndian.AppendUint64(k, r.Seq)
}

func keySeq(k []byte) uint64 { return binary.BigEndian.Uint64(k[len(k)-8:]) }

func validName(what, s string, allowEmpty bool) error {
	if s == "" && !allowEmpty {
		return fmt.Errorf("%w: empty %s", ErrInvalid, what)
	}
	if len(s) > maxName {
		return fmt.Errorf("%w: %s longer than %d bytes", ErrInvalid, what, maxName)
	}
	for i := 0; i < len(s); i++ {
		if s[i] == 0 {
			return fmt.Errorf("%w: %s contains a NUL byte", ErrInvalid, what)
		}
	}
	if !utf8.ValidString(s) {
		// Names are returned as text by the API and used in upstream
		// topics and subjects.
		return fmt.Errorf("%w: %s is not valid UTF-8", ErrInvalid, what)
	}
	return nil
}

// Value encodings: a tag byte then fields, integers as varints, strings and
// byte slices length-prefixed.
const (
	tagInbox   = 1
	tagRecord  = 2
	tagPublish = 3
	tagDead    = 4
	tagLog     = 5
	tagUsage   = 6
)

type enc struct{ b []byte }

func (e *enc) u(v uint64)  { e.b = binary.AppendUvarint(e.b, v) }
func (e *enc) i(v int64)   { e.b = binary.AppendVarint(e.b, v) }
func (e *enc) s(v string)  { e.u(uint64(len(v))); e.b = append(e.b, v...) }
func (e *enc) by(v []byte) { e.u(uint64(len(v))); e.b = append(e.b, v...) }
func (e *enc) f(v float64) { e.b = binary.BigEndian.AppendUint64(e.b, math.Float64bits(v)) }
func (e *enc) bo(v bool)   { e.b = append(e.b, b2u(v)) }
func (e *enc) tag(t byte)  { e.b = append(e.b, t) }
func b2u(v bool) byte {
	if v {
		return 1
	}
	return 0
}

type dec struct {
	b   []byte
	err error
}

func (d *dec) fail(what string) {
	if d.err == nil {
		d.err = fmt.Errorf("%w: truncated or invalid %s", ErrCorrupt, what)
	}
}

func (d *dec) u() uint64 {
	if d.err != nil {
		return 0
	}
	v, n := binary.Uvarint(d.b)
	if n <= 0 {
		d.fail("uvarint")
		return 0
	}
	d.b = d.b[n:]
	return v
}

func (d *dec) i() int64 {
	if d.err != nil {
		return 0
	}
	v, n := binary.Varint(d.b)
	if n <= 0 {
		d.fail("varint")
		return 0
	}
	d.b = d.b[n:]
	return v
}

func (d *dec) raw() []byte {
	n := d.u()
	if d.err != nil {
		return nil
	}
	if n > uint64(len(d.b)) {
		d.fail("length")
		return nil
	}
	v := d.b[:n:n]
	d.b = d.b[n:]
	return v
}

func (d *dec) s() string { return string(d.raw()) }

func (d *dec) by() []byte {
	r := d.raw()
	if r == nil {
		return nil
	}
	return append([]byte(nil), r...)
}

func (d *dec) f() float64 {
	if d.err != nil {
		return 0
	}
	if len(d.b) < 8 {
		d.fail("float")
		return 0
	}
	v := math.Float64frombits(binary.BigEndian.Uint64(d.b))
	d.b = d.b[8:]
	return v
}

func (d *dec) bo() bool {
	if d.err != nil {
		return false
	}
	if len(d.b) < 1 || d.b[0] > 1 {
		d.fail("bool")
		return false
	}
	v := d.b[0] == 1
	d.b = d.b[1:]
	return v
}

func (d *dec) tag(want byte, what string) {
	if len(d.b) < 1 || d.b[0] != want {
		d.fail(what + " tag")
		return
	}
	d.b = d.b[1:]
}

func (d *dec) end(what string) error {
	if d.err == nil && len(d.b) != 0 {
		d.fail(what + " (trailing bytes)")
	}
	return d.err
}

// header: every queued value starts with tag and the wall-clock write time
// (ms), used for age retention only.

func encodeInbox(e *InboxEntry, now int64) []byte {
	x := enc{b: make([]byte, 0, 16+len(e.Function)+len(e.Key)+len(e.Event))}
	x.tag(tagInbox)
	x.i(now)
	x.s(e.Function)
	x.s(e.Key)
	x.by(e.Event)
	return x.b
}

func decodeInbox(seq uint64, b []byte) (InboxEntry, error) {
	d := dec{b: b}
	d.tag(tagInbox, "inbox entry")
	d.i()
	e := InboxEntry{Seq: seq, Function: d.s(), Key: d.s(), Event: d.by()}
	return e, d.end("inbox entry")
}

func encodeRecord(r *Record, now int64) []byte {
	n := 48 + len(r.ID) + len(r.Stream) + len(r.Function) + len(r.Device) + len(r.EventID) + len(r.Data)
	for _, t := range r.Targets {
		n += len(t) + 2
	}
	x := enc{b: make([]byte, 0, n)}
	x.tag(tagRecord)
	x.i(now)
	x.u(r.Seq)
	x.s(r.ID)
	x.s(r.Stream)
	x.s(r.Function)
	x.s(r.Device)
	x.s(r.EventID)
	x.i(r.EventTS)
	x.i(r.ProcessedTS)
	x.bo(r.ClockSynced)
	x.by(r.Data)
	x.u(uint64(len(r.Targets)))
	for _, t := range r.Targets {
		x.s(t)
	}
	return x.b
}

// valueTime returns the write time stored in a queued value's header.
func valueTime(b []byte) int64 {
	if len(b) < 2 {
		return 0
	}
	v, n := binary.Varint(b[1:])
	if n <= 0 {
		return 0
	}
	return v
}

func decodeRecord(b []byte) (Record, error) {
	d := dec{b: b}
	d.tag(tagRecord, "record")
	d.i()
	r := Record{Seq: d.u(), ID: d.s(), Stream: d.s(), Function: d.s(), Device: d.s(), EventID: d.s(),
		EventTS: d.i(), ProcessedTS: d.i(), ClockSynced: d.bo(), Data: d.by()}
	n := d.u()
	if n > uint64(len(d.b)) {
		d.fail("record targets")
	}
	if d.err == nil && n > 0 {
		r.Targets = make([]string, 0, n)
		for i := uint64(0); i < n && d.err == nil; i++ {
			r.Targets = append(r.Targets, d.s())
		}
	}
	return r, d.end("record")
}

func encodePublish(p *Publish, now int64) []byte {
	x := enc{b: make([]byte, 0, 16+len(p.Topic)+len(p.Payload))}
	x.tag(tagPublish)
	x.i(now)
	x.s(p.Topic)
	x.by(p.Payload)
	x.b = append(x.b, p.QoS)
	x.bo(p.Retain)
	return x.b
}

func decodePublish(seq uint64, b []byte) (Publish, error) {
	d := dec{b: b}
	d.tag(tagPublish, "publish")
	d.i()
	p := Publish{Seq: seq, Topic: d.s(), Payload: d.by()}
	if d.err == nil {
		if len(d.b) < 1 {
			d.fail("publish qos")
		} else {
			p.QoS = d.b[0]
			d.b = d.b[1:]
		}
	}
	p.Retain = d.bo()
	return p, d.end("publish")
}

func encodeDead(dl *DeadLetter, now int64) []byte {
	x := enc{b: make([]byte, 0, 32+len(dl.Function)+len(dl.Key)+len(dl.Event)+len(dl.Error))}
	x.tag(tagDead)
	x.i(now)
	x.s(dl.Function)
	x.s(dl.Key)
	x.by(dl.Event)
	x.s(dl.Error)
	x.i(int64(dl.Attempts))
	x.i(dl.TS)
	return x.b
}

func decodeDead(seq uint64, b []byte) (DeadLetter, error) {
	d := dec{b: b}
	d.tag(tagDead, "dead letter")
	d.i()
	dl := DeadLetter{Seq: seq, Function: d.s(), Key: d.s(), Event: d.by(), Error: d.s(), Attempts: int(d.i()), TS: d.i()}
	return dl, d.end("dead letter")
}

func encodeLog(l *LogRecord, now int64) []byte {
	x := enc{b: make([]byte, 0, 32+len(l.Function)+len(l.InvocationID)+len(l.Msg)+len(l.Fields))}
	x.tag(tagLog)
	x.i(now)
	x.s(l.Function)
	x.s(l.InvocationID)
	x.s(l.Level)
	x.s(l.Msg)
	x.by(l.Fields)
	x.i(l.TS)
	return x.b
}

func decodeLog(seq uint64, b []byte) (LogRecord, error) {
	d := dec{b: b}
	d.tag(tagLog, "log record")
	d.i()
	l := LogRecord{Seq: seq, Function: d.s(), InvocationID: d.s(), Level: d.s(), Msg: d.s(), Fields: d.by(), TS: d.i()}
	return l, d.end("log record")
}

func encodeUsage(u *Usage) []byte {
	x := enc{b: make([]byte, 0, 48)}
	x.tag(tagUsage)
	x.i(u.Invocations)
	x.i(u.Errors)
	x.i(u.Steps)
	x.i(u.WallMicros)
	x.i(u.BytesIn)
	x.i(u.BytesOut)
	return x.b
}

func decodeUsage(b []byte) (Usage, error) {
	d := dec{b: b}
	d.tag(tagUsage, "usage")
	u := Usage{Invocations: d.i(), Errors: d.i(), Steps: d.i(), WallMicros: d.i(), BytesIn: d.i(), BytesOut: d.i()}
	return u, d.end("usage")
}
