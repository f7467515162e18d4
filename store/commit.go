package store

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	badger "github.com/dgraph-io/badger/v4"
)

// request is one writer waiting for the group committer. fn runs on the
// committer goroutine: it reads through b.txn, stages its writes with
// b.set/b.del and mutates b.ctr. fn must return its "clean" errors (bad
// input, quota, already consumed) before mutating anything; any error it
// returns after mutating must be wrapped in fatalError, which fails the whole
// batch and reloads the state from disk.
type request struct {
	fn    func(b *batch) error
	est   int64 // upper bound of the bytes fn will stage (Badger's estimate)
	grows bool  // adds data: refused while the disk is below its reserve
	async bool  // nobody waits for it (queue): its error is logged
	err   error
	done  chan struct{}
	// queued is when the request was handed to the committer (its wait
	// until durable is summed in Stats.WriteWait; zero: not counted).
	queued time.Time
	// freed are the blob objects the request left without a reference:
	// removed by submit once the write is durable.
	freed [][32]byte
	// chained are the inbox entries a Commit's Chain made, for the func
	// of SetChained (nil: none, or Commit.ChainQueued).
	chained []InboxEntry
}

type fatalError struct{ err error }

func (f fatalError) Error() string { return f.err.Error() }
func (f fatalError) Unwrap() error { return f.err }

func fatal(err error) error { return fatalError{err} }

type write struct {
	key, val []byte
	del      bool
}

// batch is the committer's working state for one group of requests.
type batch struct {
	s       *Store
	txn     *badger.Txn
	ctr     counters
	now     int64 // wall clock ms for this batch
	pending []write
	size    int64 // Badger's size estimate of txn so far
	budget  int64 // the running request's est: optional drops stop there
	staged  int64 // estimate of pending
	count   int64
	pubA    []uint64  // publishes acked in this batch
	pubNew  []Publish // publishes written in this batch (for pubCache)
	// refs are the blob object reference-count changes of the running
	// request (addRef), written when it is done (applyRefs).
	refs map[[32]byte]int64
	// stateSz holds the size (key and value; -1: deleted) of each state key
	// written by the batch's requests so far: a later request's change of
	// the same key must see it (Badger's item of a pending write reports
	// no value size).
	stateSz map[string]int64
	// gone, wrote and startNext serve the drops of dead letters and logs
	// (dropFair, skipHoles): the entries the batch deleted (its own
	// transaction shows a delete of the running request only once that
	// is done), those it wrote per function (the committed snapshot read
	// for drops does not show them), and each space's Next when the batch
	// began (what that snapshot can hold).
	gone      map[seqRef]struct{}
	wrote     map[dropHintKey][]uint64
	startNext map[byte]uint64
}

func (b *batch) set(k, v []byte) {
	b.pending = append(b.pending, write{key: k, val: v})
	b.staged += b.s.vEntryEst(len(k), len(v))
}

func (b *batch) del(k []byte) {
	b.pending = append(b.pending, write{key: k, del: true})
	b.staged += entryEst(len(k), 0)
}

// roomFor reports whether optional writes (drops) of about n more bytes fit
// in the running request's budget. A drop may overshoot by its real size;
// budgets are at most half of a transaction, which leaves room for that.
func (b *batch) roomFor(n int64) bool { return b.staged+n <= b.budget }

// get reads a key through the batch's transaction (sees earlier requests of
// the batch). Not found is (nil, false, nil).
//
// State and usage keys are served from the committer's readCache when it
// holds them. The returned slice is the caller's to keep but not to modify.
func (b *batch) get(k []byte) ([]byte, bool, error) {
	cache := cacheable(k)
	if cache {
		if cv, ok := b.s.cache.get(k); ok {
			return cv.val, cv.found, nil
		}
	}
	item, err := b.txn.Get(k)
	if errors.Is(err, badger.ErrKeyNotFound) {
		if cache {
			b.s.cache.put(k, nil, false)
		}
		return nil, false, nil
	}
	if err != nil {
		return nil, false, fatal(err)
	}
	v, err := item.ValueCopy(nil)
	if err != nil {
		return nil, false, fatal(err)
	}
	if cache {
		b.s.cache.put(k, v, true)
	}
	return v, true, nil
}

// entryEst is an upper bound of Badger's size estimate of one entry.
func entryEst(k, v int) int64 { return int64(k+v) + 12 }

// vEntryEst is Badger's estimate knowing the value threshold: values at or
// above it are stored as a 12-byte pointer to the value log.
func (s *Store) vEntryEst(k, v int) int64 {
	if int64(v) >= s.valueThreshold {
		return int64(k) + 12 + 12
	}
	return entryEst(k, v)
}

// valueEntryBound bounds the estimate of one entry whose value is at most v
// bytes: a value past the threshold is a pointer in the transaction, but an
// estimate v over the threshold may stand for a value under it.
func (s *Store) valueEntryBound(k, v int) int64 {
	return entryEst(k, min(v, int(s.valueThreshold))) + 12
}

// submit queues r for the committer and waits until its batch is durable
// (as the durability mode defines it).
func (s *Store) submit(ctx context.Context, r *request) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	r.done = make(chan struct{})
	if r.est > s.maxTxnSize/2 {
		return fmt.Errorf("%w: a write of about %d bytes, more than one transaction takes (%d)", ErrTooLarge, r.est, s.maxTxnSize/2)
	}
	s.closeMu.RLock()
	if s.closed {
		s.closeMu.RUnlock()
		return ErrClosed
	}
	r.queued = time.Now()
	select {
	case s.reqCh <- r:
	case <-ctx.Done():
		s.closeMu.RUnlock()
		return ctx.Err()
	}
	s.closeMu.RUnlock()
	select {
	case <-r.done:
		s.freeAfterCommit(r)
		return r.err
	case <-ctx.Done():
		// The commit may still be applied: its freed objects must still go.
		go func() {
			<-r.done
			s.freeAfterCommit(r)
		}()
		return fmt.Errorf("store: gave up waiting for the commit (it may still be applied): %w", ctx.Err())
	}
}

// freeAfterCommit removes the blob objects a committed request left without
// a reference, once nothing can bring the reference back: at once when the
// commit was synced (DurabilityAlways; DurabilityNone promises nothing).
// With DurabilityInterval the committer queued them for after the next sync
// (queueUnsyncedFreed): a crash before it would roll the commit back and
// leave its references pointing at removed objects. A crash before the
// removal leaves them to Open's sweep.
func (s *Store) freeAfterCommit(r *request) {
	if r.err != nil || len(r.freed) == 0 || s.freedAfterSync() {
		return
	}
	s.removeFreed(r.freed)
}

// freedAfterSync reports whether freed objects wait for a sync.
func (s *Store) freedAfterSync() bool {
	return s.opts.Durability == DurabilityInterval && !s.opts.InMemory
}

// queueUnsyncedFreed queues the objects freed by the committed requests
// for removal after the next sync; called by the committer before it marks
// the store dirty, so the sync that follows covers them.
func (s *Store) queueUnsyncedFreed(reqs []*request) {
	if !s.freedAfterSync() {
		return
	}
	s.unsyncedMu.Lock()
	defer s.unsyncedMu.Unlock()
	for _, r := range reqs {
		if r.err == nil {
			s.unsyncedFreed = append(s.unsyncedFreed, r.freed...)
		}
	}
}

// takeUnsyncedFreed returns and clears the objects waiting for a sync.
func (s *Store) takeUnsyncedFreed() [][32]byte {
	s.unsyncedMu.Lock()
	defer s.unsyncedMu.Unlock()
	f := s.unsyncedFreed
	s.unsyncedFreed = nil
	return f
}

// straggleWait bounds how long the committer waits for writers of the
// previous batch to come back.
const straggleWait = 200 * time.Microsecond

// run is the group committer: it takes every waiting request, applies them
// in one transaction (more when one would be too big), syncs once, and
// releases the writers.
func (s *Store) run() {
	defer close(s.runDone)
	batch := make([]*request, 0, s.opts.MaxBatch)
	prev := 0
	for {
		var first *request
		select {
		case first = <-s.reqCh:
		case <-s.quit:
			for {
				batch = batch[:0]
			drain:
				for len(batch) < s.opts.MaxBatch {
					select {
					case r := <-s.reqCh:
						batch = append(batch, r)
					default:
						break drain
					}
				}
				if len(batch) == 0 {
					return
				}
				s.process(batch)
			}
		}
		batch = append(batch[:0], first)
		// Writers released by the previous batch come back a few
		// microseconds apart: while the batch is smaller than the previous
		// one, wait a little for them so that one sync serves them all.
		var wait <-chan time.Time
	more:
		for len(batch) < s.opts.MaxBatch {
			select {
			case r := <-s.reqCh:
				batch = append(batch, r)
				continue
			default:
			}
			if len(batch) >= prev {
				break
			}
			if wait == nil {
				wait = time.After(straggleWait)
			}
			select {
			case r := <-s.reqCh:
				batch = append(batch, r)
			case <-wait:
				break more
			}
		}
		prev = len(batch)
		s.process(batch)
	}
}

func (s *Store) process(reqs []*request) {
	start := time.Now()
	defer func() { s.busyNanos.Add(int64(time.Since(start))) }()
	if berr := s.broken.Load(); berr != nil {
		for _, r := range reqs {
			r.err = *berr
			s.logAsync(r)
			close(r.done)
		}
		return
	}
	s.mu.RLock()
	ctr := s.ctr.clone()
	s.mu.RUnlock()
	b := &batch{s: s, txn: s.db.NewTransaction(true), ctr: ctr, now: time.Now().UnixMilli(),
		startNext: map[byte]uint64{pDead: ctr.Dead.Next, pLog: ctr.Logs.Next}}
	full := s.checkDisk(false)
	// committed is how many of the first requests a mid-batch flush made
	// durable: a later failure must not report them failed (an Enqueue
	// reported failed but stored would run twice when its message comes
	// again, its fingerprint missing from the dedupe window).
	committed := 0
	failAll := func(err error) {
		if b.txn != nil {
			b.txn.Discard()
		}
		s.log.Error("group commit failed; reloading state from disk", "err", err, "writers", len(reqs), "committed", committed)
		ferr := fmt.Errorf("store: group commit failed: %w", err)
		s.lastFail.Store(&ferr)
		s.cache.reset()
		for _, r := range reqs[committed:] {
			if r.err == nil {
				r.err = fmt.Errorf("store: commit failed: %w", err)
			}
		}
		rerr := s.recover()
		if committed > 0 {
			// DurabilityInterval: the flushed part awaits its sync. Marked
			// after recover replaced the counters: a sync that took the
			// flag before would note the old ones durable, and the new
			// records would wait for some other write.
			s.queueUnsyncedFreed(reqs[:committed])
			s.dirty.Store(true)
		}
		if rerr != nil {
			// The in-memory state may hold changes of the failed requests
			// (entries marked consumed that are not): no write may go on
			// from it. A restart reloads it.
			berr := fmt.Errorf("%w: state not reloaded after a failed commit (restart moongate): %w", ErrCorrupt, rerr)
			s.broken.Store(&berr)
			s.log.Error("reload after failed commit: the store refuses writes until restarted", "err", rerr)
		}
		s.handChained(reqs[:committed])
		for _, r := range reqs {
			s.logAsync(r)
			close(r.done)
		}
	}
	ok := 0
	markDirty := false
	for i, r := range reqs {
		if r.grows && full {
			r.err = fmt.Errorf("%w: %s", ErrStoreFull, s.opts.Dir)
			continue
		}
		if b.count > 0 && (b.size+r.est+1024 > s.maxTxnSize || b.count+r.est/16+16 > s.maxTxnCount) {
			if err := b.flush(true); err != nil {
				failAll(err)
				return
			}
			committed = i
		}
		b.pending, b.staged = b.pending[:0], 0
		clear(b.refs)
		b.budget = r.est
		r.err = r.fn(b)
		if r.err != nil {
			var fe fatalError
			if errors.As(r.err, &fe) {
				failAll(r.err)
				return
			}
			continue
		}
		if len(b.refs) > 0 {
			freed, err := b.applyRefs()
			if err != nil {
				failAll(err)
				return
			}
			r.freed = freed
		}
		for _, w := range b.pending {
			var err error
			if w.del {
				err = b.txn.Delete(w.key)
			} else {
				err = b.txn.Set(w.key, w.val)
			}
			if err != nil {
				failAll(err)
				return
			}
			if cacheable(w.key) {
				s.cache.put(w.key, w.val, !w.del)
			}
			b.size += s.vEntryEst(len(w.key), len(w.val))
			b.count++
		}
		ok++
	}
	if b.count > 0 {
		if err := b.flush(false); err != nil {
			failAll(err)
			return
		}
		s.lastFail.Store(nil) // written: the disk takes writes again
		if s.opts.Durability == DurabilityAlways && !s.opts.InMemory {
			// SyncWrites: Badger synced the WAL and value log before Commit
			// returned. (An explicit db.Sync after Commit would miss a
			// memtable WAL rotated in between.)
			s.syncs.Add(1)
		} else {
			markDirty = true // below, once the counters are published
		}
	}
	if b.txn != nil {
		b.txn.Discard()
	}
	advance(&b.ctr.Inbox, s.inboxDone)
	s.inboxSize.forget(b.ctr.Inbox.Head)
	for _, seq := range b.pubA {
		if seq == b.ctr.Publish.Head {
			b.ctr.Publish.Head++
		} else if seq > b.ctr.Publish.Head {
			s.pubDone[seq] = struct{}{}
		}
	}
	advance(&b.ctr.Publish, s.pubDone)
	s.pubSize.forget(b.ctr.Publish.Head)
	s.pubs.apply(b.pubNew, b.pubA, b.ctr.Publish.Head)
	s.mu.Lock()
	s.ctr = b.ctr
	s.mu.Unlock()
	if markDirty {
		// DurabilityInterval: after the counters (the sync loop notes the
		// outbox positions it reads after taking the flag as durable).
		s.queueUnsyncedFreed(reqs)
		s.dirty.Store(true)
	}
	s.batches.Add(1)
	s.writes.Add(int64(ok))
	if n := int64(len(reqs)); n > s.maxBatchSz.Load() {
		s.maxBatchSz.Store(n)
	}
	s.handChained(reqs)
	now := time.Now()
	var waited time.Duration
	for _, r := range reqs {
		if r.err == nil && !r.queued.IsZero() {
			waited += now.Sub(r.queued)
		}
		s.logAsync(r)
		close(r.done)
	}
	s.waitNanos.Add(int64(waited))
}

// flush persists the counters and commits the current transaction, then
// starts a new one if more writes follow. (Not starting one after the last
// flush matters: a new transaction waits until Badger has marked the commit
// just made as applied, a hand-off to another goroutine that would hold up
// the release of this batch's writers.)
func (b *batch) flush(more bool) error {
	// Heads persisted here may lag (consumed entries are folded in after the
	// batch); recovery recomputes them from the live keys.
	v, err := json.Marshal(&b.ctr)
	if err != nil {
		return err
	}
	if err := b.txn.Set(keyCounters, v); err != nil {
		return err
	}
	start := time.Now()
	err = b.txn.Commit()
	b.s.txnNanos.Add(int64(time.Since(start)))
	if err != nil {
		return err
	}
	b.s.txns.Add(1)
	b.txn = nil
	if more {
		b.txn = b.s.db.NewTransaction(true)
	}
	b.size, b.count = 0, 0
	return nil
}

// noteDurable records the outbox positions of ctr as durable
// (DurabilityInterval).
func (s *Store) noteDurable(ctr counters) {
	m := make(map[string]uint64, len(ctr.Outbox))
	for name, q := range ctr.Outbox {
		m[name] = q.Next
	}
	s.durableNext.Store(&m)
}

// syncLoop syncs at most every SyncInterval in DurabilityInterval mode.
func (s *Store) syncLoop() {
	t := time.NewTicker(s.opts.SyncInterval)
	defer t.Stop()
	for {
		select {
		case <-s.quit:
			return
		case <-t.C:
			if s.dirty.Swap(false) {
				freed := s.takeUnsyncedFreed() // committed before this sync
				ctr := s.counters()            // likewise
				// The state this sync covers: an object is removed only if
				// unreferenced there too (a delete committed after the
				// sync began is not durable yet; it queues the object
				// again for the next sync).
				snap := s.db.NewTransaction(false)
				err := s.db.Sync()
				if h := syncHook; h != nil {
					err = h(err)
				}
				if err != nil {
					snap.Discard()
					s.syncFailed(err)
					return
				}
				s.syncs.Add(1)
				s.removeFreedIn(freed, snap) // freed before the sync began: durable now
				snap.Discard()
				s.noteDurable(ctr)
			}
		}
	}
}

// syncFailed breaks the store after a failed interval sync. Not retried:
// after a failed sync the kernel may have dropped the pages it could not
// write (marking them clean), so a later sync that succeeds would prove
// nothing of the commits before it, and the sync loop would note their
// outbox positions durable and free their blob objects. Badger serves
// those commits from memory; nothing may build on them: the daemon
// restarts (ErrCorrupt), and Badger replays what its logs hold.
func (s *Store) syncFailed(err error) {
	berr := fmt.Errorf("%w: a sync failed, commits since the last one may not be on disk (restart moongate): %w", ErrCorrupt, err)
	s.broken.CompareAndSwap(nil, &berr)
	ferr := fmt.Errorf("store: sync failed: %w", err)
	s.lastFail.Store(&ferr)
	s.log.Error("interval sync failed: the store refuses writes until restarted", "err", err)
}

// syncHook, when set (tests), sees the result of each interval sync and
// returns the one the sync loop acts on.
var syncHook func(error) error

// SetChained sets the func the committer hands the chained inbox entries
// of each Commit (Commit.Chain, unless Commit.ChainQueued) once the write
// that made them is done, before the Commit returns: in sequence order,
// one call per commit, commits in the order they were written. Two
// commits of one group commit, each followed by its own caller, handed
// their entries in whatever order their goroutines woke up: a downstream
// lane (a state key, a stream without device) could run a later change
// before an earlier one. fn runs in the committer: it must be quick, must
// not block and must not call the Store. nil stops the calls. Safe for
// concurrent use.
func (s *Store) SetChained(fn func([]InboxEntry)) {
	if fn == nil {
		s.chainedFn.Store(nil)
		return
	}
	s.chainedFn.Store(&fn)
}

// handChained calls the func of SetChained with the chained entries of the
// requests written, in order.
func (s *Store) handChained(reqs []*request) {
	p := s.chainedFn.Load()
	if p == nil {
		return
	}
	for _, r := range reqs {
		if r.err == nil && len(r.chained) > 0 {
			(*p)(r.chained)
		}
	}
}
