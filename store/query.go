package store

import (
	"bytes"
	"container/heap"
	"context"
	"encoding/base64"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"hash/fnv"
	"math"
	"sort"
	"strings"
	"time"

	badger "github.com/dgraph-io/badger/v4"
)

// Query selects records. Stream, Function and Device filter when not empty;
// From (inclusive) and To (exclusive) bound the record time in ms (EventTS
// as received, or ProcessedTS when the event had none), 0 meaning open;
// FromSet makes From a bound even when it is 0 (a from at the Unix epoch,
// which then leaves out the records before it).
// Results are in time order (ties by sequence), newest first when Desc.
// Limit defaults to 100 (maximum 10000). Cursor is the opaque next value of
// the previous page of the same query.
//
// Records are indexed by one key each: stream, function, device, time. A
// query reads the time range of every (stream, function, device)
// combination its filters match, merged in time order. A filter that is
// set is used as is; the values of the ones left open are found by
// skipping from one to the next, so the cost grows with the number of
// distinct values left open (streams, then functions of each, then devices
// of each), not with the number of records outside the range.
type Query struct {
	Stream, Function, Device string
	From, To                 int64
	FromSet                  bool
	Desc                     bool
	Limit                    int
	Cursor                   string
}

// hasFrom reports whether q has a lower bound.
func (q *Query) hasFrom() bool { return q.From != 0 || q.FromSet }

// MaxQueryLimit bounds Query.Limit.
const MaxQueryLimit = 10000

// MaxPageBytes bounds the stored bytes of one page of records, state
// entries, dead letters or log lines: a page ends after the entry that
// reaches it (so it always holds at least one), with the cursor of the
// next page, even when it holds fewer than its limit. A page of 10,000
// entries of up to 1 MiB each would otherwise be read into memory at once
// (and the API's JSON values take several times their stored size).
const MaxPageBytes = 1 << 20

func (q *Query) match(r *Record) bool {
	return q.matchCombo(r.Stream, r.Function, r.Device)
}

func (q *Query) matchCombo(stream, function, device string) bool {
	return (q.Stream == "" || stream == q.Stream) &&
		(q.Function == "" || function == q.Function) &&
		(q.Device == "" || device == q.Device)
}

// digest identifies the filters and direction of q in its cursors.
func (q *Query) digest() uint64 {
	h := fnv.New64a()
	for _, f := range []string{q.Stream, q.Function, q.Device} {
		h.Write([]byte(f))
		h.Write([]byte{0})
	}
	if q.Desc {
		h.Write([]byte{1})
	}
	return h.Sum64()
}

// cursorVersion 2: the time and sequence of the last record of the page
// (version 1 held a key of format 2's indexes).
const cursorVersion = 2

func encodeCursor(q *Query, tsb, seq uint64) string {
	b := []byte{'c', cursorVersion}
	b = binary.BigEndian.AppendUint64(b, q.digest())
	b = binary.BigEndian.AppendUint64(b, tsb)
	b = binary.BigEndian.AppendUint64(b, seq)
	return base64.RawURLEncoding.EncodeToString(b)
}

// decodeCursor returns the position a cursor of q holds.
func decodeCursor(q *Query, cursor string) (tsb, seq uint64, err error) {
	b, err := base64.RawURLEncoding.DecodeString(cursor)
	if err != nil {
		return 0, 0, fmt.Errorf("%w: not base64url", ErrBadCursor)
	}
	if len(b) < 2 || b[0] != 'c' || b[1] != cursorVersion {
		return 0, 0, fmt.Errorf("%w: unknown cursor version", ErrBadCursor)
	}
	if len(b) != 2+24 {
		return 0, 0, fmt.Errorf("%w: cursor of %d bytes", ErrBadCursor, len(b))
	}
	if binary.BigEndian.Uint64(b[2:]) != q.digest() {
		return 0, 0, fmt.Errorf("%w: cursor belongs to another query", ErrBadCursor)
	}
	return binary.BigEndian.Uint64(b[10:]), binary.BigEndian.Uint64(b[18:]), nil
}

// combos returns the index prefixes of the combinations q may match. Each
// of stream, function and device is taken from the filter when it is set
// (no read), else enumerated by a skip scan (one seek per distinct value):
// so the cost is one seek per distinct value of the levels left open.
func combos(ctx context.Context, txn *badger.Txn, q *Query) ([][]byte, error) {
	it := txn.NewIterator(badger.IteratorOptions{Prefix: []byte{pIndex}})
	defer it.Close()
	filters := [3]string{q.Stream, q.Function, q.Device}
	var out [][]byte
	seeks := 0
	var walk func(prefix []byte, level int) error
	walk = func(prefix []byte, level int) error {
		if level == len(filters) {
			out = append(out, prefix)
			return nil
		}
		if f := filters[level]; f != "" {
			return walk(append(append(bytes.Clone(prefix), f...), 0), level+1)
		}
		it.Seek(prefix)
		for it.Valid() {
			if seeks++; seeks%256 == 0 {
				if err := ctx.Err(); err != nil {
					return err
				}
			}
			k := it.Item().Key()
			if !bytes.HasPrefix(k, prefix) {
				return nil
			}
			i := bytes.IndexByte(k[len(prefix):], 0)
			if i < 0 {
				return nil // not an index key of this shape
			}
			value := bytes.Clone(k[:len(prefix)+i+1])
			if err := walk(value, level+1); err != nil {
				return err
			}
			it.Seek(after(value))
		}
		return nil
	}
	if err := walk([]byte{pIndex}, 0); err != nil {
		return nil, err
	}
	return out, nil
}

// after returns the first key after every key that starts with prefix,
// which ends with a 0x00 separator: the separator raised to 0x01 (names hold
// no NUL, so no key under prefix sorts after it, and the next value sorts at
// or after it).
func after(prefix []byte) []byte {
	s := bytes.Clone(prefix)
	s[len(s)-1] = 1
	return s
}

// source is one combination's keys in range, read a chunk at a time.
type source struct {
	prefix []byte
	lo, hi []byte   // range of full keys: [lo, hi)
	next   []byte   // where the next chunk starts (inclusive)
	keys   [][]byte // the chunk, in the walk's order
	chunk  int      // keys to read next time: doubles up to max
	max    int      // the walk's chunk bound (chunkBound)
	done   bool     // no keys after this chunk
}

// maxChunk bounds a combination's chunk; walkKeyBudget bounds the keys all
// the chunks of one walk hold together (an aggregate over 10,000
// device combinations held 64 keys of each, ~56 MiB, before its first
// record): with many combinations each reads fewer at a time.
const (
	maxChunk      = 64
	walkKeyBudget = 4096
)

// chunkBound is the chunk bound of a walk over n combinations.
func chunkBound(n int) int { return min(max(walkKeyBudget/max(n, 1), 2), maxChunk) }

// fill reads the next chunk of src with it (whose direction is the walk's).
func (src *source) fill(it *badger.Iterator, desc bool) {
	src.keys = src.keys[:0]
	defer func() { src.chunk = min(2*src.chunk, src.max) }()
	if src.done {
		return
	}
	it.Seek(src.next)
	for ; it.Valid(); it.Next() {
		k := it.Item().Key()
		if !bytes.HasPrefix(k, src.prefix) || len(k) != len(src.prefix)+16 {
			src.done = true
			return
		}
		if (!desc && bytes.Compare(k, src.hi) >= 0) || (desc && bytes.Compare(k, src.lo) < 0) {
			src.done = true
			return
		}
		if desc && bytes.Compare(k, src.hi) >= 0 {
			continue // only the exclusive bound itself can be met here
		}
		if len(src.keys) == src.chunk {
			src.next = bytes.Clone(k)
			return
		}
		src.keys = append(src.keys, bytes.Clone(k))
	}
	src.done = true
}

// position is the (time, sequence) part of an index key.
func position(k []byte) []byte { return k[len(k)-16:] }

// walkIndex calls f with the records q selects, in q's order, until f
// returns false. tsb and seq are the record's position for a cursor.
// limit is how many records f will take at most (0: all), for sizing reads.
func (s *Store) walkIndex(ctx context.Context, txn *badger.Txn, q *Query, limit int, f func(tsb, seq uint64, r *Record) (bool, error)) error {
	for _, name := range []string{q.Stream, q.Function, q.Device} {
		if err := validName("query filter", name, true); err != nil {
			return err
		}
	}
	var cur []byte // position after which to start
	if q.Cursor != "" {
		tsb, seq, err := decodeCursor(q, q.Cursor)
		if err != nil {
			return err
		}
		cur = binary.BigEndian.AppendUint64(binary.BigEndian.AppendUint64(nil, tsb), seq)
	}
	if q.hasFrom() && q.To != 0 && q.To <= q.From {
		return nil
	}
	ps, err := combos(ctx, txn, q)
	if err != nil || len(ps) == 0 {
		return err
	}
	it := txn.NewIterator(badger.IteratorOptions{Prefix: []byte{pIndex}, Reverse: q.Desc})
	defer it.Close()
	h := &sourceHeap{desc: q.Desc}
	// A page of limit records takes about limit/len(ps) from each
	// combination: read that much first, more from those that supply.
	bound := chunkBound(len(ps))
	first := bound
	if limit > 0 {
		first = min(max(limit/len(ps)+1, 2), bound)
	}
	for _, p := range ps {
		src := &source{prefix: p, lo: p, hi: after(p), chunk: first, max: bound}
		if q.hasFrom() {
			src.lo = binary.BigEndian.AppendUint64(bytes.Clone(p), tsBits(q.From))
		}
		if q.To != 0 {
			src.hi = binary.BigEndian.AppendUint64(bytes.Clone(p), tsBits(q.To))
		}
		if !q.Desc {
			src.next = src.lo
			if cur != nil {
				// Strictly after the cursor's record.
				if c := append(append(bytes.Clone(p), cur...), 0); bytes.Compare(c, src.lo) > 0 {
					src.next = c
				}
			}
		} else {
			src.next = src.hi
			if cur != nil {
				// Strictly before it: a reverse seek lands on it or below.
				if c := append(bytes.Clone(p), cur...); bytes.Compare(c, src.hi) < 0 {
					src.next = c
					src.hi = c
				}
			}
		}
		src.fill(it, q.Desc)
		if len(src.keys) > 0 {
			h.srcs = append(h.srcs, src)
		}
	}
	heap.Init(h)
	for h.Len() > 0 {
		src := h.srcs[0]
		k := src.keys[0]
		src.keys = src.keys[1:]
		if len(src.keys) == 0 {
			src.fill(it, q.Desc)
		}
		if len(src.keys) == 0 {
			heap.Pop(h)
		} else {
			heap.Fix(h, 0)
		}
		pos := position(k)
		seq := binary.BigEndian.Uint64(pos[8:])
		item, err := txn.Get(seqKey(pRecord, seq))
		if errors.Is(err, badger.ErrKeyNotFound) {
			continue // dropped between index and record (not expected)
		}
		if err != nil {
			return err
		}
		var r Record
		if err := item.Value(func(v []byte) error {
			var err error
			r, err = decodeRecord(v)
			return err
		}); err != nil {
			return fmt.Errorf("record %d: %w", seq, err)
		}
		if !q.match(&r) {
			continue
		}
		more, err := f(binary.BigEndian.Uint64(pos), seq, &r)
		if err != nil || !more {
			return err
		}
	}
	return nil
}

// sourceHeap orders sources by the position of their next key: smallest
// first, largest when desc.
type sourceHeap struct {
	srcs []*source
	desc bool
}

func (h *sourceHeap) Len() int { return len(h.srcs) }
func (h *sourceHeap) Less(i, j int) bool {
	c := bytes.Compare(position(h.srcs[i].keys[0]), position(h.srcs[j].keys[0]))
	if h.desc {
		return c > 0
	}
	return c < 0
}
func (h *sourceHeap) Swap(i, j int) { h.srcs[i], h.srcs[j] = h.srcs[j], h.srcs[i] }
func (h *sourceHeap) Push(x any)    { h.srcs = append(h.srcs, x.(*source)) }
func (h *sourceHeap) Pop() any {
	n := len(h.srcs)
	x := h.srcs[n-1]
	h.srcs = h.srcs[:n-1]
	return x
}

// QueryRecords returns one page of records matching q and the cursor of the
// next page ("" when this page is the last one known). Errors: ErrBadCursor,
// ErrInvalid, ErrClosed.
func (s *Store) QueryRecords(ctx context.Context, q Query) ([]Record, string, error) {
	if q.Limit <= 0 {
		q.Limit = 100
	}
	if q.Limit > MaxQueryLimit {
		q.Limit = MaxQueryLimit
	}
	var out []Record
	var next string
	var lastTS, lastSeq uint64
	size := 0
	err := s.view(ctx, func(txn *badger.Txn) error {
		return s.walkIndex(ctx, txn, &q, q.Limit+1, func(tsb, seq uint64, r *Record) (bool, error) {
			if len(out) == q.Limit || size >= MaxPageBytes {
				// One more match exists: hand out a cursor after the last one.
				next = encodeCursor(&q, lastTS, lastSeq)
				return false, nil
			}
			size += len(r.Data)
			out = append(out, *r)
			lastTS, lastSeq = tsb, seq
			if len(out)%256 == 0 {
				if err := ctx.Err(); err != nil {
					return false, err
				}
			}
			return true, nil
		})
	})
	if err != nil {
		return nil, "", err
	}
	return out, next, nil
}

// AggQuery aggregates the numeric JSON field Field (a dotted path such as
// "sensors.temp") of the records selected by Query, per Bucket of record
// time (one bucket when Bucket <= 0). Limit and Cursor are ignored; Desc
// only changes the scan direction.
//
// MaxBuckets bounds the number of buckets (0: no bound). With both From
// and To set, a range that holds more buckets is refused before anything
// is read; otherwise the scan stops as soon as it finds one bucket more.
// Both are ErrInvalid.
type AggQuery struct {
	Query
	Field      string
	Bucket     time.Duration
	MaxBuckets int
}

// floorDiv is a / b rounded down (b > 0).
func floorDiv(a, b int64) int64 {
	q := a / b
	if a%b != 0 && a < 0 {
		q--
	}
	return q
}

// rangeBuckets is the number of buckets of width bms (ms; <= 0: one
// bucket) that the time range [from, to) touches.
func rangeBuckets(from, to, bms int64) int64 {
	if bms <= 0 || to <= from {
		return 1
	}
	return floorDiv(to-1, bms) - floorDiv(from, bms) + 1
}

// AggBucket is one time bucket of an aggregate: Count is the number of
// records whose field is a number; Min, Max, Mean are over those.
type AggBucket struct {
	Start int64 // ms
	Count int64
	Min   float64
	Max   float64
	Mean  float64
}

// Aggregate computes count, min, max and mean of q.Field per time bucket,
// ascending by Start. Records whose field is missing or not a number are
// skipped. It scans the records in range of every matching combination.
func (s *Store) Aggregate(ctx context.Context, q AggQuery) ([]AggBucket, error) {
	if q.Field == "" {
		return nil, fmt.Errorf("%w: empty aggregate field", ErrInvalid)
	}
	q.Cursor = ""
	path := strings.Split(q.Field, ".")
	bms := q.Bucket.Milliseconds()
	if q.MaxBuckets > 0 && q.hasFrom() && q.To != 0 {
		if n := rangeBuckets(q.From, q.To, bms); n > int64(q.MaxBuckets) {
			return nil, fmt.Errorf("%w: the range holds %d buckets of %v, more than %d: use a wider bucket or a shorter range",
				ErrInvalid, n, q.Bucket, q.MaxBuckets)
		}
	}
	// The mean is kept as a running mean, not as sum/count: a sum of
	// values near the top of float64's range overflows to +Inf although
	// each value and their mean are finite. mean += v/n - mean/n stays
	// finite: for n >= 2 each term is at most half the largest finite
	// value.
	type acc struct {
		n              int64
		min, max, mean float64
	}
	buckets := map[int64]*acc{}
	n := 0
	err := s.view(ctx, func(txn *badger.Txn) error {
		return s.walkIndex(ctx, txn, &q.Query, 0, func(_, _ uint64, r *Record) (bool, error) {
			n++
			if n%1024 == 0 {
				if err := ctx.Err(); err != nil {
					return false, err
				}
			}
			v, ok := jsonField(r.Data, path)
			if !ok {
				return true, nil
			}
			start := q.From
			if bms > 0 {
				ts := recordTS(r)
				start = ts - ((ts%bms)+bms)%bms
			}
			a := buckets[start]
			if a == nil {
				if q.MaxBuckets > 0 && len(buckets) >= q.MaxBuckets {
					return false, fmt.Errorf("%w: more than %d buckets of %v: use a wider bucket or a shorter range",
						ErrInvalid, q.MaxBuckets, q.Bucket)
				}
				a = &acc{min: math.Inf(1), max: math.Inf(-1)}
				buckets[start] = a
			}
			a.n++
			if a.n == 1 {
				a.mean = v
			} else {
				fn := float64(a.n)
				a.mean += v/fn - a.mean/fn
			}
			a.min = math.Min(a.min, v)
			a.max = math.Max(a.max, v)
			return true, nil
		})
	})
	if err != nil {
		return nil, err
	}
	out := make([]AggBucket, 0, len(buckets))
	for st, a := range buckets {
		out = append(out, AggBucket{Start: st, Count: a.n, Min: a.min, Max: a.max,
			Mean: math.Min(math.Max(a.mean, a.min), a.max)}) // rounding kept inside [min, max], so finite
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Start < out[j].Start })
	return out, nil
}

// jsonField extracts a numeric field by path from a JSON object.
func jsonField(data []byte, path []string) (float64, bool) {
	var v any
	d := json.NewDecoder(bytes.NewReader(data))
	d.UseNumber()
	if err := d.Decode(&v); err != nil {
		return 0, false
	}
	for _, p := range path {
		m, ok := v.(map[string]any)
		if !ok {
			return 0, false
		}
		if v, ok = m[p]; !ok {
			return 0, false
		}
	}
	n, ok := v.(json.Number)
	if !ok {
		return 0, false
	}
	f, err := n.Float64()
	if err != nil || math.IsInf(f, 0) || math.IsNaN(f) {
		return 0, false
	}
	return f, true
}
