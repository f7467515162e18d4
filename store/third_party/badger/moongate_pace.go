package badger

import (
	"sync"
	"sync/atomic"
	"time"
)

// moongate: pacing of compactions (README.moongate.md, section 4).
//
// A compaction merges and rewrites tens of megabytes in one go, on as many
// goroutines as it has key ranges and tables, and allocates a table
// builder's buffers for each table. On a machine with one or two cores that
// takes every processor (and the garbage collector's mark workers the
// rest) for a few hundred milliseconds, during which the goroutines that
// commit and answer requests barely run. A buildPacer lets compactions use
// at most a share of one processor while they are not behind: one
// goroutine builds at a time, and after each slice of work it sleeps long
// enough that slice / (slice + sleep) is the share. When level 0 nears its
// write stall (behind), or the DB is closing, the pacer steps aside and
// compactions run at full speed and in parallel, as upstream's do.
type buildPacer struct {
	// token is held by the goroutine building, and through its sleep.
	token sync.Mutex
	// share is the fraction of one processor table building may use while
	// not behind, in (0, 1].
	share float64
	// slice is the work between two checks of the clock.
	slice time.Duration
	// behind reports whether table building must run at full speed.
	behind func() bool
	// sleep pauses the caller (time.Sleep; replaced in tests).
	sleep func(time.Duration)
	// now reads the clock (time.Now; replaced in tests).
	now func() time.Time
	// pauses counts the pauses taken.
	pauses atomic.Int64
}

// paceCheckEvery is how many steps a paceWorker takes between two readings
// of the clock.
const paceCheckEvery = 64

// maxPaceSleep bounds one pause, however long the piece of work before it
// (writing out a table) and however small the share: the token is held
// through the pause, and behind() is only read again after it.
const maxPaceSleep = 100 * time.Millisecond

// newBuildPacer returns a pacer, or nil (no pacing) when share is not in
// (0, 1]. At 1 table building is only kept to one goroutine at a time.
func newBuildPacer(share float64, behind func() bool) *buildPacer {
	if !(share > 0 && share <= 1) {
		return nil
	}
	return &buildPacer{
		share:  share,
		slice:  time.Millisecond,
		behind: behind,
		sleep:  time.Sleep,
		now:    time.Now,
	}
}

// paceWorker is one goroutine's use of a pacer. Not safe for concurrent
// use; a nil *paceWorker does nothing.
type paceWorker struct {
	p     *buildPacer
	held  bool
	start time.Time
	steps int
}

// worker returns a handle for one goroutine's table building; nil when p
// is nil.
func (p *buildPacer) worker() *paceWorker {
	if p == nil {
		return nil
	}
	return &paceWorker{p: p}
}

// step is called once per unit of work (a key added to a table).
func (w *paceWorker) step() {
	if w == nil {
		return
	}
	w.steps++
	if w.steps < paceCheckEvery {
		return
	}
	w.steps = 0
	if !w.held {
		w.acquire()
		return
	}
	if elapsed := w.p.now().Sub(w.start); elapsed >= w.p.slice {
		w.rest(elapsed)
		w.acquire()
	}
}

// acquire takes the token unless table building is behind.
func (w *paceWorker) acquire() {
	if w.p.behind() {
		return
	}
	w.p.token.Lock()
	w.held = true
	w.start = w.p.now()
}

// rest ends a slice of elapsed work: it sleeps off the slice's share,
// holding the token so that no other builder runs meanwhile, and releases
// the token.
func (w *paceWorker) rest(elapsed time.Duration) {
	if !w.held {
		return
	}
	if d := time.Duration(float64(elapsed) * (1 - w.p.share) / w.p.share); d > 0 && !w.p.behind() {
		w.p.pauses.Add(1)
		w.p.sleep(min(d, maxPaceSleep))
	}
	w.held = false
	w.p.token.Unlock()
}

// done ends the worker's current slice (with its rest).
func (w *paceWorker) done() {
	if w == nil || !w.held {
		return
	}
	w.rest(w.p.now().Sub(w.start))
}

// run paces one piece of work that cannot be sliced (finishing and writing
// a table): it runs f holding the token, then rests in proportion.
func (w *paceWorker) run(f func()) {
	if w == nil {
		f()
		return
	}
	w.done()
	w.acquire()
	f()
	w.done()
}

// buildBehind reports whether compactions must run at full speed: the DB
// is closing, or level 0 is two tables short of the write stall
// (NumLevelZeroTablesStall), where a memtable flush would wait for them.
// (Memtable flushes themselves are not paced: writes wait for them once
// NumMemtables are full.)
func (db *DB) buildBehind() bool {
	if db.IsClosed() {
		return true
	}
	lc := db.lc
	if lc == nil || len(lc.levels) == 0 {
		return false
	}
	limit := max(db.opt.NumLevelZeroTablesStall-2, db.opt.NumLevelZeroTables+1, 1)
	return lc.levels[0].numTables() >= limit
}
