package store

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	badger "github.com/dgraph-io/badger/v4"
	"github.com/shirou/gopsutil/v4/disk"
)

// FormatVersion is the on-disk format this release writes. Open refuses a
// database with a higher version (ErrFormatVersion, naming both versions)
// and migrates a lower one step by step (migrate.go).
const FormatVersion = 3

// queue is the persisted state of one sequenced key space. Entries live at
// sequences [Head, Next); Head only moves forward, so readers seek to Head
// and never iterate over the deleted prefix.
type queue struct {
	Head      uint64 `json:"h"`
	Next      uint64 `json:"n"`
	Count     int64  `json:"c"`
	Bytes     int64  `json:"b"`
	Drops     int64  `json:"d,omitempty"`
	DropBytes int64  `json:"db,omitempty"`
	// Outboxes only: the blob sends among Count and Drops, and the bytes
	// of the objects of the waiting ones.
	Blobs     int64 `json:"bl,omitempty"`
	BlobBytes int64 `json:"bb,omitempty"`
	BlobDrops int64 `json:"bd,omitempty"`
}

func newQueue() queue { return queue{Head: 1, Next: 1} }

func (q *queue) add(n int) {
	q.Count++
	q.Bytes += int64(n)
}

func (q *queue) remove(n int64) {
	q.Count--
	q.Bytes -= n
	if q.Count <= 0 || q.Bytes < 0 {
		// Sizes of values in the value log are approximate: never drift below zero.
		if q.Count < 0 {
			q.Count = 0
		}
		if q.Count == 0 || q.Bytes < 0 {
			q.Bytes = 0
		}
	}
}

// counters is everything the committer keeps in memory and persists, in the
// same transaction as the data, under keyCounters.
type counters struct {
	Inbox    queue            `json:"inbox"`
	Publish  queue            `json:"publish"`
	Records  queue            `json:"records"`
	Logs     queue            `json:"logs"`
	Dead     queue            `json:"dead"`
	Outbox   map[string]queue `json:"outbox"`
	Consumed int64            `json:"consumed"`
	Rejected map[string]int64 `json:"rejected,omitempty"`
	Blobs    map[string]queue `json:"blobs,omitempty"`    // per bucket: Count and Bytes of its blobs
	BlobSend uint64           `json:"blobsend,omitempty"` // sequence of the last blob send (BlobSend.ID)
	// Usage holds the Count, Bytes, Drops and DropBytes of the usage
	// meters (no sequences: they are keyed by function and minute).
	// UsageCounted is false in counters written before they were kept:
	// Open then adds Count and Bytes up from the keys, once.
	Usage        queue `json:"usage"`
	UsageCounted bool  `json:"uc,omitempty"`
}

func newCounters() counters {
	return counters{Inbox: newQueue(), Publish: newQueue(), Records: newQueue(), Logs: newQueue(),
		Dead: newQueue(), Outbox: map[string]queue{}, Rejected: map[string]int64{}}
}

func (c *counters) clone() counters {
	n := *c
	n.Outbox = make(map[string]queue, len(c.Outbox))
	for k, v := range c.Outbox {
		n.Outbox[k] = v
	}
	n.Blobs = make(map[string]queue, len(c.Blobs))
	for k, v := range c.Blobs {
		n.Blobs[k] = v
	}
	n.Rejected = make(map[string]int64, len(c.Rejected))
	for k, v := range c.Rejected {
		n.Rejected[k] = v
	}
	return n
}

// Store is moongate's durable store. All methods are safe for concurrent
// use. A Store must be created with Open; after Close every method returns
// ErrClosed.
type Store struct {
	// durableNext, with DurabilityInterval, holds each outbox's Next as
	// of the last sync: what OutboxRead hands out (sync must not send a
	// record a power loss could take back, and its id then be given to
	// another record). nil in the other modes.
	durableNext atomic.Pointer[map[string]uint64]
	opts        Options
	db          *badger.DB
	log         *slog.Logger
	// idPrefix starts the ids of the records and blob sends this Open
	// commits (IDPrefix).
	idPrefix string
	// chainedFn is the func of SetChained, or nil.
	chainedFn atomic.Pointer[func([]InboxEntry)]

	closeMu sync.RWMutex // held for reading by every operation, for writing by Close
	closed  bool

	mu  sync.RWMutex // guards ctr (the committed view readers use)
	ctr counters

	reqCh   chan *request
	quit    chan struct{}
	runDone chan struct{}
	bgWG    sync.WaitGroup

	// committer-owned
	inboxDone map[uint64]struct{} // consumed inbox entries above the head
	// stateBytes is the size of each function's state (keys and values),
	// for its quota (SpaceState). Committer-owned; computed at open.
	stateBytes map[string]int64
	// deadBytes and logBytes are the bytes of each function's dead letters
	// and logs: a write over those spaces' quota drops the oldest entries of
	// the function holding the most (see dropFair). Committer-owned;
	// computed at open from the index keys.
	deadBytes, logBytes map[string]int64
	// dropHint is, per function index, what dropFair read of it ahead.
	// Committer-owned; cleared by a reload (a failed batch's drops did not
	// happen).
	dropHint  map[dropHintKey]*dropAhead
	inboxSize sizeWindow // sizes of the recent inbox entries
	pubDone   map[uint64]struct{}
	pubSize   sizeWindow // sizes of the recent local publishes
	pubs      pubCache   // the live local publishes of the latest commits
	cache     *readCache // state and usage values (readcache.go)
	diskFull  bool
	diskAt    time.Time
	dirty     atomic.Bool

	window *redeliveryWindow // redelivery window
	// lastSenderTrim is when the retention pass last walked all the
	// sender slots (ms; committer goroutine only).
	lastSenderTrim int64
	// senderCursor is where the walk of the sender slots goes on (nil: at
	// the start; committer goroutine only); senderMore is set while a
	// walk is under way, so that RunRetention goes on with it.
	senderCursor []byte
	senderMore   atomic.Bool
	// ahead is, per queue (a space, or "outbox:" + target), what the
	// retention pass found behind a head stamped in the future (see
	// writtenBefore). Committer goroutine only.
	ahead map[string]aheadMark
	// aheadMore is set while a retention request stopped reading past such
	// a head at aheadScan entries, so that RunRetention goes on.
	aheadMore atomic.Bool

	clockSynced atomic.Bool
	full        atomic.Bool
	freeBytes   atomic.Uint64
	batches     atomic.Int64
	txns        atomic.Int64
	writes      atomic.Int64
	maxBatchSz  atomic.Int64
	syncs       atomic.Int64
	gcRewrites  atomic.Int64
	// busyNanos, txnNanos and waitNanos sum the committer's time on
	// batches, the part of it in Badger's commit, and the wait of each
	// committed write (Stats.CommitBusy, TxnCommitTime, WriteWait).
	busyNanos atomic.Int64
	txnNanos  atomic.Int64
	waitNanos atomic.Int64

	objMu sync.Mutex       // guards pins and the removal of blob objects
	pins  map[[32]byte]int // staged blob objects not released yet

	maxTxnSize     int64
	valueThreshold int64
	maxTxnCount    int64
	// broken is set when the state could not be reloaded after a failed
	// group commit (the committer) or an interval sync failed (the sync
	// loop): every write fails with it.
	broken atomic.Pointer[error]
	// deadDrops logs dead letters dropped by quota or age.
	deadDrops dropWarner
	// lastFail is the error of the last group commit when it failed, until
	// one succeeds (Health).
	lastFail atomic.Pointer[error]
	// unsyncedFreed are blob objects freed by commits not synced yet
	// (DurabilityInterval): removed after the next sync.
	unsyncedMu    sync.Mutex
	unsyncedFreed [][32]byte
}

// Open opens (creating if needed) the store in opts.Dir. It checks the
// recorded format version (migrating an older database step by step;
// ErrFormatVersion for a newer or unknown one),
// recovers the queue cursors and starts the committer and the background
// loops (sync, retention, value-log GC, disk guard).
func Open(ctx context.Context, opts Options) (*Store, error) {
	if err := opts.withDefaults(); err != nil {
		return nil, err
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if !opts.InMemory {
		// Under Badger's directory lock: never remove a file that a
		// running daemon on the same directory has just created.
		if _, err := withDirLock(opts.Dir, func() error { return removeEmptyLogFiles(opts.Dir, opts.Logger) }); err != nil {
			return nil, err
		}
	}
	db, err := badger.Open(opts.badgerOptions())
	if err != nil {
		return nil, fmt.Errorf("store: open badger in %q: %w", opts.Dir, err)
	}
	var inc [4]byte
	_, _ = rand.Read(inc[:]) // never fails (crypto/rand, Go 1.24 and later)
	s := &Store{
		opts:     opts,
		db:       db,
		idPrefix: opts.GatewayID + "-" + hex.EncodeToString(inc[:]) + "-",
		log:      opts.Logger.With("component", "store"),
		reqCh:    make(chan *request, opts.MaxBatch),
		quit:     make(chan struct{}),
		runDone:  make(chan struct{}),
		window:   newRedeliveryWindow(opts.DedupeWindow),
		pins:     map[[32]byte]int{},
		cache:    newReadCache(readCacheBytes),
	}
	s.maxTxnSize = db.MaxBatchSize() * 9 / 10
	s.maxTxnCount = db.MaxBatchCount() * 9 / 10
	s.valueThreshold = opts.badgerOptions().ValueThreshold
	if err := s.checkFormat(ctx); err != nil {
		_ = db.Close()
		return nil, err
	}
	if err := s.recover(); err != nil {
		_ = db.Close()
		return nil, err
	}
	if err := s.window.load(db); err != nil {
		_ = db.Close()
		return nil, fmt.Errorf("store: load redelivery window: %w", err)
	}
	if opts.BlobDir != "" {
		if err := s.cleanBlobs(); err != nil {
			_ = db.Close()
			return nil, err
		}
	}
	s.checkDisk(true)
	go s.run()
	if opts.Durability == DurabilityInterval && !opts.InMemory {
		s.noteDurable(s.counters()) // what Open read is on disk
		s.bg(s.syncLoop)
	}
	s.bg(s.retentionLoop)
	if opts.GCInterval > 0 && !opts.InMemory {
		s.bg(s.gcLoop)
	}
	return s, nil
}

func (s *Store) bg(f func()) {
	s.bgWG.Add(1)
	go func() {
		defer s.bgWG.Done()
		f()
	}()
}

// checkFormat writes the format version of a new database, migrates an
// older one step by step (see migrations) and refuses a newer, unknown or
// foreign one with ErrFormatVersion.
func (s *Store) checkFormat(ctx context.Context) error {
	plan := s.opts.formatPlan()
	have, err := readFormat(s.db)
	if err != nil {
		return err
	}
	if have > 0 {
		return migrate(ctx, s.db, s.opts.Dir, have, plan, s.log)
	}
	return s.db.Update(func(txn *badger.Txn) error {
		// New database, or one that is not ours.
		it := txn.NewIterator(badger.IteratorOptions{})
		it.Rewind()
		nonEmpty := it.Valid()
		it.Close()
		if nonEmpty {
			return fmt.Errorf("%w: database has data but no moongate format version", ErrFormatVersion)
		}
		if err := txn.Set(keyFormat, []byte(strconv.Itoa(plan.version))); err != nil {
			return err
		}
		c := newCounters()
		c.UsageCounted = true // no meter yet
		b, _ := json.Marshal(&c)
		return txn.Set(keyCounters, b)
	})
}

// recoverFault, set by tests only, makes recover fail (a read error of
// Badger's that cannot be caused from outside).
var recoverFault func() error

// recover loads the counters and rebuilds the in-memory sets of entries
// consumed out of order (inbox, publishes), by scanning live keys from the
// head only.
// stateSizes adds up the keys and values of each function's state, reading
// keys only (the value log is not touched).
func stateSizes(txn *badger.Txn) map[string]int64 {
	m := map[string]int64{}
	it := txn.NewIterator(badger.IteratorOptions{Prefix: []byte{pState}})
	defer it.Close()
	for it.Rewind(); it.Valid(); it.Next() {
		item := it.Item()
		k := item.Key()
		i := bytes.IndexByte(k[1:], 0)
		if i < 0 {
			continue
		}
		m[string(k[1:1+i])] += int64(len(k)) + item.ValueSize()
	}
	return m
}

// usageSizes counts the usage meters and adds up their value bytes, for
// counters written before those were kept (UsageCounted).
func usageSizes(txn *badger.Txn) (count, size int64) {
	it := txn.NewIterator(badger.IteratorOptions{Prefix: []byte{pUsage}})
	defer it.Close()
	for it.Rewind(); it.Valid(); it.Next() {
		if _, _, ok := usageKey(it.Item().Key()); ok {
			count++
			size += it.Item().ValueSize()
		}
	}
	return count, size
}

// indexSizes adds up the bytes of each function's entries of a space with
// a function index (dead letters, logs): the index value holds the size of
// its entry (uvarint); an index key written before sizes were (empty value)
// is sized from the entry's item.
func indexSizes(txn *badger.Txn, idx, primary byte) (map[string]int64, error) {
	m := map[string]int64{}
	it := txn.NewIterator(badger.IteratorOptions{Prefix: []byte{idx}})
	defer it.Close()
	for it.Rewind(); it.Valid(); it.Next() {
		item := it.Item()
		k := item.Key()
		if len(k) < 1+1+8 || k[len(k)-9] != 0 {
			continue
		}
		fn := string(k[1 : len(k)-9])
		var n int64
		err := item.Value(func(v []byte) error {
			if u, w := binary.Uvarint(v); w > 0 {
				n = int64(u)
			}
			return nil
		})
		if err != nil {
			return nil, err
		}
		if n == 0 {
			e, err := txn.Get(seqKey(primary, keySeq(k)))
			if errors.Is(err, badger.ErrKeyNotFound) {
				continue
			}
			if err != nil {
				return nil, err
			}
			n = e.ValueSize()
		}
		m[fn] += n
	}
	return m, nil
}

func (s *Store) recover() error {
	if recoverFault != nil {
		if err := recoverFault(); err != nil {
			return err
		}
	}
	c := newCounters()
	var inboxDone, pubDone map[uint64]struct{}
	var stateBytes, deadBytes, logBytes map[string]int64
	err := s.db.View(func(txn *badger.Txn) error {
		item, err := txn.Get(keyCounters)
		if err != nil {
			return fmt.Errorf("%w: counters: %v", ErrCorrupt, err)
		}
		if err := item.Value(func(v []byte) error { return json.Unmarshal(v, &c) }); err != nil {
			return fmt.Errorf("%w: counters: %v", ErrCorrupt, err)
		}
		if c.Outbox == nil {
			c.Outbox = map[string]queue{}
		}
		if c.Rejected == nil {
			c.Rejected = map[string]int64{}
		}
		if item, err := txn.Get(keyClock); err == nil {
			_ = item.Value(func(v []byte) error { s.clockSynced.Store(len(v) == 1 && v[0] == 1); return nil })
		}
		var e1, e2 error
		inboxDone, e1 = holes(txn, pInbox, &c.Inbox)
		pubDone, e2 = holes(txn, pPublish, &c.Publish)
		stateBytes = stateSizes(txn)
		if !c.UsageCounted {
			c.Usage.Count, c.Usage.Bytes = usageSizes(txn)
			c.UsageCounted = true
		}
		var e3, e4 error
		deadBytes, e3 = indexSizes(txn, pDeadIdx, pDead)
		logBytes, e4 = indexSizes(txn, pLogIdx, pLog)
		return errors.Join(e1, e2, e3, e4)
	})
	if err != nil {
		return err
	}
	// Only a whole reload replaces the committer's state.
	s.inboxDone, s.pubDone, s.stateBytes = inboxDone, pubDone, stateBytes
	s.deadBytes, s.logBytes = deadBytes, logBytes
	s.dropHint = map[dropHintKey]*dropAhead{}
	s.inboxSize.reset()
	s.pubSize.reset()
	s.mu.Lock()
	s.ctr = c
	s.mu.Unlock()
	s.pubs.reset(c.Publish.Next)
	return nil
}

// holes returns the sequences in [q.Head, q.Next) that have no live key and
// advances q.Head past the leading ones.
func holes(txn *badger.Txn, prefix byte, q *queue) (map[uint64]struct{}, error) {
	done := map[uint64]struct{}{}
	it := txn.NewIterator(badger.IteratorOptions{Prefix: []byte{prefix}})
	defer it.Close()
	expect := q.Head
	for it.Seek(seqKey(prefix, q.Head)); it.Valid(); it.Next() {
		k := it.Item().Key()
		if len(k) != 9 {
			return nil, fmt.Errorf("%w: key %q", ErrCorrupt, k)
		}
		seq := keySeq(k)
		if seq >= q.Next {
			return nil, fmt.Errorf("%w: key %c/%d beyond next sequence %d", ErrCorrupt, prefix, seq, q.Next)
		}
		for ; expect < seq; expect++ {
			done[expect] = struct{}{}
		}
		expect = seq + 1
	}
	for ; expect < q.Next; expect++ {
		done[expect] = struct{}{}
	}
	advance(q, done)
	return done, nil
}

// advance moves q.Head past consumed sequences.
func advance(q *queue, done map[uint64]struct{}) {
	for q.Head < q.Next {
		if _, ok := done[q.Head]; !ok {
			return
		}
		delete(done, q.Head)
		q.Head++
	}
}

// Close drains the writes already submitted, stops the background loops,
// syncs and closes Badger. It is safe to call more than once; later calls
// return nil.
func (s *Store) Close() error {
	s.closeMu.Lock()
	if s.closed {
		s.closeMu.Unlock()
		return nil
	}
	s.closed = true
	close(s.quit)
	s.closeMu.Unlock()
	<-s.runDone
	s.bgWG.Wait()
	var errs []error
	if !s.opts.InMemory {
		freed := s.takeUnsyncedFreed()
		if err := s.db.Sync(); err != nil {
			errs = append(errs, fmt.Errorf("store: sync on close: %w", err))
		} else if s.broken.Load() == nil {
			// Else Open's sweep removes them: after a failed sync, this
			// one proves nothing of the commits that freed them.
			s.removeFreed(freed)
		}
	}
	if err := s.db.Close(); err != nil {
		errs = append(errs, fmt.Errorf("store: close badger: %w", err))
	}
	return errors.Join(errs...)
}

// Health reports why the store does not take writes now, or nil: the
// error that broke it (ErrCorrupt: it refuses writes until reopened),
// ErrStoreFull (the disk is below its reserve), or the error of the last
// group commit when it failed (a failing disk), until one succeeds. Safe
// for concurrent use.
func (s *Store) Health() error {
	if err := s.checkOpen(); err != nil {
		return err
	}
	if b := s.broken.Load(); b != nil {
		return *b
	}
	if s.full.Load() {
		return fmt.Errorf("%w: %s", ErrStoreFull, s.opts.Dir)
	}
	if f := s.lastFail.Load(); f != nil {
		return *f
	}
	return nil
}

func (s *Store) checkOpen() error {
	s.closeMu.RLock()
	defer s.closeMu.RUnlock()
	if s.closed {
		return ErrClosed
	}
	return nil
}

// view runs f in a read-only transaction unless the store is closed.
func (s *Store) view(ctx context.Context, f func(txn *badger.Txn) error) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	s.closeMu.RLock()
	defer s.closeMu.RUnlock()
	if s.closed {
		return ErrClosed
	}
	return s.db.View(f)
}

func (s *Store) counters() counters {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.ctr
}

// checkDisk reads the free space when due (always while full) and updates
// the guard. Called by the committer only (and by Open).
func (s *Store) checkDisk(force bool) bool {
	if s.opts.DiskReserve < 0 || (s.opts.InMemory && s.opts.FreeSpace == nil) {
		return false
	}
	now := time.Now()
	if !force && !s.diskFull && now.Sub(s.diskAt) < s.opts.DiskCheckInterval {
		return false
	}
	s.diskAt = now
	free, err := s.freeSpace()
	if err != nil {
		s.log.Warn("free space unknown", "dir", s.opts.Dir, "err", err)
		return s.diskFull
	}
	s.freeBytes.Store(free)
	full := free < uint64(s.opts.DiskReserve)
	if full != s.diskFull {
		if full {
			s.log.Error("disk space below reserve: refusing new writes", "dir", s.opts.Dir, "free", free, "reserve", s.opts.DiskReserve)
		} else {
			s.log.Info("disk space back above reserve: accepting writes", "dir", s.opts.Dir, "free", free)
		}
	}
	s.diskFull = full
	s.full.Store(full)
	return full
}

func (s *Store) freeSpace() (uint64, error) {
	if s.opts.FreeSpace != nil {
		return s.opts.FreeSpace(s.opts.Dir)
	}
	u, err := disk.Usage(s.opts.Dir)
	if err != nil {
		return 0, err
	}
	return u.Free, nil
}

// SetClockSynced records whether the system clock is known to be right
// (NTP synced). It is persisted, and stamped into every record committed
// afterwards (Record.ClockSynced). Errors (closed store) are logged.
func (s *Store) SetClockSynced(ok bool) {
	if s.clockSynced.Load() == ok {
		return
	}
	s.clockSynced.Store(ok)
	err := s.submit(context.Background(), &request{est: 64, fn: func(b *batch) error {
		b.set(keyClock, []byte{b2u(ok)})
		return nil
	}})
	if err != nil {
		s.log.Warn("persist clock state", "err", err)
	}
}

// ClockSynced reports the last value given to SetClockSynced (persisted).
func (s *Store) ClockSynced() bool { return s.clockSynced.Load() }

// SpaceStats describes one key space in Stats.
type SpaceStats struct {
	Count     int64 // live entries
	Bytes     int64 // stored value bytes (approximate for values in the value log)
	Drops     int64 // entries dropped by quota or age
	DropBytes int64
	Rejected  int64 // writes refused with ErrQuota
}

// Stats is a snapshot of the store's counters.
type Stats struct {
	Spaces       map[string]SpaceStats // by Space* name; outboxes as "outbox:<target>"
	InboxLen     int64
	Consumed     int64 // inbox entries consumed since creation
	Batches      int64 // group-commit batches
	Transactions int64 // Badger transactions committed (a batch too big for one uses several)
	Writes       int64 // write requests committed
	MaxBatch     int64 // largest batch so far
	Syncs        int64
	// CommitBusy is the time the group committer spent on batches
	// (applying the writes, Badger's commit and, in DurabilityAlways, the
	// sync): its growth per second of wall time is the fraction of time
	// the committer was busy. Near 1, writes queue for it.
	CommitBusy time.Duration
	// TxnCommitTime is the part of CommitBusy spent in Badger's commit
	// (write-ahead log, memtable inserts and, in DurabilityAlways, the
	// sync).
	TxnCommitTime time.Duration
	// WriteWait sums, over the committed writes (Writes), the time from
	// submission until the writer was released (durable, in
	// DurabilityAlways; committed, in the other modes): divided by Writes,
	// the mean time a write waits.
	WriteWait     time.Duration
	GCRewrites    int64 // value-log files rewritten by GC
	DiskFull      bool
	FreeBytes     uint64
	ClockSynced   bool
	LSMBytes      int64
	VLogBytes     int64
	Durability    string
	Profile       string
	FormatVersion int
}

// Stats returns a snapshot of sizes, drops and commit counters.
func (s *Store) Stats() Stats {
	c := s.counters()
	sp := func(q queue, name string) SpaceStats {
		return SpaceStats{Count: q.Count, Bytes: q.Bytes, Drops: q.Drops, DropBytes: q.DropBytes, Rejected: c.Rejected[name]}
	}
	st := Stats{
		Spaces: map[string]SpaceStats{
			SpaceInbox:       sp(c.Inbox, SpaceInbox),
			SpacePublishes:   sp(c.Publish, SpacePublishes),
			SpaceRecords:     sp(c.Records, SpaceRecords),
			SpaceLogs:        sp(c.Logs, SpaceLogs),
			SpaceDeadLetters: sp(c.Dead, SpaceDeadLetters),
			SpaceUsage:       sp(c.Usage, SpaceUsage),
		},
		InboxLen: c.Inbox.Count, Consumed: c.Consumed,
		Batches: s.batches.Load(), Transactions: s.txns.Load(), Writes: s.writes.Load(), MaxBatch: s.maxBatchSz.Load(), Syncs: s.syncs.Load(),
		CommitBusy: time.Duration(s.busyNanos.Load()), TxnCommitTime: time.Duration(s.txnNanos.Load()), WriteWait: time.Duration(s.waitNanos.Load()),
		GCRewrites: s.gcRewrites.Load(), DiskFull: s.full.Load(), FreeBytes: s.freeBytes.Load(),
		ClockSynced: s.clockSynced.Load(), Durability: s.opts.Durability.String(), Profile: string(s.opts.Profile),
		FormatVersion: s.opts.formatPlan().version,
	}
	for t, q := range c.Outbox {
		st.Spaces["outbox:"+t] = sp(q, "outbox:"+t)
	}
	s.closeMu.RLock()
	if !s.closed {
		st.LSMBytes, st.VLogBytes = s.db.Size()
	}
	s.closeMu.RUnlock()
	return st
}

// removeEmptyLogFiles deletes zero-length value-log (.vlog) and
// memtable write-ahead-log (.mem) files. A crash just after Badger created
// the next such file leaves it empty (not even its header), and Badger then
// refuses to open the database ("Create a new file"). An empty file holds no
// entry, so no durable key can live in it: removing it loses nothing.
func removeEmptyLogFiles(dir string, log *slog.Logger) error {
	for _, pattern := range []string{"*.vlog", "*.mem"} {
		matches, err := filepath.Glob(filepath.Join(dir, pattern))
		if err != nil {
			return fmt.Errorf("store: list log files: %w", err)
		}
		for _, m := range matches {
			fi, err := os.Stat(m)
			if err != nil || fi.Size() != 0 {
				continue
			}
			if err := os.Remove(m); err != nil {
				return fmt.Errorf("store: remove empty log file: %w", err)
			}
			log.Warn("removed an empty log file left by a crash", "file", m)
		}
	}
	return nil
}

// IDPrefix is how the ids of the records and blob sends this store commits
// begin: the gateway id, a random incarnation of 8 hex digits new at each
// Open, and "-" (record "gw1-3f9c0a12-42", blob send
// "gw1-3f9c0a12-blob-7"). Sequences restart when a data directory is
// replaced or restored from a backup, and images are cloned with their
// gateway id ("raspberrypi"): the incarnation keeps a record's id unique
// to it, so that an upstream that drops duplicate ids (JetStream's
// Nats-Msg-Id, an HTTP Idempotency-Key) never drops a new record for an
// old one. A record keeps the id it was committed with.
func (s *Store) IDPrefix() string { return s.idPrefix }
