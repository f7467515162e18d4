package store

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"time"

	badger "github.com/dgraph-io/badger/v4"
)

// retentionChunk bounds the drops of one retention request.
const retentionChunk = 256

// RunRetention applies the quotas (bytes and age) of every key space now,
// dropping the oldest entries of drop_oldest spaces and counting every drop.
// It returns the number of entries dropped. The background loop calls it
// every Options.RetentionInterval.
func (s *Store) RunRetention(ctx context.Context) (int, error) {
	total := 0
	var blobErr error
	for {
		n, err := s.blobRetention(ctx, retentionChunk)
		total += n
		if err != nil {
			if errors.Is(err, ErrClosed) || ctx.Err() != nil {
				return total, err
			}
			// The queues are trimmed all the same: one failing part of
			// retention must not stop the others.
			blobErr = fmt.Errorf("blob retention: %w", err)
			break
		}
		if n == 0 {
			break
		}
	}
	for {
		n := 0
		if err := s.checkOpen(); err != nil {
			return total, err
		}
		err := s.submit(ctx, &request{est: s.maxTxnSize / 2, fn: func(b *batch) error {
			var err error
			n, err = b.trimAll(retentionChunk)
			return err
		}})
		if err != nil {
			// n may still be written by the committer when ctx ended.
			return total, errors.Join(blobErr, err)
		}
		total += n
		if n == 0 && !s.senderMore.Load() && !s.aheadMore.Load() {
			return total, blobErr
		}
	}
}

// trimAll drops up to budget entries over quota or age, oldest first.
func (b *batch) trimAll(budget int) (int, error) {
	cutoff := func(q Quota) int64 {
		if q.MaxAge <= 0 {
			return 0
		}
		return b.now - q.MaxAge.Milliseconds()
	}
	n := 0
	b.s.aheadMore.Store(false)
	for _, space := range []string{SpaceRecords, SpacePublishes, SpaceLogs, SpaceDeadLetters} {
		qt := b.s.opts.quota(space)
		if qt.MaxBytes <= 0 && qt.MaxAge <= 0 {
			continue
		}
		q := b.queueOf(space)
		cut := cutoff(qt)
		for n < budget && q.Head < q.Next && q.Count > 0 && b.roomFor(5*entryEst(64, 0)) {
			overBytes := qt.MaxBytes > 0 && qt.Policy == DropOldest && q.Bytes > qt.MaxBytes
			over := overBytes
			if !over && cut != 0 {
				v, ok, err := b.get(seqKey(spacePrefix[space], q.Head))
				if err != nil {
					return n, err
				}
				if !ok {
					// A hole (deleted out of order): step over it, as
					// dropHead does (a publish acknowledged out of order
					// is in pubDone; dead letters and logs dropped per
					// function leave runs of them).
					if space == SpacePublishes {
						delete(b.s.pubDone, q.Head)
					}
					q.Head++
					if space == SpaceDeadLetters || space == SpaceLogs {
						if err := b.skipHoles(space, q); err != nil {
							return n, err
						}
					}
					continue
				}
				ts := valueTime(v)
				over = ts > 0 && ts < cut
				if ts > 0 && !believable(ts, b.now) {
					var err error
					if over, err = b.writtenBefore(space, []byte{spacePrefix[space]}, q.Head, cut); err != nil {
						return n, err
					}
				}
			}
			if !over {
				break
			}
			var err error
			if (space == SpaceDeadLetters || space == SpaceLogs) && overBytes {
				err = b.dropFair(space, q, q.Next)
			} else {
				err = b.dropHead(space, q)
			}
			if err != nil {
				return n, err
			}
			n++
		}
	}
	if n < budget && (b.s.senderMore.Load() || b.s.senderTrimDue(b.now)) {
		m, end, err := b.trimSenders(b.now-b.s.opts.SenderSlotTTL.Milliseconds(), budget-n)
		n += m
		if err != nil {
			return n, err
		}
		b.s.senderMore.Store(!end)
		if end {
			b.s.senderTrimmed(b.now) // the whole prefix was walked
		}
	}
	if cut := cutoff(b.s.opts.quota(SpaceUsage)); cut != 0 && n < budget {
		m, err := b.trimUsage(cut, budget-n)
		n += m
		if err != nil {
			return n, err
		}
	}
	for t := range b.ctr.Outbox {
		qt := b.s.opts.quota("outbox:" + t)
		if qt.MaxBytes <= 0 && qt.MaxAge <= 0 {
			continue
		}
		q := b.ctr.Outbox[t]
		cut := cutoff(qt)
		for n < budget && q.Head < q.Next && q.Count > 0 && b.roomFor(5*entryEst(64, 0)) {
			// Pending blob contents count (their files stay until sent),
			// but the newest entry stays (as at write time).
			overBytes := qt.MaxBytes > 0 && qt.Policy == DropOldest && (q.Bytes > qt.MaxBytes || q.Bytes+q.BlobBytes > qt.MaxBytes && q.Count > 1)
			over := overBytes
			if !over && cut != 0 {
				v, ok, err := b.get(nameSeqKey(pOutbox, t, q.Head))
				if err != nil {
					return n, err
				}
				if !ok {
					q.Head++
					continue
				}
				ts := valueTime(v)
				over = ts > 0 && ts < cut
				if ts > 0 && !believable(ts, b.now) {
					var err error
					if over, err = b.writtenBefore("outbox:"+t, namePrefix(pOutbox, t), q.Head, cut); err != nil {
						return n, err
					}
				}
			}
			if !over {
				break
			}
			if err := b.dropOutboxHead(t, &q); err != nil {
				return n, err
			}
			n++
		}
		b.ctr.Outbox[t] = q
	}
	return n, nil
}

// believableSince is the earliest write time age retention believes:
// 2025-01-01 UTC, before this software existed. A Pi without a clock
// boots in 1970 and writes with that time until NTP sets it; such an
// entry's age is not its stamp's. (A fake-hwclock restores the time of
// its last save instead: stamps behind by the downtime, believed.)
var believableSince = time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC).UnixMilli()

// believable reports whether write time ts (ms) can be taken as the time
// of the write: neither before believableSince nor later than now.
func believable(ts, now int64) bool { return ts >= believableSince && ts <= now }

// aheadScan bounds the entries one retention request reads past a head
// stamped in the future (writtenBefore); the next request of the same
// pass goes on (Store.aheadMore), so that writes go in between.
const aheadScan = 1024

// aheadMark is what writtenBefore found behind the head of a queue: the
// first entry after it stamped no later than the clock (seq, ts; seq 0:
// none yet), or how far it looked (scanned, from the head from).
type aheadMark struct {
	seq           uint64
	ts            int64
	from, scanned uint64
}

// writtenBefore reports whether the entry at head, whose stamp is not
// believable (later than now: written while the clock was ahead; before
// believableSince: written before NTP set a clock that booted in 1970),
// is older than cut. Entries are written in sequence order, so the head
// was written before every later entry: before the first one whose stamp
// is believable. When that stamp is before cut, the head is older than
// cut. Without this a head from the future stopped age retention until
// the clock reached its stamp, and with it every entry written after it,
// however old; and everything written before NTP synced (dead letters,
// unsent outbox entries with a max_age) was dropped at the first pass
// after it, however new.
//
// keys is the prefix of the queue's keys (each the prefix and an 8-byte
// sequence). The entry found is remembered (b.s.ahead) and checked with one
// read at the next call, so a run of entries stamped in the future is read
// once, not at every pass; a head that is not in the future (the normal
// case) never comes here. At most aheadScan entries are read per call;
// when it stops there, it sets b.s.aheadMore and RunRetention sends another
// request.
func (b *batch) writtenBefore(queue string, keys []byte, head uint64, cut int64) (bool, error) {
	if b.s.ahead == nil {
		b.s.ahead = map[string]aheadMark{}
	}
	m := b.s.ahead[queue]
	if m.seq > head {
		v, ok, err := b.get(append(keys[:len(keys):len(keys)], binary.BigEndian.AppendUint64(nil, m.seq)...))
		if err != nil {
			return false, err
		}
		if ok && valueTime(v) == m.ts {
			return m.ts > 0 && m.ts < cut, nil
		}
	}
	start := head + 1
	if m.seq == 0 && m.from <= head && m.scanned > start {
		start = m.scanned // go on where the previous call stopped
	}
	m = aheadMark{from: head, scanned: start}
	txn := b.s.db.NewTransaction(false)
	defer txn.Discard()
	it := txn.NewIterator(badger.IteratorOptions{Prefix: keys})
	defer it.Close()
	n := 0
	for it.Seek(binary.BigEndian.AppendUint64(append([]byte(nil), keys...), start)); it.Valid() && n < aheadScan; it.Next() {
		item := it.Item()
		k := item.Key()
		if len(k) != len(keys)+8 {
			continue
		}
		n++
		seq := keySeq(k)
		m.scanned = seq + 1
		var ts int64
		if err := item.Value(func(v []byte) error { ts = valueTime(v); return nil }); err != nil {
			return false, fatal(err)
		}
		if believable(ts, b.now) {
			m.seq, m.ts = seq, ts
			break
		}
	}
	if m.seq == 0 && n == aheadScan && it.Valid() {
		b.s.aheadMore.Store(true)
	}
	b.s.ahead[queue] = m
	return m.seq != 0 && m.ts < cut, nil
}

func (s *Store) retentionLoop() {
	t := time.NewTicker(s.opts.RetentionInterval)
	defer t.Stop()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() {
		<-s.quit
		cancel()
	}()
	for {
		select {
		case <-s.quit:
			return
		case <-t.C:
			if n, err := s.RunRetention(ctx); err != nil && !errors.Is(err, ErrClosed) && ctx.Err() == nil {
				s.log.Warn("retention pass", "err", err)
			} else if n > 0 {
				s.log.Info("retention dropped entries", "count", n)
			}
		}
	}
}

// RunValueLogGC rewrites value-log files until Badger has nothing left to
// rewrite (each Badger call rewrites at most one file) and returns how many
// files it rewrote.
func (s *Store) RunValueLogGC(ctx context.Context) (int, error) {
	n := 0
	for {
		if err := ctx.Err(); err != nil {
			return n, err
		}
		if err := s.roomForGC(); err != nil {
			return n, err
		}
		s.closeMu.RLock()
		if s.closed {
			s.closeMu.RUnlock()
			return n, ErrClosed
		}
		err := s.db.RunValueLogGC(0.5)
		s.closeMu.RUnlock()
		if errors.Is(err, badger.ErrNoRewrite) || errors.Is(err, badger.ErrRejected) {
			return n, nil
		}
		if errors.Is(err, badger.ErrMoongateSync) {
			// Durability interval: the sync GC makes before deleting a
			// file failed; later syncs prove nothing (syncFailed).
			s.syncFailed(err)
		}
		if err != nil {
			return n, fmt.Errorf("store: value-log GC: %w", err)
		}
		n++
		s.gcRewrites.Add(1)
	}
}

// roomForGC returns ErrStoreFull when the data directory has less free
// space than one rewrite may write: the live half (at most) of a
// value-log file, plus room for the write-ahead log and a memtable flush.
// A rewrite is written like any other write, into a memory-mapped file:
// on a full disk that is a SIGBUS (badger#1801), not an error. With the
// disk reserve (64 MiB) above it, this only stops the GC when something
// else filled the disk. An unknown free space does not stop it.
func (s *Store) roomForGC() error {
	if s.opts.DiskReserve < 0 || (s.opts.InMemory && s.opts.FreeSpace == nil) {
		return nil
	}
	free, err := s.freeSpace()
	if err != nil {
		return nil
	}
	need := uint64(s.db.Opts().ValueLogFileSize/2 + gcMargin)
	if free < need {
		return fmt.Errorf("%w: value-log GC needs %d bytes free, %d are", ErrStoreFull, need, free)
	}
	return nil
}

// gcMargin is the room kept for the write-ahead log and a memtable flush
// beside a value-log rewrite.
const gcMargin = 8 << 20

func (s *Store) gcLoop() {
	t := time.NewTicker(s.opts.GCInterval)
	defer t.Stop()
	for {
		select {
		case <-s.quit:
			return
		case <-t.C:
			ctx, cancel := context.WithCancel(context.Background())
			go func() {
				select {
				case <-s.quit:
				case <-ctx.Done():
				}
				cancel()
			}()
			n, err := s.RunValueLogGC(ctx)
			cancel()
			if err != nil && !errors.Is(err, ErrClosed) && !errors.Is(err, context.Canceled) {
				s.log.Warn("value-log GC", "err", err)
			} else if n > 0 {
				s.log.Info("value-log GC rewrote files", "files", n)
			}
		}
	}
}

// trimUsage deletes up to budget usage meters (one per function and
// minute) of minutes that started before cut. A function's meters are in
// time order, so each function costs one seek past its old meters.
func (b *batch) trimUsage(cut int64, budget int) (int, error) {
	it := b.txn.NewIterator(badger.IteratorOptions{Prefix: []byte{pUsage}})
	defer it.Close()
	n := 0
	for it.Rewind(); it.Valid() && n < budget && b.roomFor(entryEst(64, 0)); {
		fn, ts, ok := usageKey(it.Item().Key())
		if !ok {
			it.Next() // not a meter's key
			continue
		}
		if ts < cut {
			k := it.Item().KeyCopy(nil)
			// The value's length, not ValueSize: that of a meter the batch
			// wrote is not known (Badger's item of a pending write).
			v, ok, err := b.get(k)
			if err != nil {
				return n, err
			}
			b.del(k)
			n++
			if ok {
				b.ctr.Usage.remove(int64(len(v)))
				b.ctr.Usage.Drops++
				b.ctr.Usage.DropBytes += int64(len(v))
			}
			it.Next()
			continue
		}
		// This function's remaining meters are newer: on to the next one.
		next := make([]byte, 0, len(fn)+2) // fn is the iterator's key: do not append to it
		next = append(append(append(next, pUsage), fn...), 1)
		it.Seek(next)
	}
	return n, nil
}

// senderTrimEvery is how often the retention pass walks the sender slots
// for expired ones (all of them: at most SenderSlots per sender).
const senderTrimEvery = time.Hour

// senderTrimDue reports whether the sender slots are due for a walk. Only
// the committer goroutine calls it and senderTrimmed.
func (s *Store) senderTrimDue(now int64) bool {
	return s.lastSenderTrim == 0 || now-s.lastSenderTrim >= senderTrimEvery.Milliseconds() || s.opts.SenderSlotTTL < senderTrimEvery
}

func (s *Store) senderTrimmed(now int64) { s.lastSenderTrim = now }
