package store

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"slices"
	"sync"
	"time"

	badger "github.com/dgraph-io/badger/v4"
)

// maxChain bounds Commit.ChainMax.
const maxChain = 1 << 16

// maxAckPublishes bounds Commit.AckPublishes (as AckPublishes splits its
// sequences into writes of this many).
const maxAckPublishes = 1024

// maxDropsPerWrite bounds how many old entries one write may drop to make
// room; the retention pass finishes the job if more are needed.
const maxDropsPerWrite = 64

// Enqueue durably appends entries to the inbox, all or nothing, and returns
// their sequence numbers (strictly increasing, also across restarts). It
// returns once the group-commit batch holding them is durable. Errors:
// ErrStoreFull, ErrQuota (inbox MaxBytes), ErrInvalid, ErrTooLarge, ErrClosed.
// If ctx ends while waiting, the entries may or may not have been stored and
// the committer may still read them: do not modify them. On success the Seq
// of each entry is set too.
func (s *Store) Enqueue(ctx context.Context, entries []InboxEntry) ([]uint64, error) {
	if len(entries) == 0 {
		return nil, nil
	}
	var est int64
	for i := range entries {
		if err := validName("function", entries[i].Function, false); err != nil {
			return nil, err
		}
		if fp := entries[i].Fingerprint; len(fp) != 0 && len(fp) != FingerprintSize {
			return nil, fmt.Errorf("%w: fingerprint of %d bytes, want %d", ErrInvalid, len(fp), FingerprintSize)
		}
		if len(entries[i].Event) > s.opts.MaxValueBytes {
			return nil, fmt.Errorf("%w: event of %d bytes, limit %d", ErrTooLarge, len(entries[i].Event), s.opts.MaxValueBytes)
		}
		est += s.vEntryEst(9, 24+len(entries[i].Function)+len(entries[i].Key)+len(entries[i].Event)) + s.vEntryEst(9, len(entries[i].Fingerprint))
		if entries[i].DeadLetter != 0 {
			est += 2 * entryEst(16+maxName, 0)
		}
	}
	seqs := make([]uint64, len(entries))
	err := s.submit(ctx, &request{est: est, grows: true, fn: func(b *batch) error {
		seen := map[uint64]bool{}
		for i := range entries {
			d := entries[i].DeadLetter
			if d == 0 {
				continue
			}
			_, ok, err := b.get(seqKey(pDead, d))
			if err != nil {
				return err
			}
			if !ok || seen[d] {
				return fmt.Errorf("%w: dead letter %d", ErrNotFound, d)
			}
			seen[d] = true
		}
		vals := make([][]byte, len(entries))
		var total int64
		for i := range entries {
			vals[i] = encodeInbox(&entries[i], b.now)
			total += int64(len(vals[i]))
		}
		if q := s.opts.quota(SpaceInbox); q.MaxBytes > 0 && total > intakeShare(q.MaxBytes) {
			b.ctr.Rejected[SpaceInbox]++
			return fmt.Errorf("%w (%w): %d bytes, more than new events may ever hold of the inbox quota %d (%d)", ErrQuota, ErrTooLarge, total, q.MaxBytes, intakeShare(q.MaxBytes))
		}
		if q := s.opts.quota(SpaceInbox); q.MaxBytes > 0 && b.ctr.Inbox.Bytes+total > intakeShare(q.MaxBytes) {
			b.ctr.Rejected[SpaceInbox]++
			return fmt.Errorf("%w: inbox holds %d bytes, quota %d (%d for new events)", ErrQuota, b.ctr.Inbox.Bytes, q.MaxBytes, intakeShare(q.MaxBytes))
		}
		for i := range entries {
			seq := b.ctr.Inbox.Next
			b.ctr.Inbox.Next++
			b.ctr.Inbox.add(len(vals[i]))
			b.set(seqKey(pInbox, seq), vals[i])
			s.inboxSize.put(seq, len(vals[i]))
			seqs[i] = seq
			if len(entries[i].Fingerprint) == FingerprintSize {
				b.set(dedupeKey(seq%s.window.size), entries[i].Fingerprint)
				b.set(senderKey(entries[i].Sender, entries[i].PacketID), senderValue(entries[i].Fingerprint, b.now))
			}
			if d := entries[i].DeadLetter; d != 0 {
				if err := b.deleteDead(d, true); err != nil {
					return fatal(err) // checked above: cannot happen
				}
			}
		}
		return nil
	}})
	if err != nil {
		return nil, err
	}
	for i := range entries {
		entries[i].Seq = seqs[i]
		// Durable now: only now may a redelivery be recognised.
		if len(entries[i].Fingerprint) == FingerprintSize {
			s.window.put(seqs[i]%s.window.size, [FingerprintSize]byte(entries[i].Fingerprint))
		}
	}
	return seqs, nil
}

// InboxPending returns up to limit (default 100) not-yet-consumed inbox
// entries with Seq > after, in ascending order. It seeks past the consumed
// prefix of the inbox, so its cost does not grow with the inbox's history.
func (s *Store) InboxPending(ctx context.Context, after uint64, limit int) ([]InboxEntry, error) {
	return pending(ctx, s, pInbox, s.counters().Inbox.Head, after, limit, decodeInbox)
}

// pending reads up to limit (default 100) entries of the queue under
// prefix with Seq > after, starting no earlier than its head cursor.
func pending[T any](ctx context.Context, s *Store, prefix byte, head, after uint64, limit int, decode func(uint64, []byte) (T, error)) ([]T, error) {
	if limit <= 0 {
		limit = 100
	}
	if after == math.MaxUint64 {
		return nil, nil // nothing follows (after+1 would wrap to the start)
	}
	var out []T
	err := s.view(ctx, func(txn *badger.Txn) error {
		return scanSeq(txn, prefix, max(after+1, head), limit, func(seq uint64, v []byte) error {
			e, err := decode(seq, v)
			if err != nil {
				return err
			}
			out = append(out, e)
			return nil
		})
	})
	return out, err
}

// InboxLen returns the number of entries waiting in the inbox.
func (s *Store) InboxLen() int64 { return s.counters().Inbox.Count }

// InboxNext returns the sequence the next inbox entry will get: every entry
// with a lower sequence has been committed (or consumed) already.
func (s *Store) InboxNext() uint64 { return s.counters().Inbox.Next }

// LogsNext returns the sequence the next invocation log line will get:
// ScanLogs after LogsNext()-1 returns only lines committed from now on.
func (s *Store) LogsNext() uint64 { return s.counters().Logs.Next }

// scanSeq iterates the sequence-keyed space prefix from seq start, calling f
// with each value, at most limit times (limit <= 0: no limit).
func scanSeq(txn *badger.Txn, prefix byte, start uint64, limit int, f func(seq uint64, v []byte) error) error {
	return scanSeqCtx(context.Background(), txn, prefix, start, limit, f)
}

// scanCheckEvery is how many entries a scan reads between checks of its
// context.
const scanCheckEvery = 256

// scanSeqCtx is scanSeq that stops with ctx's error when ctx ends (checked
// every scanCheckEvery entries), so a long scan ends with its request.
func scanSeqCtx(ctx context.Context, txn *badger.Txn, prefix byte, start uint64, limit int, f func(seq uint64, v []byte) error) error {
	// No prefetch: it copies up to PrefetchSize values (of up to
	// MaxValueBytes each) before the first is looked at, and a page ends
	// at MaxPageBytes: 100 dead letters of 700 KiB took 42 MiB for a page
	// of two. Each value is read when the loop reaches it.
	opts := badger.IteratorOptions{Prefix: []byte{prefix}}
	it := txn.NewIterator(opts)
	defer it.Close()
	n := 0
	for it.Seek(seqKey(prefix, start)); it.Valid(); it.Next() {
		if n%scanCheckEvery == scanCheckEvery-1 {
			if err := ctx.Err(); err != nil {
				return err
			}
		}
		item := it.Item()
		k := item.Key()
		if len(k) != 9 {
			return fmt.Errorf("%w: key %q", ErrCorrupt, k)
		}
		if err := item.Value(func(v []byte) error { return f(keySeq(k), v) }); err != nil {
			return err
		}
		n++
		if limit > 0 && n >= limit {
			return nil
		}
	}
	return nil
}

// CommitResult is what Commit assigned.
type CommitResult struct {
	Records   []Record     // with Seq, ID, ProcessedTS and ClockSynced set
	Publishes []Publish    // with Seq set
	Inbox     []InboxEntry // returned by Commit.Chain, with Seq set
}

// Commit applies c all or nothing, durably, in the next group-commit batch:
// it consumes the inbox entry c.InboxSeq (ErrAlreadyConsumed if an earlier
// commit consumed it: the caller must skip it, its effects are committed),
// stores the records (assigning Seq and ID, indexing them, and appending each
// to the outbox of every Record.Targets), applies the state changes in order,
// appends the publishes to the publish outbox, appends to the inbox the
// entries c.Chain derives from the records and state changes, and stores
// the dead letter, logs and usage. Quotas apply per key space (drop oldest or ErrQuota).
// Other errors: ErrNotFound (InboxSeq never existed), ErrNotNumber,
// ErrStoreFull, ErrInvalid, ErrTooLarge, ErrClosed. On error nothing of c
// is applied, except when ctx ends while waiting: then the commit may or
// may not be applied, and the byte slices of c may still be read, so they
// must not be modified. Commit does not keep c after it returns.
func (s *Store) Commit(ctx context.Context, c *Commit) (CommitResult, error) {
	if c == nil {
		return CommitResult{}, fmt.Errorf("%w: nil commit", ErrInvalid)
	}
	est, err := validateCommit(c, s.opts.MaxValueBytes, s.valueEntryBound)
	if err != nil {
		return CommitResult{}, err
	}
	var chainEst int64
	if c.Chain != nil {
		// Chained entries are built in the committer from the records,
		// state changes and blobs: each is sized as an event carrying the
		// largest of them, with room for its captures and names; one past
		// the value threshold is only a pointer in the transaction. (They
		// were all sized as pointers: inline ones overflowed Badger's
		// transaction, failing the whole batch.) chain refuses more.
		src := 0
		for i := range c.Records {
			src = max(src, len(c.Records[i].Data))
		}
		for i := range c.State {
			src = max(src, 2*len(c.State[i].Value)) // old and new
		}
		for i := range c.Blobs {
			if op := &c.Blobs[i]; !op.Delete {
				// An upload event names the blob three times (payload,
				// captures, key) besides its content type and hash, the
				// payload's JSON escaping a byte in up to six (< > &):
				// a name of 150 bytes overflowed the room and the upload
				// was refused as too large.
				src = max(src, 6*(len(op.Bucket)+len(op.Name)+len(op.ContentType))+2*(len(op.Bucket)+len(op.Name))+160)
			}
		}
		// At most what is left of half a transaction (the most one write
		// may take): chain refuses chained entries larger than that.
		chainEst = min(int64(c.ChainMax)*s.valueEntryBound(9, src+chainEventRoom), max(s.maxTxnSize/2-est, 0))
		est += chainEst
	}
	// The committer reads c after this call returns on a ctx error: work on
	// a copy of what it writes back into (sequences of logs and dead letter).
	cc := *c
	cc.chainEst = chainEst
	cc.Logs = append([]LogRecord(nil), c.Logs...)
	if c.DeadLetter != nil {
		d := *c.DeadLetter
		cc.DeadLetter = &d
	}
	c = &cc
	var res CommitResult
	grows := len(c.Records)+len(c.Publishes)+len(c.Logs) > 0 || c.DeadLetter != nil || c.Usage != nil
	for _, st := range c.State {
		if st.Op != StateDelete {
			grows = true
		}
	}
	sendTargets := map[string]bool{}
	for i := range c.Blobs {
		// Deletes free space: they still work on a full disk.
		if !c.Blobs[i].Delete {
			grows = true
		}
		est += blobOpEst
		if op := &c.Blobs[i]; !op.Delete {
			// A blob send per sync target of the bucket: entry, index
			// key, reference.
			for _, t := range s.opts.Buckets[op.Bucket].Sync {
				est += entryEst(10+len(t), 96+2*len(op.Bucket)+2*len(op.Name)+len(op.ContentType)+len(s.opts.GatewayID)) +
					entryEst(10+len(t), 42) + entryEst(33, 8)
				sendTargets[t] = true
			}
		}
	}
	for t := range sendTargets {
		// Room to drop old entries of the outbox (entry, index key and
		// reference of a blob send).
		est += maxDropsPerWrite * (2*entryEst(10+len(t), 0) + entryEst(33, 8))
	}
	req := &request{est: est, grows: grows}
	req.fn = func(b *batch) error {
		err := s.applyCommit(b, c, &res)
		if err == nil && !c.ChainQueued && len(res.Inbox) > 0 {
			req.chained = res.Inbox
		}
		return err
	}
	err = s.submit(ctx, req)
	if err != nil {
		return CommitResult{}, err
	}
	if d := c.DeadLetter; d != nil && len(d.Fingerprint) == FingerprintSize {
		// Durable now: its redelivery may be recognised.
		s.window.refused([FingerprintSize]byte(d.Fingerprint))
	}
	return res, nil
}

// validateCommit checks c and returns an upper bound of the bytes its
// writes add to a transaction. vEst bounds one entry with a value of at
// most v bytes (values past the value threshold are only pointers in the
// transaction: a 200 KiB event costs the same as a 1 KiB one); entryEst
// bounds the entries without one.
func validateCommit(c *Commit, maxValue int, vEst func(k, v int) int64) (int64, error) {
	est := int64(256)
	tooBig := func(what string, n int) error {
		if n > maxValue {
			return fmt.Errorf("%w: %s of %d bytes, limit %d", ErrTooLarge, what, n, maxValue)
		}
		return nil
	}
	for i := range c.Records {
		if err := tooBig("record data", len(c.Records[i].Data)); err != nil {
			return 0, err
		}
	}
	for i := range c.Publishes {
		if err := tooBig("publish payload", len(c.Publishes[i].Payload)); err != nil {
			return 0, err
		}
	}
	for i := range c.State {
		if err := tooBig("state value", len(c.State[i].Value)); err != nil {
			return 0, err
		}
	}
	if c.DeadLetter != nil {
		if err := tooBig("dead letter event", len(c.DeadLetter.Event)); err != nil {
			return 0, err
		}
	}
	targets := map[string]bool{}
	for i := range c.Records {
		r := &c.Records[i]
		if err := validName("record stream", r.Stream, true); err != nil {
			return 0, err
		}
		if err := validName("record function", r.Function, true); err != nil {
			return 0, err
		}
		if err := validName("record device", r.Device, true); err != nil {
			return 0, err
		}
		for _, t := range r.Targets {
			if err := validName("record target", t, false); err != nil {
				return 0, err
			}
		}
		v := 96 + len(r.Stream) + len(r.Function) + len(r.Device) + len(r.EventID) + len(r.Data) + 64
		for _, t := range r.Targets {
			v += len(t) + 2
		}
		n := int64(1 + len(r.Targets))
		est += n*vEst(64, v) + entryEst(20+len(r.Stream)+len(r.Function)+len(r.Device), 0)
		for _, t := range r.Targets {
			targets[t] = true
		}
	}
	if len(c.Records) > 0 {
		// allowance for dropping old records (with their index keys) and
		// outbox entries to make room
		est += maxDropsPerWrite * (5 + int64(len(targets))) * entryEst(64, 0)
	}
	for _, st := range c.State {
		if err := validName("state function", st.Function, false); err != nil {
			return 0, err
		}
		if st.Op < StateSet || st.Op > StateIncr {
			return 0, fmt.Errorf("%w: state op %d", ErrInvalid, st.Op)
		}
		if len(st.Key) > 64<<10 {
			return 0, fmt.Errorf("%w: state key longer than 64 KiB", ErrInvalid)
		}
		if st.Op == StateIncr && (math.IsInf(st.Delta, 0) || math.IsNaN(st.Delta)) {
			return 0, fmt.Errorf("%w: state increment by %v", ErrInvalid, st.Delta)
		}
		est += vEst(2+len(st.Function)+len(st.Key), len(st.Value)+32)
	}
	for _, p := range c.Publishes {
		est += vEst(9, 32+len(p.Topic)+len(p.Payload)) + maxDropsPerWrite*entryEst(9, 0)
	}
	if d := c.DeadLetter; d != nil {
		if err := validName("dead letter function", d.Function, false); err != nil {
			return 0, err
		}
		if len(d.Fingerprint) != 0 && len(d.Fingerprint) != FingerprintSize {
			return 0, fmt.Errorf("%w: dead letter fingerprint of %d bytes, want %d", ErrInvalid, len(d.Fingerprint), FingerprintSize)
		}
		// The dead letter and its index key (no value), and the sender's
		// redelivery slot.
		est += vEst(16+len(d.Function), 48+len(d.Key)+len(d.Event)+len(d.Error)) + entryEst(16+len(d.Function), 0) + maxDropsPerWrite*2*entryEst(64, 0) + entryEst(10, FingerprintSize+8)
	}
	for _, l := range c.Logs {
		if err := validName("log function", l.Function, false); err != nil {
			return 0, err
		}
		est += vEst(16+len(l.Function), 48+len(l.InvocationID)+len(l.Level)+len(l.Msg)+len(l.Fields)) + entryEst(16+len(l.Function), 0) + 2*2*entryEst(64, 0)
	}
	if len(c.Logs) > 0 {
		est += maxDropsPerWrite * 2 * entryEst(64, 0)
	}
	if u := c.Usage; u != nil {
		if err := validName("usage function", u.Function, false); err != nil {
			return 0, err
		}
		est += entryEst(16+len(u.Function), 64)
	}
	if c.ChainMax < 0 || c.ChainMax > maxChain {
		return 0, fmt.Errorf("%w: ChainMax %d (0 to %d)", ErrInvalid, c.ChainMax, maxChain)
	}
	if len(c.AckPublishes) > maxAckPublishes {
		return 0, fmt.Errorf("%w: %d publish acknowledgements in one commit (at most %d)", ErrInvalid, len(c.AckPublishes), maxAckPublishes)
	}
	est += int64(len(c.AckPublishes)) * entryEst(9, 0)
	return est, nil
}

func (s *Store) applyCommit(b *batch, c *Commit, res *CommitResult) error {
	// 1. The inbox entry: exactly once.
	var inboxSize int64
	if c.InboxSeq != 0 {
		if c.InboxSeq >= b.ctr.Inbox.Next {
			return fmt.Errorf("%w: inbox entry %d", ErrNotFound, c.InboxSeq)
		}
		if c.InboxSeq < b.ctr.Inbox.Head {
			return fmt.Errorf("%w: inbox entry %d", ErrAlreadyConsumed, c.InboxSeq)
		}
		// Every entry in [Head, Next) is live unless inboxDone holds it
		// (consumed by an earlier batch or earlier in this one): only its
		// size may need a read.
		if _, done := s.inboxDone[c.InboxSeq]; done {
			return fmt.Errorf("%w: inbox entry %d", ErrAlreadyConsumed, c.InboxSeq)
		}
		if n, ok := s.inboxSize.get(c.InboxSeq); ok {
			inboxSize = n
		} else {
			item, err := b.txn.Get(seqKey(pInbox, c.InboxSeq))
			if errors.Is(err, badger.ErrKeyNotFound) {
				return fatal(fmt.Errorf("%w: inbox entry %d is missing", ErrCorrupt, c.InboxSeq))
			}
			if err != nil {
				return fatal(err)
			}
			inboxSize = item.ValueSize()
		}
	}
	// 2. State changes, computed in order over an overlay (reads only).
	type sv struct {
		key []byte
		val []byte // nil: delete
		fn  string
		was int64 // bytes of key and value before the commit (0: absent)
	}
	var state []sv
	var updates []StateUpdate // for c.Chain: each change with its old value
	overlay := map[string]int{}
	for _, ch := range c.State {
		k := stateKey(ch.Function, ch.Key)
		var nv []byte
		if c.Chain != nil {
			var old []byte
			if i, ok := overlay[string(k)]; ok {
				old = state[i].val
			} else {
				v, _, err := b.get(k)
				if err != nil {
					return err
				}
				old = v
			}
			updates = append(updates, StateUpdate{Function: ch.Function, Key: ch.Key, Old: old})
		}
		switch ch.Op {
		case StateSet:
			nv = append([]byte{}, ch.Value...)
			if nv == nil {
				nv = []byte{}
			}
		case StateDelete:
			nv = nil
		case StateIncr:
			var cur []byte
			var found bool
			if i, ok := overlay[string(k)]; ok {
				cur, found = state[i].val, state[i].val != nil
			} else {
				v, ok, err := b.get(k)
				if err != nil {
					return err
				}
				cur, found = v, ok
			}
			n := 0.0
			if found {
				f, err := parseJSONNumber(cur)
				if err != nil {
					return fmt.Errorf("%w: %s/%s: %v", ErrNotNumber, ch.Function, ch.Key, err)
				}
				n = f
			}
			sum := n + ch.Delta
			if math.IsInf(sum, 0) || math.IsNaN(sum) {
				// luavm refuses this against the value it read; two
				// invocations that read the same value can still get
				// here, and "+Inf" is no JSON.
				return fmt.Errorf("%w: %s/%s: %v + %v is not a finite number", ErrNotNumber, ch.Function, ch.Key, n, ch.Delta)
			}
			nv = formatJSONNumber(sum)
		}
		if i, ok := overlay[string(k)]; ok {
			state[i].val = nv
		} else {
			was, err := b.stateSize(k)
			if err != nil {
				return err
			}
			overlay[string(k)] = len(state)
			state = append(state, sv{key: k, val: nv, fn: ch.Function, was: was})
		}
		if c.Chain != nil {
			updates[len(updates)-1].New = nv
		}
	}
	var stateDelta map[string]int64 // per function: bytes of state added
	for _, v := range state {
		n := int64(0)
		if v.val != nil {
			n = int64(len(v.key) + len(v.val))
		}
		if n != v.was {
			if stateDelta == nil {
				stateDelta = make(map[string]int64, 1)
			}
			stateDelta[v.fn] += n - v.was
		}
	}
	if err := s.checkStateQuota(stateDelta); err != nil {
		return err
	}
	// 3. Encode with the sequences they will get, then check reject_new quotas.
	recs := make([]Record, len(c.Records))
	recVals := make([][]byte, len(c.Records))
	synced := s.clockSynced.Load()
	var recBytes int64
	tgtBytes := map[string]int64{}
	for i := range c.Records {
		r := c.Records[i]
		r.Seq = b.ctr.Records.Next + uint64(i)
		r.ID = s.idPrefix + formatSeq(r.Seq)
		if r.ProcessedTS == 0 {
			r.ProcessedTS = b.now
		}
		r.ClockSynced = synced
		r.Targets = dedupe(r.Targets)
		recs[i] = r
		recVals[i] = encodeRecord(&recs[i], b.now)
		recBytes += int64(len(recVals[i]))
		for _, t := range r.Targets {
			tgtBytes[t] += int64(len(recVals[i]))
		}
	}
	pubVals := make([][]byte, len(c.Publishes))
	var pubBytes int64
	for i := range c.Publishes {
		pubVals[i] = encodePublish(&c.Publishes[i], b.now)
		pubBytes += int64(len(pubVals[i]))
	}
	var deadVal []byte
	if c.DeadLetter != nil {
		deadVal = encodeDead(c.DeadLetter, b.now)
	}
	logVals := make([][]byte, len(c.Logs))
	var logBytes int64
	for i := range c.Logs {
		logVals[i] = encodeLog(&c.Logs[i], b.now)
		logBytes += int64(len(logVals[i]))
	}
	if err := b.checkQuota(SpaceRecords, &b.ctr.Records, recBytes); err != nil {
		return err
	}
	blobs, blobRefs, blobBuckets, err := s.applyBlobs(b, c)
	if err != nil {
		return err
	}
	sends := s.blobSends(b, blobs)
	var tgtBlobBytes map[string]int64
	for _, ps := range sends {
		tgtBytes[ps.target] += int64(len(ps.val))
		if tgtBlobBytes == nil {
			tgtBlobBytes = map[string]int64{}
		}
		tgtBlobBytes[ps.target] += ps.size
	}
	for t, n := range tgtBytes {
		q := b.ctr.Outbox[t]
		if err := b.checkQuota("outbox:"+t, &q, n); err != nil {
			return err
		}
		// The files of pending blob sends count too (they stay on disk
		// until sent): with reject_new, a send is refused while the
		// outbox holds others over the quota (one into an empty outbox is
		// taken, however large).
		if qt := b.s.opts.quota("outbox:" + t); tgtBlobBytes[t] > 0 && qt.Policy == RejectNew && qt.MaxBytes > 0 &&
			q.Count > 0 && q.Bytes+q.BlobBytes+n+tgtBlobBytes[t] > qt.MaxBytes {
			b.ctr.Rejected["outbox:"+t]++
			return fmt.Errorf("%w: outbox:%s holds %d bytes and %d of blob contents, quota %d, adding a send of %d", ErrQuota, t, q.Bytes, q.BlobBytes, qt.MaxBytes, tgtBlobBytes[t])
		}
	}
	if err := b.checkQuota(SpacePublishes, &b.ctr.Publish, pubBytes); err != nil {
		return err
	}
	if err := b.checkQuota(SpaceDeadLetters, &b.ctr.Dead, int64(len(deadVal))); err != nil {
		return err
	}
	if err := b.checkQuota(SpaceLogs, &b.ctr.Logs, logBytes); err != nil {
		// Logs are diagnostics: a commit is never refused for them (a
		// successful invocation was dead-lettered when its lines were
		// larger than the whole quota, and every event of every function
		// that logs was retried for ever while a reject_new logs space
		// stayed full). They are left out and counted rejected.
		logVals = nil
	}
	chained, chainVals, err := s.chain(b, c, inboxSize, recs, updates, blobs)
	if err != nil {
		return err
	}
	// 4. Mutate: nothing below may fail except fatally.
	if c.InboxSeq != 0 {
		b.del(seqKey(pInbox, c.InboxSeq))
		b.ctr.Inbox.remove(inboxSize)
		b.ctr.Consumed++
		// Folded into the head after the batch; a failed batch reloads
		// inboxDone from disk.
		s.inboxDone[c.InboxSeq] = struct{}{}
	}
	for _, st := range state {
		if b.stateSz == nil {
			b.stateSz = make(map[string]int64)
		}
		if st.val == nil {
			b.del(st.key)
			b.stateSz[string(st.key)] = -1
		} else {
			b.set(st.key, st.val)
			b.stateSz[string(st.key)] = int64(len(st.key) + len(st.val))
		}
	}
	for fn, d := range stateDelta {
		// Folded in at once, like inboxDone: a failed batch reloads the
		// sizes from disk.
		if s.stateBytes[fn] += d; s.stateBytes[fn] <= 0 {
			delete(s.stateBytes, fn)
		}
	}
	// Blob sends first: a record committed with a blob (a function that
	// writes one and emits a record naming it) reaches a target after it.
	var outFirst map[string]uint64 // first outbox sequence this commit adds, per target
	if len(sends) > 0 || len(tgtBytes) > 0 {
		outFirst = make(map[string]uint64, len(tgtBytes))
	}
	b.writeBlobSends(sends, outFirst)
	if len(recs) > 0 {
		first := b.ctr.Records.Next
		for i := range recs {
			r := &recs[i]
			b.ctr.Records.Next++
			b.ctr.Records.add(len(recVals[i]))
			b.set(seqKey(pRecord, r.Seq), recVals[i])
			b.set(indexKey(r), nil)
			for _, t := range r.Targets {
				q := b.ctr.Outbox[t]
				if q.Next == 0 {
					q = newQueue()
				}
				if _, ok := outFirst[t]; !ok {
					outFirst[t] = q.Next
				}
				b.set(nameSeqKey(pOutbox, t, q.Next), recVals[i])
				q.Next++
				q.add(len(recVals[i]))
				b.ctr.Outbox[t] = q
			}
		}
		if err := b.enforce(SpaceRecords, first); err != nil {
			return err
		}
	}
	for t, keep := range outFirst {
		if err := b.enforceOutbox(t, keep); err != nil {
			return err
		}
	}
	if len(c.Publishes) > 0 {
		first := b.ctr.Publish.Next
		for i := range c.Publishes {
			p := c.Publishes[i]
			p.Seq = b.ctr.Publish.Next
			b.ctr.Publish.Next++
			b.ctr.Publish.add(len(pubVals[i]))
			b.s.pubSize.put(p.Seq, len(pubVals[i]))
			b.set(seqKey(pPublish, p.Seq), pubVals[i])
			res.Publishes = append(res.Publishes, p)
			b.pubNew = append(b.pubNew, Publish{Seq: p.Seq, Topic: p.Topic, Payload: bytes.Clone(p.Payload), QoS: p.QoS, Retain: p.Retain})
		}
		if err := b.enforce(SpacePublishes, first); err != nil {
			return err
		}
	}
	if c.DeadLetter != nil {
		seq := b.ctr.Dead.Next
		b.ctr.Dead.Next++
		b.ctr.Dead.add(len(deadVal))
		b.set(seqKey(pDead, seq), deadVal)
		b.set(nameSeqKey(pDeadIdx, c.DeadLetter.Function, seq), binary.AppendUvarint(nil, uint64(len(deadVal))))
		s.deadBytes[c.DeadLetter.Function] += int64(len(deadVal))
		b.wroteIndexed(pDeadIdx, c.DeadLetter.Function, seq)
		c.DeadLetter.Seq = seq
		if fp := c.DeadLetter.Fingerprint; len(fp) == FingerprintSize {
			b.set(senderKey(c.DeadLetter.Sender, c.DeadLetter.PacketID), senderValue(fp, b.now))
		}
		if err := b.enforce(SpaceDeadLetters, seq); err != nil {
			return err
		}
	}
	if len(logVals) > 0 {
		first := b.ctr.Logs.Next
		for i := range c.Logs {
			seq := b.ctr.Logs.Next
			b.ctr.Logs.Next++
			b.ctr.Logs.add(len(logVals[i]))
			b.set(seqKey(pLog, seq), logVals[i])
			b.set(nameSeqKey(pLogIdx, c.Logs[i].Function, seq), binary.AppendUvarint(nil, uint64(len(logVals[i]))))
			s.logBytes[c.Logs[i].Function] += int64(len(logVals[i]))
			b.wroteIndexed(pLogIdx, c.Logs[i].Function, seq)
			c.Logs[i].Seq = seq
		}
		if err := b.enforce(SpaceLogs, first); err != nil {
			return err
		}
	}
	if u := c.Usage; u != nil {
		if err := b.addUsage(u); err != nil {
			return err
		}
	}
	if len(blobs) > 0 || len(blobRefs) > 0 {
		b.writeBlobs(blobs, blobRefs, blobBuckets)
	}
	for i := range chained {
		seq := b.ctr.Inbox.Next
		b.ctr.Inbox.Next++
		b.ctr.Inbox.add(len(chainVals[i]))
		b.set(seqKey(pInbox, seq), chainVals[i])
		s.inboxSize.put(seq, len(chainVals[i]))
		chained[i].Seq = seq
	}
	// Last, after everything that may refuse the commit: acknowledging
	// changes the committer's size window at once.
	// Each sequence once, as in AckPublishes: a repeat read back from disk
	// in the same batch would be counted twice.
	for i, seq := range c.AckPublishes {
		if slices.Contains(c.AckPublishes[:i], seq) {
			continue
		}
		if err := b.ackPublish(seq); err != nil {
			return err
		}
	}
	res.Records = recs
	res.Inbox = chained
	return nil
}

// chain calls c.Chain for the commit's records and state updates and
// encodes the inbox entries it returns, checking them and the inbox quota.
// It does not mutate b.
func (s *Store) chain(b *batch, c *Commit, consumed int64, recs []Record, updates []StateUpdate, blobs []blobChange) ([]InboxEntry, [][]byte, error) {
	if c.Chain == nil {
		return nil, nil, nil
	}
	var out []InboxEntry
	for i := range recs {
		r := recs[i] // a copy: Chain must not change what is stored
		out = append(out, c.Chain(Change{Record: &r})...)
	}
	for i := range updates {
		out = append(out, c.Chain(Change{State: &updates[i]})...)
	}
	for i := range blobs {
		if blobs[i].val != nil {
			bi := blobs[i].info
			out = append(out, c.Chain(Change{Blob: &bi})...)
		}
	}
	if len(out) > c.ChainMax {
		return nil, nil, fmt.Errorf("%w (%d entries, ChainMax %d)", ErrChainOverflow, len(out), c.ChainMax)
	}
	vals := make([][]byte, len(out))
	var total, txn int64
	for i := range out {
		e := &out[i]
		if err := validName("function", e.Function, false); err != nil {
			return nil, nil, err
		}
		if len(e.Fingerprint) != 0 {
			return nil, nil, fmt.Errorf("%w: a chained inbox entry has no fingerprint", ErrInvalid)
		}
		if len(e.Event) > s.opts.MaxValueBytes {
			return nil, nil, fmt.Errorf("%w: chained event of %d bytes, limit %d", ErrTooLarge, len(e.Event), s.opts.MaxValueBytes)
		}
		vals[i] = encodeInbox(e, b.now)
		total += int64(len(vals[i]))
		txn += s.vEntryEst(9, len(vals[i]))
	}
	if txn > c.chainEst {
		// Larger than Commit reserved (a state event carrying a large old
		// value): refused whole, before anything is changed, rather than
		// overflow the transaction and fail the batch.
		return nil, nil, fmt.Errorf("%w: chained entries of about %d bytes, %d reserved", ErrTooLarge, txn, c.chainEst)
	}
	// The entry this commit consumes leaves the inbox in the same write.
	if q := s.opts.quota(SpaceInbox); q.MaxBytes > 0 && total > 0 && b.ctr.Inbox.Bytes-consumed+total > q.MaxBytes {
		b.ctr.Rejected[SpaceInbox]++
		return nil, nil, fmt.Errorf("%w: inbox holds %d bytes (%d consumed by this commit), quota %d, adding %d", ErrQuota, b.ctr.Inbox.Bytes, consumed, q.MaxBytes, total)
	}
	return out, vals, nil
}

// chainEventRoom is what a chained event adds to the record, state value
// or blob it carries: its id, captures (stream, record id, source,
// function, key), trigger and names.
const chainEventRoom = 512

// intakeShare is the part of an inbox quota of max bytes new events may
// fill (Enqueue): seven eighths. The rest is kept for the entries that
// processing commits chain, so that a backlog of events whose functions
// emit to streams or state other functions follow can still be processed
// when intake has filled its share: otherwise each such commit would be
// refused for the quota it is about to free, and retried without end.
func intakeShare(max int64) int64 { return max - max/8 }

func dedupe(ts []string) []string {
	if len(ts) < 2 {
		return ts
	}
	out := make([]string, 0, len(ts))
	seen := map[string]bool{}
	for _, t := range ts {
		if !seen[t] {
			seen[t] = true
			out = append(out, t)
		}
	}
	return out
}

// checkQuota refuses n more bytes in a RejectNew space that would exceed its
// quota, and an entry set larger than any quota.
// stateSize returns the bytes (key and value) of the state key k before
// the commit being applied: 0 when absent. It is exact: a key an earlier
// request of the batch wrote has the size it wrote; otherwise the read
// cache's value, or Badger's item: its size for a value kept in the LSM
// tree, the value itself for one in the value log (whose item size is a
// few bytes off: subtracted at every overwrite, that error would add up).
func (b *batch) stateSize(k []byte) (int64, error) {
	if n, ok := b.stateSz[string(k)]; ok {
		return max(n, 0), nil
	}
	if cv, ok := b.s.cache.get(k); ok {
		if !cv.found {
			return 0, nil
		}
		return int64(len(k) + len(cv.val)), nil
	}
	item, err := b.txn.Get(k)
	if errors.Is(err, badger.ErrKeyNotFound) {
		return 0, nil
	}
	if err != nil {
		return 0, fatal(err)
	}
	n := item.ValueSize()
	if n >= b.s.valueThreshold-64 {
		// Possibly in the value log: read it (mapped, and written
		// recently in practice) for its exact length.
		if err := item.Value(func(v []byte) error { n = int64(len(v)); return nil }); err != nil {
			return 0, fatal(err)
		}
	}
	return int64(len(k)) + n, nil
}

// checkStateQuota refuses state changes that would take a function's
// state over its quota (Options.Quotas[SpaceState], per function). A
// change that shrinks or keeps it is always taken.
func (s *Store) checkStateQuota(delta map[string]int64) error {
	q := s.opts.quota(SpaceState)
	if q.MaxBytes <= 0 {
		return nil
	}
	for fn, d := range delta {
		if d > 0 && s.stateBytes[fn]+d > q.MaxBytes {
			return fmt.Errorf("%w: function %q: %d bytes of state and %d more, quota %d", ErrStateQuota, fn, s.stateBytes[fn], d, q.MaxBytes)
		}
	}
	return nil
}

func (b *batch) checkQuota(space string, q *queue, n int64) error {
	if n == 0 {
		return nil
	}
	qt := b.s.opts.quota(space)
	if qt.MaxBytes <= 0 {
		return nil
	}
	if n > qt.MaxBytes {
		// Larger than the whole quota: no wait makes room for it, so the
		// refusal is permanent (IsPermanent), not a full quota.
		b.ctr.Rejected[space]++
		return fmt.Errorf("%w (%w): adding %d bytes to %s, larger than its whole quota of %d", ErrQuota, ErrTooLarge, n, space, qt.MaxBytes)
	}
	if qt.Policy == RejectNew && q.Bytes+n > qt.MaxBytes {
		b.ctr.Rejected[space]++
		return fmt.Errorf("%w: %s holds %d bytes, quota %d, adding %d", ErrQuota, space, q.Bytes, qt.MaxBytes, n)
	}
	return nil
}

// enforce drops the oldest entries (below keep) of a sequence-keyed space
// while it is over its byte quota.
func (b *batch) enforce(space string, keep uint64) error {
	qt := b.s.opts.quota(space)
	if qt.MaxBytes <= 0 || qt.Policy == RejectNew {
		return nil
	}
	q := b.queueOf(space)
	for drops := 0; q.Bytes > qt.MaxBytes && q.Head < keep && drops < maxDropsPerWrite && b.roomFor(5*entryEst(64, 0)); drops++ {
		var err error
		if space == SpaceDeadLetters || space == SpaceLogs {
			err = b.dropFair(space, q, keep)
		} else {
			err = b.dropHead(space, q)
		}
		if err != nil {
			return err
		}
	}
	return nil
}

// fnSizes returns the bytes per function of a space with a function index
// (dead letters, logs), and its index and primary prefixes.
func (s *Store) fnSizes(space string) (map[string]int64, byte, byte) {
	if space == SpaceDeadLetters {
		return s.deadBytes, pDeadIdx, pDead
	}
	return s.logBytes, pLogIdx, pLog
}

// forgetEntry takes n bytes of function fn's entries of space off its size.
func (s *Store) forgetEntry(space, fn string, n int64) {
	if space != SpaceDeadLetters && space != SpaceLogs {
		return
	}
	m, _, _ := s.fnSizes(space)
	if m[fn] -= n; m[fn] <= 0 {
		delete(m, fn)
	}
}

// dropFair makes room in a space with a function index (dead letters,
// logs) by dropping the oldest entry, below keep, of the function that
// holds the most bytes of it: a function flooding it with failures or log
// lines pushes out its own entries first, not other functions'. When none
// of the functions has an entry below keep, it drops the head.
func (b *batch) dropFair(space string, q *queue, keep uint64) error {
	m, idx, primary := b.s.fnSizes(space)
	var tried map[string]bool
	for {
		// The function holding the most (a scan, not a sort: this runs
		// at every drop).
		fn, most := "", int64(-1)
		for f, n := range m {
			if !tried[f] && (n > most || n == most && f < fn) {
				fn, most = f, n
			}
		}
		if most < 0 {
			return b.dropHead(space, q)
		}
		seq, v, ok, err := b.oldestOf(idx, primary, fn, keep)
		if err != nil {
			return err
		}
		if !ok {
			if tried == nil {
				tried = make(map[string]bool)
			}
			tried[fn] = true
			continue
		}
		b.del(seqKey(primary, seq))
		b.del(nameSeqKey(idx, fn, seq))
		b.markGone(primary, seq)
		b.dropped(space, q, seq, fn, int64(len(v)))
		if seq == q.Head {
			q.Head++
			return b.skipHoles(space, q)
		}
		return nil
	}
}

// markGone records that the batch deleted entry seq of a space: its own
// transaction does not show a delete of the running request until the
// request is done.
func (b *batch) markGone(primary byte, seq uint64) {
	if b.gone == nil {
		b.gone = make(map[seqRef]struct{})
	}
	b.gone[seqRef{primary, seq}] = struct{}{}
}

func (b *batch) isGone(primary byte, seq uint64) bool {
	_, ok := b.gone[seqRef{primary, seq}]
	return ok
}

// seqRef names an entry of a sequence-keyed space.
type seqRef struct {
	prefix byte
	seq    uint64
}

// wroteIndexed records that the batch wrote entry seq of function fn in a
// space with a function index, for oldestOf (its snapshot does not show
// the batch's writes).
func (b *batch) wroteIndexed(idx byte, fn string, seq uint64) {
	if b.wrote == nil {
		b.wrote = make(map[dropHintKey][]uint64)
	}
	k := dropHintKey{idx, fn}
	b.wrote[k] = append(b.wrote[k], seq)
}

// oldestOf returns the oldest entry of function fn below keep in a space
// with a function index (idx) and its value. It reads the index as last
// committed, through a read-only transaction (an iterator of the batch's
// own transaction would sort all of its pending writes at every drop), a
// few dozen sequences ahead, which later drops take without reading the
// index again (new entries only come after them); then the entries the
// batch wrote itself. Entries deleted since are skipped (markGone, and a
// read of each through the batch).
func (b *batch) oldestOf(idx, primary byte, fn string, keep uint64) (uint64, []byte, bool, error) {
	key := dropHintKey{idx, fn}
	h := b.s.dropHint[key]
	if h == nil {
		h = &dropAhead{}
		b.s.dropHint[key] = h
	}
	take := func(seq uint64) ([]byte, bool, error) {
		if b.isGone(primary, seq) {
			return nil, false, nil
		}
		return b.get(seqKey(primary, seq))
	}
	for {
		if len(h.seqs) == 0 {
			if err := b.readAhead(idx, fn, h); err != nil {
				return 0, nil, false, err
			}
			if len(h.seqs) == 0 {
				break
			}
		}
		seq := h.seqs[0]
		if seq >= keep {
			return 0, nil, false, nil
		}
		h.seqs = h.seqs[1:]
		v, ok, err := take(seq)
		if err != nil || ok {
			return seq, v, ok, err
		}
	}
	for _, seq := range b.wrote[key] {
		if seq >= keep {
			break
		}
		v, ok, err := take(seq)
		if err != nil || ok {
			return seq, v, ok, err
		}
	}
	return 0, nil, false, nil
}

// skipHoles moves q.Head, past a hole, to the next entry of a space with a
// function index (dead letters, logs), where dropFair leaves runs of holes
// that would otherwise be stepped over one read at a time: it seeks the
// last committed entries with a read-only transaction, and stops at the
// first one the batch has not deleted, or at the first sequence the batch
// wrote (not in that snapshot).
func (b *batch) skipHoles(space string, q *queue) error {
	prefix := spacePrefix[space]
	written := b.startNext[prefix]
	if q.Head >= written {
		return nil // the batch's own entries: one at a time
	}
	txn := b.s.db.NewTransaction(false)
	defer txn.Discard()
	it := txn.NewIterator(badger.IteratorOptions{Prefix: []byte{prefix}})
	defer it.Close()
	for it.Seek(seqKey(prefix, q.Head)); it.Valid(); it.Next() {
		k := it.Item().Key()
		if len(k) != 9 {
			continue
		}
		seq := keySeq(k)
		if seq >= written {
			break
		}
		if b.isGone(prefix, seq) {
			continue
		}
		_, ok, err := b.get(k)
		if err != nil {
			return err
		}
		if ok {
			q.Head = seq
			return nil
		}
	}
	q.Head = max(q.Head, min(written, q.Next))
	return nil
}

// dropAheadSeqs is how many index sequences oldestOf reads at a time.
const dropAheadSeqs = 64

// readAhead reads the next sequences of function fn's index idx after
// those h held.
func (b *batch) readAhead(idx byte, fn string, h *dropAhead) error {
	txn := b.s.db.NewTransaction(false)
	defer txn.Discard()
	p := namePrefix(idx, fn)
	it := txn.NewIterator(badger.IteratorOptions{Prefix: p})
	defer it.Close()
	h.seqs = h.buf[:0]
	for it.Seek(nameSeqKey(idx, fn, h.from)); it.Valid() && len(h.seqs) < dropAheadSeqs; it.Next() {
		if k := it.Item().Key(); len(k) == len(p)+8 {
			h.seqs = append(h.seqs, keySeq(k))
		}
	}
	if n := len(h.seqs); n > 0 {
		h.from = h.seqs[n-1] + 1
	}
	return nil
}

// dropAhead is what oldestOf read of a function's index and has not
// handed out yet.
type dropAhead struct {
	seqs []uint64
	buf  [dropAheadSeqs]uint64
	from uint64 // the next read starts here
}

// dropHintKey names a function's index in Store.dropHint.
type dropHintKey struct {
	idx byte
	fn  string
}

// dropped counts the drop of an entry of n bytes of function fn.
func (b *batch) dropped(space string, q *queue, seq uint64, fn string, n int64) {
	if space == SpaceDeadLetters {
		b.s.deadDrops.note(b.s.log, fn, seq)
	}
	b.s.forgetEntry(space, fn, n)
	q.remove(n)
	q.Drops++
	q.DropBytes += n
}

func (b *batch) enforceOutbox(t string, keep uint64) error {
	qt := b.s.opts.quota("outbox:" + t)
	if qt.MaxBytes <= 0 || qt.Policy == RejectNew {
		return nil
	}
	q := b.ctr.Outbox[t]
	// A drop deletes the entry, and for a blob send its index key and a
	// reference.
	// The files of pending blob sends count: a target down while one blob
	// was replaced again and again kept every version on disk (the
	// entries are a few dozen bytes).
	for drops := 0; (q.Bytes > qt.MaxBytes || q.Bytes+q.BlobBytes > qt.MaxBytes && q.Count > 1) && q.Head < keep && drops < maxDropsPerWrite && b.roomFor(2*entryEst(10+len(t), 0)+entryEst(33, 8)); drops++ {
		if err := b.dropOutboxHead(t, &q); err != nil {
			return err
		}
	}
	b.ctr.Outbox[t] = q
	return nil
}

func (b *batch) queueOf(space string) *queue {
	switch space {
	case SpaceRecords:
		return &b.ctr.Records
	case SpacePublishes:
		return &b.ctr.Publish
	case SpaceLogs:
		return &b.ctr.Logs
	case SpaceDeadLetters:
		return &b.ctr.Dead
	case SpaceInbox:
		return &b.ctr.Inbox
	}
	panic("store: unknown space " + space)
}

var spacePrefix = map[string]byte{SpaceRecords: pRecord, SpacePublishes: pPublish, SpaceLogs: pLog, SpaceDeadLetters: pDead}

// dropHead deletes the entry at q.Head (with its index keys) and counts
// the drop; a hole (deleted out of order) just advances the head.
func (b *batch) dropHead(space string, q *queue) error {
	seq := q.Head
	prefix := spacePrefix[space]
	k := seqKey(prefix, seq)
	v, ok, err := b.get(k)
	if err != nil {
		return err
	}
	if ok && b.isGone(prefix, seq) {
		ok = false // deleted by the running request (dropFair)
	}
	q.Head++
	if space == SpacePublishes {
		delete(b.s.pubDone, seq)
	}
	if !ok {
		if space == SpaceDeadLetters || space == SpaceLogs {
			return b.skipHoles(space, q)
		}
		return nil
	}
	b.del(k)
	b.markGone(prefix, seq)
	switch space {
	case SpaceRecords:
		r, err := decodeRecord(v)
		if err != nil {
			b.s.log.Error("dropping undecodable record", "seq", seq, "err", err)
		} else {
			b.del(indexKey(&r))
		}
	case SpaceLogs:
		l, err := decodeLog(seq, v)
		if err == nil {
			b.del(nameSeqKey(pLogIdx, l.Function, seq))
		}
		b.dropped(space, q, seq, l.Function, int64(len(v)))
		return nil
	case SpaceDeadLetters:
		d, err := decodeDead(seq, v)
		if err == nil {
			b.del(nameSeqKey(pDeadIdx, d.Function, seq))
		}
		b.dropped(space, q, seq, d.Function, int64(len(v)))
		return nil
	}
	q.remove(int64(len(v)))
	q.Drops++
	q.DropBytes += int64(len(v))
	return nil
}

func (b *batch) dropOutboxHead(t string, q *queue) error {
	k := nameSeqKey(pOutbox, t, q.Head)
	v, ok, err := b.get(k)
	if err != nil {
		return err
	}
	q.Head++
	if !ok {
		return nil
	}
	b.del(k)
	if len(v) > 0 && v[0] == tagBlobSend {
		bs, _, sum, err := decodeBlobSend(v)
		if err != nil {
			return fatal(err)
		}
		b.releaseSend(t, q.Head-1, sum, bs.Size, q)
		q.BlobDrops++
		b.s.log.Warn("blob send dropped by the outbox quota: not sent", "target", t, "bucket", bs.Bucket, "name", bs.Name, "id", bs.ID)
	}
	q.remove(int64(len(v)))
	q.Drops++
	q.DropBytes += int64(len(v))
	return nil
}

// recordTS is the time a record is indexed under: its event time as
// received, or its processing time when the event had none.
func recordTS(r *Record) int64 {
	if r.EventTS != 0 {
		return r.EventTS
	}
	return r.ProcessedTS
}

// PendingPublishes returns up to limit (default 100) publishes not yet
// acknowledged with Seq > after, ascending.
//
// The publishes of the latest commits come from memory (pubCache); their
// Topic and Payload are shared: callers must not modify them.
func (s *Store) PendingPublishes(ctx context.Context, after uint64, limit int) ([]Publish, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if limit <= 0 {
		limit = 100
	}
	head := s.counters().Publish.Head
	s.closeMu.RLock()
	closed := s.closed
	s.closeMu.RUnlock()
	if closed {
		return nil, ErrClosed
	}
	if after == math.MaxUint64 {
		return nil, nil // nothing follows (after+1 would wrap to the start)
	}
	if ps, ok := s.pubs.read(max(after+1, head), limit); ok {
		return ps, nil
	}
	return pending(ctx, s, pPublish, head, after, limit, decodePublish)
}

// AckPublishes removes performed publishes from the publish outbox. Unknown
// or already acknowledged sequences are ignored.
func (s *Store) AckPublishes(ctx context.Context, seqs ...uint64) error {
	if len(seqs) == 0 {
		return nil
	}
	// Each sequence once: a repeat read back from disk in the same request
	// would be counted twice.
	for i := 1; i < len(seqs); i++ {
		if seqs[i] <= seqs[i-1] {
			seqs = slices.Compact(slices.Sorted(slices.Values(seqs)))
			break
		}
	}
	for len(seqs) > 0 {
		n := min(len(seqs), maxAckPublishes)
		chunk := seqs[:n]
		seqs = seqs[n:]
		err := s.submit(ctx, &request{est: int64(n) * entryEst(9, 0), fn: func(b *batch) error {
			for _, seq := range chunk {
				if err := b.ackPublish(seq); err != nil {
					return err
				}
			}
			return nil
		}})
		if err != nil {
			return err
		}
	}
	return nil
}

// ackPublish removes the local publish seq from the outbox. A sequence
// that is not waiting (acknowledged before, dropped by quota, never
// written) is skipped: acknowledging is idempotent.
func (b *batch) ackPublish(seq uint64) error {
	s := b.s
	if seq < b.ctr.Publish.Head || seq >= b.ctr.Publish.Next {
		return nil
	}
	k := seqKey(pPublish, seq)
	// The size of the entry, from the committer's window of recent
	// publishes or else read back.
	n, ok := s.pubSize.get(seq)
	if n == sizeRemoved {
		return nil
	}
	if !ok {
		item, err := b.txn.Get(k)
		if errors.Is(err, badger.ErrKeyNotFound) {
			return nil
		}
		if err != nil {
			return fatal(err)
		}
		n = item.ValueSize()
	}
	b.del(k)
	b.ctr.Publish.remove(n)
	s.pubSize.removed(seq)
	b.pubA = append(b.pubA, seq)
	return nil
}

// OutboxStats describes one upstream outbox.
type OutboxStats struct {
	Backlog   int64         // entries waiting: records and blob sends
	Bytes     int64         // their stored size
	OldestAge time.Duration // age of the oldest waiting entry (by write time), 0 if empty
	Dropped   int64         // entries dropped by quota or age since creation
	Head      uint64        // sequence of the oldest waiting entry
	Next      uint64        // sequence the next entry will get
	// Blob sends among Backlog and Dropped, and the bytes of the objects
	// of the waiting ones.
	Blobs        int64
	BlobBytes    int64
	BlobsDropped int64
}

// OutboxStats returns the backlog of target's outbox (zero if unknown).
func (s *Store) OutboxStats(target string) OutboxStats {
	q, ok := s.counters().Outbox[target]
	if !ok {
		return OutboxStats{}
	}
	st := OutboxStats{Backlog: q.Count, Bytes: q.Bytes, Dropped: q.Drops, Head: q.Head, Next: q.Next,
		Blobs: q.Blobs, BlobBytes: q.BlobBytes, BlobsDropped: q.BlobDrops}
	if q.Count > 0 {
		_ = s.view(context.Background(), func(txn *badger.Txn) error {
			return scanName(txn, pOutbox, target, q.Head, 1, func(_ uint64, v []byte) error {
				if ts := valueTime(v); ts > 0 {
					st.OldestAge = max(0, time.Since(time.UnixMilli(ts)))
				}
				return nil
			})
		})
	}
	return st
}

// OutboxBounds returns the sequence of the oldest waiting entry of
// target's outbox and the first sequence OutboxRead does not hand out yet
// (the next entry's; with DurabilityInterval, the first not synced yet),
// from the in-memory counters: OutboxRead after next-1 finds nothing.
func (s *Store) OutboxBounds(target string) (head, next uint64) {
	q := s.counters().Outbox[target]
	next = q.Next
	if d := s.durableNext.Load(); d != nil {
		next = min(next, (*d)[target])
	}
	return q.Head, next
}

// OutboxTargets lists the targets that have (or had) an outbox.
func (s *Store) OutboxTargets() []string {
	c := s.counters()
	out := make([]string, 0, len(c.Outbox))
	for t := range c.Outbox {
		out = append(out, t)
	}
	return out
}

// OutboxRead returns up to limit (default 100) entries of target's outbox
// with Seq > after, ascending, stopping before maxBytes (> 0) of values
// would be exceeded (at least one entry is returned). A blob send comes
// with its metadata record (OutboxEntry.Blob and Record). With
// DurabilityInterval only entries already synced to disk are returned: an
// entry a power loss could take back is not sent upstream (its record id
// would then be reused by another record, which an upstream that drops
// duplicate ids would drop).
func (s *Store) OutboxRead(ctx context.Context, target string, after uint64, limit int, maxBytes int) ([]OutboxEntry, error) {
	if err := validName("target", target, false); err != nil {
		return nil, err
	}
	if limit <= 0 {
		limit = 100
	}
	if after == math.MaxUint64 {
		return nil, nil // nothing follows (after+1 would wrap to the start)
	}
	q := s.counters().Outbox[target]
	start := max(after+1, q.Head)
	var out []OutboxEntry
	total := 0
	end := q.Next // first sequence not handed out
	if d := s.durableNext.Load(); d != nil {
		end = min(end, (*d)[target])
	}
	if start >= end {
		return nil, s.checkOpen()
	}
	err := s.view(ctx, func(txn *badger.Txn) error {
		return scanName(txn, pOutbox, target, start, limit, func(seq uint64, v []byte) error {
			if seq >= end {
				return errStop
			}
			if maxBytes > 0 && len(out) > 0 && total+len(v) > maxBytes {
				return errStop
			}
			e := OutboxEntry{Seq: seq, Size: len(v)}
			if len(v) > 0 && v[0] == tagBlobSend {
				bs, r, _, err := decodeBlobSend(v)
				if err != nil {
					return fmt.Errorf("outbox %s/%d: %w", target, seq, err)
				}
				e.Record, e.Blob = r, &bs
			} else {
				r, err := decodeRecord(v)
				if err != nil {
					return fmt.Errorf("outbox %s/%d: %w", target, seq, err)
				}
				e.Record = r
			}
			total += len(v)
			out = append(out, e)
			return nil
		})
	})
	if errors.Is(err, errStop) {
		err = nil
	}
	return out, err
}

var errStop = errors.New("stop")

// scanName iterates a name-keyed sequence space (prefix name 0x00 seq).
func scanName(txn *badger.Txn, prefix byte, name string, start uint64, limit int, f func(seq uint64, v []byte) error) error {
	p := namePrefix(prefix, name)
	it := txn.NewIterator(badger.IteratorOptions{Prefix: p}) // no prefetch: see scanSeqCtx
	defer it.Close()
	n := 0
	for it.Seek(nameSeqKey(prefix, name, start)); it.Valid(); it.Next() {
		item := it.Item()
		k := item.Key()
		if len(k) != len(p)+8 {
			continue
		}
		if err := item.Value(func(v []byte) error { return f(keySeq(k), v) }); err != nil {
			return err
		}
		n++
		if limit > 0 && n >= limit {
			return nil
		}
	}
	return nil
}

// OutboxAck deletes every entry of target's outbox with Seq <= upTo: the
// upstream has them. It walks from the outbox head, never over deleted keys.
// The blob sends among them give back their references in the same write;
// an object left without any is removed once the write is durable.
func (s *Store) OutboxAck(ctx context.Context, target string, upTo uint64) error {
	if err := validName("target", target, false); err != nil {
		return err
	}
	if err := s.checkOpen(); err != nil {
		return err
	}
	for {
		q, ok := s.counters().Outbox[target]
		if !ok || q.Head > upTo || q.Head >= q.Next {
			return nil
		}
		const chunk = 1024
		// At most n entries (the head only moves forward); at most rels
		// of them blob sends, each with an index key and a reference to
		// write (fewer room than blob sends in the range: the ack stops
		// before the first one that does not fit, the next round goes on).
		n := int64(min(upTo-q.Head+1, chunk))
		rels := min(q.Blobs, n)
		est := n*entryEst(len(target)+10, 0) + rels*(entryEst(len(target)+10, 0)+entryEst(33, 8))
		err := s.submit(ctx, &request{est: est, fn: func(b *batch) error {
			q := b.ctr.Outbox[target]
			end := min(upTo, q.Next-1, q.Head+chunk-1)
			if q.Head > end {
				return nil
			}
			var sends []ackedSend
			if q.Blobs > 0 {
				var err error
				if sends, err = b.blobSendsIn(target, q.Head, end); err != nil {
					return err
				}
				if int64(len(sends)) > rels {
					end = sends[rels].seq - 1
					sends = sends[:rels]
					if q.Head > end {
						return nil
					}
				}
			}
			// One key-only iterator over [Head, end] instead of a point
			// lookup per entry (a Get searches every level).
			p := namePrefix(pOutbox, target)
			it := b.txn.NewIterator(badger.IteratorOptions{Prefix: p})
			var dels [][]byte
			var sizes []int64
			for it.Seek(nameSeqKey(pOutbox, target, q.Head)); it.Valid(); it.Next() {
				item := it.Item()
				k := item.Key()
				if len(k) != len(p)+8 {
					continue
				}
				if keySeq(k) > end {
					break
				}
				dels = append(dels, item.KeyCopy(nil))
				sizes = append(sizes, item.ValueSize())
			}
			it.Close()
			for i, k := range dels {
				b.del(k)
				q.remove(sizes[i])
			}
			for _, r := range sends {
				b.releaseSend(target, r.seq, r.sum, r.size, &q)
			}
			q.Head = end + 1
			b.ctr.Outbox[target] = q
			return nil
		}})
		if err != nil {
			return err
		}
	}
}

// dropWarner logs dropped dead letters (events that can no longer be
// replayed) at most once per deadDropLogEvery, with how many went since
// the last line: the count alone (Stats) is easily missed.
type dropWarner struct {
	mu   sync.Mutex
	last time.Time
	n    int
}

// deadDropLogEvery is how often dropped dead letters are logged at most.
const deadDropLogEvery = time.Minute

func (w *dropWarner) note(log *slog.Logger, function string, seq uint64) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.n++
	if now := time.Now(); now.Sub(w.last) >= deadDropLogEvery {
		log.Warn("dead letters dropped to stay within the deadletters quota (or age): those events can no longer be replayed",
			"dropped", w.n, "oldest_function", function, "seq", seq)
		w.last, w.n = now, 0
	}
}
