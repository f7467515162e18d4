package store

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"sort"
	"strings"
	"time"

	badger "github.com/dgraph-io/badger/v4"
)

// Query selects records. Stream, Function and Device filter when not empty
// (the first set one picks the index, the others filter); From (inclusive)
// and To (exclusive) bound the record time in ms (EventTS as received, or
// ProcessedTS when the event had none), 0 meaning open. Results are in time
// order (ties by sequence), newest first when Desc. Limit defaults to 100
// (maximum 10000). Cursor is the opaque next value of the previous page of
// the same query.
type Query struct {
	Stream, Function, Device string
	From, To                 int64
	Desc                     bool
	Limit                    int
	Cursor                   string
}

// MaxQueryLimit bounds Query.Limit.
const MaxQueryLimit = 10000

func (q *Query) index() (byte, string) {
	switch {
	case q.Stream != "":
		return 's', q.Stream
	case q.Function != "":
		return 'f', q.Function
	case q.Device != "":
		return 'd', q.Device
	}
	return 't', ""
}

func (q *Query) match(r *Record) bool {
	return (q.Stream == "" || r.Stream == q.Stream) &&
		(q.Function == "" || r.Function == q.Function) &&
		(q.Device == "" || r.Device == q.Device)
}

const cursorVersion = 1

func encodeCursor(key []byte) string {
	return base64.RawURLEncoding.EncodeToString(append([]byte{'c', cursorVersion}, key...))
}

// decodeCursor checks that cursor is a key of the index prefix.
func decodeCursor(cursor string, prefix []byte) ([]byte, error) {
	b, err := base64.RawURLEncoding.DecodeString(cursor)
	if err != nil {
		return nil, fmt.Errorf("%w: not base64url", ErrBadCursor)
	}
	if len(b) < 2 || b[0] != 'c' || b[1] != cursorVersion {
		return nil, fmt.Errorf("%w: unknown cursor version", ErrBadCursor)
	}
	k := b[2:]
	if len(k) != len(prefix)+16 || !bytes.HasPrefix(k, prefix) {
		return nil, fmt.Errorf("%w: cursor belongs to another query", ErrBadCursor)
	}
	return k, nil
}

// walkIndex iterates the index entries of q in order, calling f with each
// matching record until f returns false. It returns the index key of the
// last record passed to f.
func (s *Store) walkIndex(txn *badger.Txn, q *Query, f func(key []byte, r *Record) (bool, error)) error {
	if q.From != 0 && q.To != 0 && q.To <= q.From {
		return nil
	}
	kind, name := q.index()
	if err := validName("query name", name, true); err != nil {
		return err
	}
	prefix := indexPrefix(kind, name)
	var cur []byte
	if q.Cursor != "" {
		var err error
		if cur, err = decodeCursor(q.Cursor, prefix); err != nil {
			return err
		}
	}
	lo := append(append([]byte{}, prefix...), u64(tsBits(q.From))...)
	if q.From == 0 {
		lo = append([]byte{}, prefix...)
	}
	var hi []byte // exclusive
	if q.To != 0 {
		hi = append(append([]byte{}, prefix...), u64(tsBits(q.To))...)
	}
	it := txn.NewIterator(badger.IteratorOptions{Prefix: prefix, Reverse: q.Desc})
	defer it.Close()
	if !q.Desc {
		start := lo
		if cur != nil && bytes.Compare(cur, lo) >= 0 {
			start = append(append([]byte{}, cur...), 0)
		}
		it.Seek(start)
	} else {
		start := hi
		if start == nil {
			start = append(append([]byte{}, prefix...), bytes.Repeat([]byte{0xff}, 17)...)
		}
		if cur != nil && (hi == nil || bytes.Compare(cur, hi) < 0) {
			start = cur
		}
		it.Seek(start)
		if cur != nil && it.Valid() && bytes.Equal(it.Item().Key(), cur) {
			it.Next()
		}
	}
	for ; it.Valid(); it.Next() {
		k := it.Item().Key()
		if len(k) != len(prefix)+16 {
			continue
		}
		if !q.Desc && hi != nil && bytes.Compare(k, hi) >= 0 {
			return nil
		}
		if q.Desc && bytes.Compare(k, lo) < 0 {
			return nil
		}
		item, err := txn.Get(seqKey(pRecord, indexSeq(k)))
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
			return fmt.Errorf("record %d: %w", indexSeq(k), err)
		}
		if !q.match(&r) {
			continue
		}
		more, err := f(k, &r)
		if err != nil || !more {
			return err
		}
	}
	return nil
}

func u64(v uint64) []byte {
	return []byte{byte(v >> 56), byte(v >> 48), byte(v >> 40), byte(v >> 32), byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)}
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
	var last []byte
	err := s.view(ctx, func(txn *badger.Txn) error {
		return s.walkIndex(txn, &q, func(k []byte, r *Record) (bool, error) {
			if len(out) == q.Limit {
				// One more match exists: hand out a cursor after the last one.
				next = encodeCursor(last)
				return false, nil
			}
			out = append(out, *r)
			last = append(last[:0], k...)
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
type AggQuery struct {
	Query
	Field  string
	Bucket time.Duration
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
// skipped. It scans the records in range through the chosen index.
func (s *Store) Aggregate(ctx context.Context, q AggQuery) ([]AggBucket, error) {
	if q.Field == "" {
		return nil, fmt.Errorf("%w: empty aggregate field", ErrInvalid)
	}
	q.Cursor = ""
	path := strings.Split(q.Field, ".")
	bms := q.Bucket.Milliseconds()
	type acc struct {
		n             int64
		min, max, sum float64
	}
	buckets := map[int64]*acc{}
	n := 0
	err := s.view(ctx, func(txn *badger.Txn) error {
		return s.walkIndex(txn, &q.Query, func(_ []byte, r *Record) (bool, error) {
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
				a = &acc{min: math.Inf(1), max: math.Inf(-1)}
				buckets[start] = a
			}
			a.n++
			a.sum += v
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
		out = append(out, AggBucket{Start: st, Count: a.n, Min: a.min, Max: a.max, Mean: a.sum / float64(a.n)})
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
