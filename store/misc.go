package store

import (
	"context"
	"encoding/base64"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"hash/fnv"
	"math"
	"sort"
	"time"

	badger "github.com/dgraph-io/badger/v4"
)

// KV is one state entry.
type KV struct {
	Key   string
	Value []byte
}

// GetState returns the value of function's state key (found false if
// absent). It implements luavm's StateReader.
func (s *Store) GetState(ctx context.Context, function, key string) ([]byte, bool, error) {
	if err := validName("function", function, false); err != nil {
		return nil, false, err
	}
	var v []byte
	var found bool
	err := s.view(ctx, func(txn *badger.Txn) error {
		item, err := txn.Get(stateKey(function, key))
		if errors.Is(err, badger.ErrKeyNotFound) {
			return nil
		}
		if err != nil {
			return err
		}
		found = true
		v, err = item.ValueCopy(nil)
		return err
	})
	return v, found, err
}

// ListState returns up to limit (default 100, max 10000) entries of
// function's state whose key starts with prefix, in key order, after the
// opaque cursor, and the cursor of the next page ("" at the end). A page
// also ends once it holds MaxPageBytes of values.
func (s *Store) ListState(ctx context.Context, function, prefix string, limit int, cursor string) ([]KV, string, error) {
	if err := validName("function", function, false); err != nil {
		return nil, "", err
	}
	if limit <= 0 {
		limit = 100
	}
	limit = min(limit, MaxQueryLimit)
	base := namePrefix(pState, function)
	p := stateKey(function, prefix)
	start := p
	digest := stateCursorDigest(function, prefix)
	if cursor != "" {
		ck, err := base64.RawURLEncoding.DecodeString(cursor)
		if err != nil || len(ck) < 1 {
			return nil, "", fmt.Errorf("%w: state cursor", ErrBadCursor)
		}
		if ck[0] == 's' {
			return nil, "", fmt.Errorf("%w: state cursor of an older release: list from the start again", ErrBadCursor)
		}
		if ck[0] != 'S' || len(ck) < 9 {
			return nil, "", fmt.Errorf("%w: state cursor", ErrBadCursor)
		}
		k := append(append([]byte{}, base...), ck[9:]...)
		if binary.BigEndian.Uint64(ck[1:]) != digest || len(k) < len(p) || string(k[:len(p)]) != string(p) {
			return nil, "", fmt.Errorf("%w: state cursor of another function or prefix", ErrBadCursor)
		}
		start = append(k, 0)
	}
	var out []KV
	var next string
	size := 0
	err := s.view(ctx, func(txn *badger.Txn) error {
		it := txn.NewIterator(badger.IteratorOptions{Prefix: p}) // no prefetch: see scanSeqCtx
		defer it.Close()
		for it.Seek(start); it.Valid(); it.Next() {
			item := it.Item()
			key := string(item.Key()[len(base):])
			if len(out) == limit || size >= MaxPageBytes {
				c := binary.BigEndian.AppendUint64([]byte{'S'}, digest)
				next = base64.RawURLEncoding.EncodeToString(append(c, out[len(out)-1].Key...))
				return nil
			}
			v, err := item.ValueCopy(nil)
			if err != nil {
				return err
			}
			size += len(v)
			out = append(out, KV{Key: key, Value: v})
		}
		return nil
	})
	if err != nil {
		return nil, "", err
	}
	return out, next, nil
}

// stateCursorDigest identifies the function and prefix of a state
// listing in its cursors ('S', the digest, then the last key of the page),
// as Query.digest does for record cursors: a cursor is refused by another
// listing (it was taken by one whose prefix it matched, such as "a" for a
// cursor of "ab", which then silently started past the keys between). The
// cursors of earlier releases ('s' and the key) are refused.
func stateCursorDigest(function, prefix string) uint64 {
	h := fnv.New64a()
	h.Write([]byte(function))
	h.Write([]byte{0})
	h.Write([]byte(prefix))
	return h.Sum64()
}

// PutState durably sets function's state key to value (outside a processing
// commit: for the API).
func (s *Store) PutState(ctx context.Context, function, key string, value []byte) error {
	_, err := s.Commit(ctx, &Commit{State: []StateChange{{Function: function, Op: StateSet, Key: key, Value: value}}})
	return err
}

// DeleteState durably deletes function's state key (absent is not an error).
func (s *Store) DeleteState(ctx context.Context, function, key string) error {
	_, err := s.Commit(ctx, &Commit{State: []StateChange{{Function: function, Op: StateDelete, Key: key}}})
	return err
}

// ListDeadLetters returns up to limit (default 100) dead letters with
// Seq > after, ascending, of function (all when ""): fewer once they hold
// MaxPageBytes (none only at the end).
func (s *Store) ListDeadLetters(ctx context.Context, function string, after uint64, limit int) ([]DeadLetter, error) {
	if after == math.MaxUint64 {
		return nil, nil // nothing follows (after+1 would wrap to the start)
	}
	if limit <= 0 {
		limit = 100
	}
	limit = min(limit, MaxQueryLimit)
	var out []DeadLetter
	size := 0
	dec := func(seq uint64, v []byte) error {
		if size >= MaxPageBytes {
			return errStop
		}
		d, err := decodeDead(seq, v)
		if err != nil {
			return fmt.Errorf("dead letter %d: %w", seq, err)
		}
		size += len(v)
		out = append(out, d)
		return nil
	}
	err := s.view(ctx, func(txn *badger.Txn) error {
		if function == "" {
			return scanSeqCtx(ctx, txn, pDead, max(after+1, s.counters().Dead.Head), limit, dec)
		}
		return scanIndex(ctx, txn, pDeadIdx, pDead, function, after+1, limit, dec)
	})
	if errors.Is(err, errStop) {
		err = nil
	}
	return out, err
}

// scanIndex walks a name 0x00 seq index and reads the primary entries,
// calling f at most limit times (limit <= 0: no limit). It stops with ctx's
// error when ctx ends (checked every scanCheckEvery index entries).
func scanIndex(ctx context.Context, txn *badger.Txn, idx, primary byte, name string, start uint64, limit int, f func(seq uint64, v []byte) error) error {
	if err := validName("function", name, false); err != nil {
		return err
	}
	p := namePrefix(idx, name)
	it := txn.NewIterator(badger.IteratorOptions{Prefix: p})
	defer it.Close()
	n := 0
	read := 0
	for it.Seek(nameSeqKey(idx, name, start)); it.Valid(); it.Next() {
		if read++; read%scanCheckEvery == 0 {
			if err := ctx.Err(); err != nil {
				return err
			}
		}
		k := it.Item().Key()
		if len(k) != len(p)+8 {
			continue
		}
		seq := keySeq(k)
		item, err := txn.Get(seqKey(primary, seq))
		if errors.Is(err, badger.ErrKeyNotFound) {
			continue
		}
		if err != nil {
			return err
		}
		if err := item.Value(func(v []byte) error { return f(seq, v) }); err != nil {
			if errors.Is(err, errStop) {
				return nil
			}
			return err
		}
		n++
		if limit > 0 && n >= limit {
			return nil
		}
	}
	return nil
}

// DeleteDeadLetter deletes one dead letter (ErrNotFound if absent).
func (s *Store) DeleteDeadLetter(ctx context.Context, seq uint64) error {
	return s.submit(ctx, &request{est: 4 * entryEst(64+maxName, 0), fn: func(b *batch) error {
		return b.deleteDead(seq, true)
	}})
}

func (b *batch) deleteDead(seq uint64, strict bool) error {
	k := seqKey(pDead, seq)
	v, ok, err := b.get(k)
	if err != nil {
		return err
	}
	if !ok {
		if strict {
			return fmt.Errorf("%w: dead letter %d", ErrNotFound, seq)
		}
		return nil
	}
	b.del(k)
	if d, err := decodeDead(seq, v); err == nil {
		b.del(nameSeqKey(pDeadIdx, d.Function, seq))
		b.s.forgetEntry(SpaceDeadLetters, d.Function, int64(len(v)))
	}
	b.ctr.Dead.remove(int64(len(v)))
	if seq == b.ctr.Dead.Head {
		b.ctr.Dead.Head++
	}
	return nil
}

// PurgeDeadLetters deletes the dead letters of function (all when "") and
// returns how many it deleted.
func (s *Store) PurgeDeadLetters(ctx context.Context, function string) (int, error) {
	total := 0
	after := uint64(0)
	for {
		dls, err := s.ListDeadLetters(ctx, function, after, 512)
		if err != nil || len(dls) == 0 {
			return total, err
		}
		seqs := make([]uint64, len(dls))
		for i := range dls {
			seqs[i] = dls[i].Seq
		}
		after = seqs[len(seqs)-1]
		n := 0
		err = s.submit(ctx, &request{est: int64(len(seqs)) * 2 * entryEst(64+maxName, 0), fn: func(b *batch) error {
			for _, seq := range seqs {
				before := b.ctr.Dead.Count
				if err := b.deleteDead(seq, false); err != nil {
					return err
				}
				if b.ctr.Dead.Count < before {
					n++
				}
			}
			return nil
		}})
		if err != nil {
			// n may still be written by the committer when ctx ended.
			return total, err
		}
		total += n
	}
}

// MaxLogScan bounds the log lines one ScanLogs (or QueryLogs) call reads,
// matching or not.
const MaxLogScan = 10000

// QueryLogs is ScanLogs without the position it reached: up to limit
// (default 100) invocation logs with Seq > after, ascending, of function
// (all when "") and, when invocationID is not empty, of that invocation
// only. It reads at most MaxLogScan lines, so with invocationID it may
// return fewer lines than match.
func (s *Store) QueryLogs(ctx context.Context, function, invocationID string, after uint64, limit int) ([]LogRecord, error) {
	out, _, err := s.ScanLogs(ctx, function, invocationID, after, limit)
	return out, err
}

// ScanLogs returns up to limit (default 100, at most MaxQueryLimit)
// invocation logs with Seq > after, ascending, of function (all when "")
// and, when invocationID is not empty, of that invocation only. It reads at
// most MaxLogScan lines, matching or not, and returns next, the sequence
// of the last line it read (after when it read none): pass it as after for
// the following lines, so a reader moves past the lines that do not match.
// A call can return fewer lines than limit, even none, with more to come;
// the end is reached when next == after.
func (s *Store) ScanLogs(ctx context.Context, function, invocationID string, after uint64, limit int) (lines []LogRecord, next uint64, err error) {
	if limit <= 0 {
		limit = 100
	}
	limit = min(limit, MaxQueryLimit)
	next = after
	if after == math.MaxUint64 {
		return nil, next, nil // nothing follows (after+1 would wrap to the start)
	}
	size := 0
	f := func(seq uint64, v []byte) error {
		l, err := decodeLog(seq, v)
		if err != nil {
			return fmt.Errorf("log %d: %w", seq, err)
		}
		next = seq
		if invocationID == "" || l.InvocationID == invocationID {
			lines = append(lines, l)
			size += len(v)
			if len(lines) >= limit || size >= MaxPageBytes {
				return errStop
			}
		}
		return nil
	}
	err = s.view(ctx, func(txn *badger.Txn) error {
		if function == "" {
			return scanSeqCtx(ctx, txn, pLog, max(after+1, s.counters().Logs.Head), MaxLogScan, f)
		}
		return scanIndex(ctx, txn, pLogIdx, pLog, function, after+1, MaxLogScan, f)
	})
	if errors.Is(err, errStop) {
		err = nil
	}
	if err != nil {
		return nil, after, err
	}
	return lines, next, nil
}

// usage is aggregated per function and minute.
const usageBucketMS = 60_000

// usageKey splits a usage meter's key (pUsage, function, 0x00, minute)
// into the function and the minute's start; ok is false for another key.
func usageKey(k []byte) (function []byte, minute int64, ok bool) {
	if len(k) < 10 || k[len(k)-9] != 0 {
		return nil, 0, false
	}
	return k[1 : len(k)-9], int64(binary.BigEndian.Uint64(k[len(k)-8:]) ^ (1 << 63)), true
}

func (b *batch) addUsage(u *Usage) error {
	minute := u.TS - ((u.TS%usageBucketMS)+usageBucketMS)%usageBucketMS
	k := nameSeqKey(pUsage, u.Function, tsBits(minute))
	v, ok, err := b.get(k)
	if err != nil {
		return err
	}
	var cur Usage
	if ok {
		if cur, err = decodeUsage(v); err != nil {
			b.s.log.Error("resetting undecodable usage", "function", u.Function, "err", err)
			cur = Usage{}
		}
	}
	cur.Invocations += u.Invocations
	cur.Errors += u.Errors
	cur.Steps += u.Steps
	cur.WallMicros += u.WallMicros
	cur.BytesIn += u.BytesIn
	cur.BytesOut += u.BytesOut
	nv := encodeUsage(&cur)
	if !ok {
		b.ctr.Usage.Count++
	}
	b.ctr.Usage.Bytes += int64(len(nv) - len(v))
	b.set(k, nv)
	return nil
}

// MaxUsageRows bounds the rows (function and bucket) of one QueryUsage:
// a minute bucket over the 90 days of meters kept is 129,600 rows per
// function.
const MaxUsageRows = 10000

// QueryUsage sums the usage of function (every function when "") with
// TS in [from, to) (0 = open) per bucket (one minute when <= 0; rounded to
// whole minutes), ordered by function then time. Usage.TS is the bucket
// start. A query of more than MaxUsageRows rows is refused (ErrInvalid)
// once it finds one row more.
func (s *Store) QueryUsage(ctx context.Context, function string, from, to int64, bucket time.Duration) ([]Usage, error) {
	bms := bucket.Milliseconds()
	if bms < usageBucketMS {
		bms = usageBucketMS
	}
	bms -= bms % usageBucketMS
	type key struct {
		fn string
		ts int64
	}
	acc := map[key]*Usage{}
	prefix := []byte{pUsage}
	if function != "" {
		if err := validName("function", function, false); err != nil {
			return nil, err
		}
		prefix = namePrefix(pUsage, function)
	}
	err := s.view(ctx, func(txn *badger.Txn) error {
		it := txn.NewIterator(badger.IteratorOptions{Prefix: prefix, PrefetchValues: true})
		defer it.Close()
		// Each function's minutes are in time order: the iterator seeks
		// to from in each and skips to the next function at to, so a
		// narrow range reads what it returns, not every minute kept.
		it.Rewind()
		for n := 0; it.Valid(); {
			if n++; n&1023 == 0 {
				if err := ctx.Err(); err != nil {
					return err
				}
			}
			fnb, ts, ok := usageKey(it.Item().Key())
			if !ok {
				it.Next()
				continue
			}
			fn := string(fnb)
			if from != 0 && ts < from {
				it.Seek(nameSeqKey(pUsage, fn, tsBits(from)))
				continue
			}
			if to != 0 && ts >= to {
				after := namePrefix(pUsage, fn)
				after[len(after)-1] = 1 // past every key of fn
				it.Seek(after)
				continue
			}
			var u Usage
			if err := it.Item().Value(func(v []byte) error {
				var err error
				u, err = decodeUsage(v)
				return err
			}); err != nil {
				return fmt.Errorf("usage %s/%d: %w", fn, ts, err)
			}
			start := ts - ((ts%bms)+bms)%bms
			a := acc[key{fn, start}]
			if a == nil {
				if len(acc) == MaxUsageRows {
					return fmt.Errorf("%w: usage of more than %d rows (function and bucket): name a function, narrow the time range or widen the bucket", ErrInvalid, MaxUsageRows)
				}
				a = &Usage{Function: fn, TS: start}
				acc[key{fn, start}] = a
			}
			a.Invocations += u.Invocations
			a.Errors += u.Errors
			a.Steps += u.Steps
			a.WallMicros += u.WallMicros
			a.BytesIn += u.BytesIn
			a.BytesOut += u.BytesOut
			it.Next()
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	out := make([]Usage, 0, len(acc))
	for _, u := range acc {
		out = append(out, *u)
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].Function != out[j].Function {
			return out[i].Function < out[j].Function
		}
		return out[i].TS < out[j].TS
	})
	return out, nil
}

// FunctionRecord is one deployed version of a function.
type FunctionRecord struct {
	Name      string
	Version   int64 // assigned by PutFunction, from 1
	Source    []byte
	Manifest  []byte
	SHA256    string
	CreatedMS int64
	Active    bool // this version is the active one
	// FromDir is set on a version stored from functions_dir (not through
	// the API): a start finds the functions removed from the directory
	// while the daemon was stopped by it. Versions stored before this field
	// existed read false.
	FromDir bool `json:",omitempty"`
}

func fnKey(name string, version int64) []byte { return nameSeqKey(pFunction, name, uint64(version)) }

func activeKey(name string) []byte { return append([]byte{pActive}, name...) }

// latestVersion returns the highest stored version of name (0 if none).
func latestVersion(txn *badger.Txn, name string) int64 {
	p := namePrefix(pFunction, name)
	it := txn.NewIterator(badger.IteratorOptions{Prefix: p, Reverse: true})
	defer it.Close()
	it.Seek(fnKey(name, math.MaxInt64))
	if it.Valid() && len(it.Item().Key()) == len(p)+8 {
		return int64(keySeq(it.Item().Key()))
	}
	return 0
}

func activeVersion(txn *badger.Txn, name string) (int64, error) {
	item, err := txn.Get(activeKey(name))
	if errors.Is(err, badger.ErrKeyNotFound) {
		return 0, nil
	}
	if err != nil {
		return 0, err
	}
	var v int64
	err = item.Value(func(b []byte) error {
		if len(b) != 8 {
			return fmt.Errorf("%w: active version of %q", ErrCorrupt, name)
		}
		v = int64(binary.BigEndian.Uint64(b))
		return nil
	})
	return v, err
}

// PutFunction stores f as the next version of f.Name (returned) and, when
// f.Active, makes it the active version.
func (s *Store) PutFunction(ctx context.Context, f FunctionRecord) (int64, error) {
	if err := validName("function name", f.Name, false); err != nil {
		return 0, err
	}
	var version int64
	// The record (JSON: the source in base64) is a pointer to the value
	// log in the transaction once past the value threshold: counted whole,
	// a source over ~140 KiB (of the 256 KiB allowed) was too large for
	// one transaction of the low-memory profile.
	est := s.valueEntryBound(len(f.Name)+10, 2*(len(f.Source)+len(f.Manifest))+256) + entryEst(len(f.Name)+1, 8) +
		maxVersionsPruned*entryEst(len(f.Name)+10, 0)
	err := s.submit(ctx, &request{est: est, grows: true, fn: func(b *batch) error {
		version = latestVersion(b.txn, f.Name) + 1
		if err := pruneVersions(b, f.Name, version-VersionsKept); err != nil {
			return err
		}
		rec := f
		rec.Version = version
		rec.Active = false
		if rec.CreatedMS == 0 {
			rec.CreatedMS = b.now
		}
		v, err := json.Marshal(&rec)
		if err != nil {
			return err
		}
		b.set(fnKey(f.Name, version), v)
		if f.Active {
			b.set(activeKey(f.Name), binary.BigEndian.AppendUint64(nil, uint64(version)))
		}
		return nil
	}})
	if err != nil {
		return 0, err // version may still be written by the committer when ctx ended
	}
	return version, nil
}

// VersionsKept is how many of a function's latest versions PutFunction
// keeps (and the active one, whatever its age): older ones are deleted in
// the same write, so a deploy history does not grow the store without
// bound (every version holds its source, up to 256 KiB, and manifest).
// Rollback reaches back that far.
const VersionsKept = 32

// maxVersionsPruned bounds the versions one PutFunction deletes (a store
// with a longer history, from before VersionsKept, shrinks over a few
// deploys).
const maxVersionsPruned = 64

// pruneVersions deletes the versions of name up to and including upTo,
// except the active one, at most maxVersionsPruned of them.
func pruneVersions(b *batch, name string, upTo int64) error {
	if upTo < 1 {
		return nil
	}
	active, err := activeVersion(b.txn, name)
	if err != nil {
		return err
	}
	p := namePrefix(pFunction, name)
	it := b.txn.NewIterator(badger.IteratorOptions{Prefix: p})
	defer it.Close()
	n := 0
	for it.Seek(fnKey(name, 1)); it.Valid() && n < maxVersionsPruned; it.Next() {
		k := it.Item().Key()
		if len(k) != len(p)+8 {
			continue
		}
		v := int64(keySeq(k))
		if v > upTo {
			break
		}
		if v != active {
			b.del(it.Item().KeyCopy(nil))
			n++
		}
	}
	return nil
}

func getFunction(txn *badger.Txn, name string, version int64) (FunctionRecord, error) {
	active, err := activeVersion(txn, name)
	if err != nil {
		return FunctionRecord{}, err
	}
	if version == 0 {
		if active == 0 {
			return FunctionRecord{}, fmt.Errorf("%w: no active version of function %q", ErrNotFound, name)
		}
		version = active
	}
	item, err := txn.Get(fnKey(name, version))
	if errors.Is(err, badger.ErrKeyNotFound) {
		return FunctionRecord{}, fmt.Errorf("%w: function %q version %d", ErrNotFound, name, version)
	}
	if err != nil {
		return FunctionRecord{}, err
	}
	var f FunctionRecord
	if err := item.Value(func(v []byte) error { return json.Unmarshal(v, &f) }); err != nil {
		return FunctionRecord{}, fmt.Errorf("%w: function %q version %d: %v", ErrCorrupt, name, version, err)
	}
	f.Active = f.Version == active
	return f, nil
}

// GetFunction returns version of name (the active version when 0).
// ErrNotFound when it does not exist.
func (s *Store) GetFunction(ctx context.Context, name string, version int64) (FunctionRecord, error) {
	if err := validName("function name", name, false); err != nil {
		return FunctionRecord{}, err
	}
	var f FunctionRecord
	err := s.view(ctx, func(txn *badger.Txn) error {
		var err error
		f, err = getFunction(txn, name, version)
		return err
	})
	return f, err
}

// ListFunctions returns one record per function: its active version, or
// its latest version (Active false) when none is active; sorted by name.
func (s *Store) ListFunctions(ctx context.Context) ([]FunctionRecord, error) {
	var out []FunctionRecord
	err := s.EachFunction(ctx, func(f FunctionRecord) error {
		out = append(out, f)
		return nil
	})
	return out, err
}

// EachFunction is ListFunctions calling fn with each function, by name,
// one at a time: a caller that keeps only some of each (the API's list,
// without the sources) holds one source at a time, not every function's
// (up to 256 KiB each). An error of fn ends the scan and is returned.
func (s *Store) EachFunction(ctx context.Context, fn func(FunctionRecord) error) error {
	return s.view(ctx, func(txn *badger.Txn) error {
		latest := map[string]int64{}
		var names []string
		it := txn.NewIterator(badger.IteratorOptions{Prefix: []byte{pFunction}})
		for it.Rewind(); it.Valid(); it.Next() {
			k := it.Item().Key()
			if len(k) < 10 {
				continue
			}
			name := string(k[1 : len(k)-9])
			if _, ok := latest[name]; !ok {
				names = append(names, name)
			}
			latest[name] = int64(keySeq(k))
		}
		it.Close()
		for _, n := range names {
			if err := ctx.Err(); err != nil {
				return err
			}
			active, err := activeVersion(txn, n)
			if err != nil {
				return err
			}
			v := active
			if v == 0 {
				v = latest[n]
			}
			f, err := getFunction(txn, n, v)
			if err != nil {
				return err
			}
			if err := fn(f); err != nil {
				return err
			}
		}
		return nil
	})
}

// ListVersions returns every stored version of name, ascending
// (ErrNotFound when there is none).
func (s *Store) ListVersions(ctx context.Context, name string) ([]FunctionRecord, error) {
	var out []FunctionRecord
	err := s.EachVersion(ctx, name, func(f FunctionRecord) error {
		out = append(out, f)
		return nil
	})
	return out, err
}

// EachVersion calls fn with each stored version of name, oldest first, one
// at a time: a caller that keeps only some of each (a list without the
// sources) holds one version's source at a time, however many versions a
// deploy history left. An error of fn ends the scan and is returned;
// ErrNotFound when name has no version.
func (s *Store) EachVersion(ctx context.Context, name string, fn func(FunctionRecord) error) error {
	if err := validName("function name", name, false); err != nil {
		return err
	}
	n := 0
	err := s.view(ctx, func(txn *badger.Txn) error {
		active, err := activeVersion(txn, name)
		if err != nil {
			return err
		}
		return scanName(txn, pFunction, name, 0, 0, func(seq uint64, v []byte) error {
			if err := ctx.Err(); err != nil {
				return err
			}
			var f FunctionRecord
			if err := json.Unmarshal(v, &f); err != nil {
				return fmt.Errorf("%w: function %q version %d: %v", ErrCorrupt, name, seq, err)
			}
			f.Active = f.Version == active
			n++
			return fn(f)
		})
	})
	if err == nil && n == 0 {
		err = fmt.Errorf("%w: function %q", ErrNotFound, name)
	}
	return err
}

// SetActive makes version the active version of name (0 deactivates it).
// ErrNotFound when that version does not exist.
func (s *Store) SetActive(ctx context.Context, name string, version int64) error {
	if err := validName("function name", name, false); err != nil {
		return err
	}
	return s.submit(ctx, &request{est: 2 * entryEst(len(name)+10, 8), fn: func(b *batch) error {
		if version == 0 {
			b.del(activeKey(name))
			return nil
		}
		if _, ok, err := b.get(fnKey(name, version)); err != nil {
			return err
		} else if !ok {
			return fmt.Errorf("%w: function %q version %d", ErrNotFound, name, version)
		}
		b.set(activeKey(name), binary.BigEndian.AppendUint64(nil, uint64(version)))
		return nil
	}})
}

// MarkFromDir sets FromDir on version of name (stored through the API, or
// before the field existed, and now loaded from functions_dir).
// ErrNotFound when that version does not exist.
func (s *Store) MarkFromDir(ctx context.Context, name string, version int64) error {
	if err := validName("function name", name, false); err != nil {
		return err
	}
	r, err := s.GetFunction(ctx, name, version)
	if err != nil || r.FromDir {
		return err
	}
	est := s.valueEntryBound(len(name)+10, 2*(len(r.Source)+len(r.Manifest))+256)
	return s.submit(ctx, &request{est: est, fn: func(b *batch) error {
		v, ok, err := b.get(fnKey(name, version))
		if err != nil {
			return err
		}
		if !ok {
			return fmt.Errorf("%w: function %q version %d", ErrNotFound, name, version)
		}
		var f FunctionRecord
		if err := json.Unmarshal(v, &f); err != nil {
			return fmt.Errorf("%w: function %q version %d: %v", ErrCorrupt, name, version, err)
		}
		if f.FromDir {
			return nil
		}
		f.FromDir = true
		out, err := json.Marshal(&f)
		if err != nil {
			return err
		}
		b.set(fnKey(name, version), out)
		return nil
	}})
}

// DeleteFunction deletes every version of name and its active pointer (its
// state is kept). ErrNotFound when there is no version.
func (s *Store) DeleteFunction(ctx context.Context, name string) error {
	vs, err := s.ListVersions(ctx, name)
	if err != nil {
		return err
	}
	return s.submit(ctx, &request{est: int64(len(vs)+1) * entryEst(len(name)+10, 0), fn: func(b *batch) error {
		for _, v := range vs {
			b.del(fnKey(name, v.Version))
		}
		b.del(activeKey(name))
		return nil
	}})
}
