package gateway

import (
	"context"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sync/semaphore"

	"github.com/moongate-edge/moongate/store"
)

// job is one inbox entry on its way through a function.
type job struct {
	entry    store.InboxEntry
	attempts int // failed invocations so far (kept across restarts: see AttemptsStateFunction)
	// recorded: the entry's attempts are in the store, and its consuming
	// commit deletes them. notBefore: a resumed entry's next attempt is
	// not due before then (its backoff, begun before the restart).
	recorded  bool
	notBefore time.Time
	size      int64
	// holdN and holdB are the backlog room the job gives back when done,
	// fnN and fnB the room of its function's share: one entry and its
	// clamped size each, unless jobs admitted together share what their
	// admission reserved (see admit).
	holdN, holdB int64
	fnN, fnB     int64
	room         *fnRoom // its function's share
	// turn is the turn of its function the job holds while it is
	// dispatched (see dispatcher.turn); nil once given back.
	turn chan struct{}
}

// lane holds the jobs of one ordering key (function + device, or function +
// topic): they run one at a time, in sequence order. Different lanes run in
// parallel on the worker pool.
type lane struct {
	key     string
	q       []*job
	queued  bool // in the ready queue or held by a worker
	running bool // held by a worker: q[0] is being processed
}

// outcome of processing a job.
type outcome int

const (
	done  outcome = iota // committed (or consumed as a dead letter): pop it
	retry                // run it again after a backoff, lane stays blocked
	stop                 // the dispatcher is stopping: leave it in the inbox
)

// dispatcher orders jobs per lane and runs them on a fixed pool of workers.
// Admission is bounded in count and bytes: admit blocks intake when the
// backlog is full, which is how flow control reaches the broker. Each
// function may hold only a share of the backlog (fnN entries, fnB bytes):
// once a slow or failing function has filled its share, only the intake of
// its own events waits; the other functions' events are still admitted.
type dispatcher struct {
	process func(ctx context.Context, j *job) (outcome, time.Duration)

	count *semaphore.Weighted // in-memory backlog, entries
	bytes *semaphore.Weighted // in-memory backlog, bytes
	maxN  int64
	maxB  int64
	fnN   int64 // share of one function, entries
	fnB   int64 // share of one function, bytes

	roomMu sync.Mutex
	room   map[string]*fnRoom // by function name; kept once made

	mu      sync.Mutex
	cond    *sync.Cond
	lanes   map[string]*lane
	ready   []*lane
	closed  bool
	pending int // jobs queued or running
	timers  map[*time.Timer]struct{}

	// turn, when set, gives the turns of a function (a channel of its
	// max_concurrency; nil: no limit). A lane whose function has none
	// free is parked, without a worker, until one is given back
	// (giveTurn): the events of a slow function do not take the workers
	// that other functions' events need.
	turn   func(function string) chan struct{}
	parked map[string][]*lane

	wg sync.WaitGroup
}

// fnRoom is the share of the backlog one function's jobs may hold.
type fnRoom struct {
	count, bytes *semaphore.Weighted
	held         atomic.Int64 // entries of count taken
}

// functionBacklogs returns the entries of the backlog each function's jobs
// hold (functions holding none are left out).
func (d *dispatcher) functionBacklogs() map[string]int64 {
	d.roomMu.Lock()
	defer d.roomMu.Unlock()
	m := make(map[string]int64, len(d.room))
	for fn, r := range d.room {
		if n := r.held.Load(); n > 0 {
			m[fn] = n
		}
	}
	return m
}

// newDispatcher makes a dispatcher of a backlog of maxCount entries and
// maxBytes bytes, of which one function may hold fnCount entries and a
// proportional part of the bytes (fnCount <= 0 or over maxCount: the
// whole backlog).
func newDispatcher(workers int, maxCount, maxBytes, fnCount int64, process func(context.Context, *job) (outcome, time.Duration)) *dispatcher {
	if fnCount <= 0 || fnCount > maxCount {
		fnCount = maxCount
	}
	d := &dispatcher{
		process: process,
		count:   semaphore.NewWeighted(maxCount),
		bytes:   semaphore.NewWeighted(maxBytes),
		maxN:    maxCount,
		maxB:    maxBytes,
		fnN:     fnCount,
		fnB:     max(1, int64(float64(maxBytes)*float64(fnCount)/float64(maxCount))),
		room:    make(map[string]*fnRoom),
		lanes:   make(map[string]*lane),
		timers:  make(map[*time.Timer]struct{}),
		parked:  make(map[string][]*lane),
	}
	d.cond = sync.NewCond(&d.mu)
	return d
}

// roomOf returns the share of function fn.
func (d *dispatcher) roomOf(fn string) *fnRoom {
	d.roomMu.Lock()
	defer d.roomMu.Unlock()
	r := d.room[fn]
	if r == nil {
		r = &fnRoom{count: semaphore.NewWeighted(d.fnN), bytes: semaphore.NewWeighted(d.fnB)}
		d.room[fn] = r
	}
	return r
}

// reservation is the room one admission takes: from the whole backlog and
// from the share of each function its jobs belong to.
type reservation struct {
	jobs []*job
	n, b int64 // whole backlog
	fns  []fnTake
}

// fnTake is what a reservation takes from one function's share.
type fnTake struct {
	name string
	room *fnRoom
	n, b int64
	last *job // the last of its jobs, which gives back the rest
}

// reserve computes into r what admitting jobs together takes, in fns
// (storage for the usual single function, so that r stays on the
// caller's stack). A group
// larger than a bound (more entries than it counts, more bytes than its
// size: a message that fans out to many functions) takes the whole bound
// rather than waiting for room that can never come.
func (d *dispatcher) reserve(r *reservation, jobs []*job, fns []fnTake) {
	r.jobs, r.fns = jobs, fns[:0]
	var total int64
	for _, j := range jobs {
		total += j.size
		t := r.take(j.entry.Function)
		if t == nil {
			r.fns = append(r.fns, fnTake{name: j.entry.Function, room: d.roomOf(j.entry.Function)})
			t = &r.fns[len(r.fns)-1]
		}
		t.n++
		t.b += j.size
		t.last = j
		j.room = t.room
	}
	r.n, r.b = clamp(int64(len(jobs)), d.maxN), clamp(total, d.maxB)
	for i := range r.fns {
		t := &r.fns[i]
		t.n, t.b = clamp(t.n, d.fnN), clamp(t.b, d.fnB)
	}
	// Always the same order: two admissions waiting for each other's
	// functions would otherwise hold each other's room.
	if len(r.fns) > 1 {
		slices.SortFunc(r.fns, func(a, b fnTake) int { return strings.Compare(a.name, b.name) })
	}
}

func clamp(v, bound int64) int64 { return min(max(v, 1), bound) }

// admit reserves room for jobs, blocking while the backlog, or the share
// of one of their functions, is full. Every admitted job must later be
// pushed or released; when done, each gives back its part of the room
// (together they give back exactly what was reserved).
func (d *dispatcher) admit(ctx context.Context, jobs ...*job) error {
	var r reservation
	var one [1]fnTake
	d.reserve(&r, jobs, one[:])
	// undo gives back the shares of the first n functions.
	undo := func(n int) {
		for _, t := range r.fns[:n] {
			t.room.count.Release(t.n)
			t.room.bytes.Release(t.b)
		}
	}
	for i, t := range r.fns {
		if err := t.room.count.Acquire(ctx, t.n); err != nil {
			undo(i)
			return err
		}
		if err := t.room.bytes.Acquire(ctx, t.b); err != nil {
			t.room.count.Release(t.n)
			undo(i)
			return err
		}
	}
	if err := d.count.Acquire(ctx, r.n); err != nil {
		undo(len(r.fns))
		return err
	}
	if err := d.bytes.Acquire(ctx, r.b); err != nil {
		d.count.Release(r.n)
		undo(len(r.fns))
		return err
	}
	r.spread()
	return nil
}

// spread sets what each job gives back when done, so that together they
// give back exactly what was reserved: one entry and its size each while
// the reservation lasts, the rest of it with the last job (of the group,
// of the function).
func (r *reservation) spread() {
	for _, t := range r.fns {
		t.room.held.Add(t.n)
	}
	leftN, leftB := r.n, r.b
	for i, j := range r.jobs {
		sz := max(j.size, 1)
		j.holdN, j.holdB = min(1, leftN), min(sz, leftB)
		if i == len(r.jobs)-1 {
			j.holdN, j.holdB = leftN, leftB
		}
		leftN -= j.holdN
		leftB -= j.holdB
		t := r.take(j.entry.Function)
		j.fnN, j.fnB = min(1, t.n), min(sz, t.b)
		if t.last == j {
			j.fnN, j.fnB = t.n, t.b
		}
		t.n -= j.fnN
		t.b -= j.fnB
	}
}

// tryAdmit is admit of one job without waiting: it reports whether the
// room was taken.
func (d *dispatcher) tryAdmit(j *job) bool {
	var r reservation
	var one [1]fnTake
	jobs := [1]*job{j}
	d.reserve(&r, jobs[:], one[:])
	t := r.fns[0]
	if !t.room.count.TryAcquire(t.n) {
		return false
	}
	if !t.room.bytes.TryAcquire(t.b) {
		t.room.count.Release(t.n)
		return false
	}
	if !d.count.TryAcquire(r.n) {
		t.room.count.Release(t.n)
		t.room.bytes.Release(t.b)
		return false
	}
	if !d.bytes.TryAcquire(r.b) {
		d.count.Release(r.n)
		t.room.count.Release(t.n)
		t.room.bytes.Release(t.b)
		return false
	}
	r.spread()
	return true
}

// take returns the part of r taken from the share of function fn (nil:
// none yet).
func (r *reservation) take(fn string) *fnTake {
	for i := range r.fns {
		if r.fns[i].name == fn {
			return &r.fns[i]
		}
	}
	return nil
}

// release gives back the room of jobs that were admitted but never pushed.
func (d *dispatcher) release(jobs ...*job) {
	for _, j := range jobs {
		d.giveRoom(j)
	}
}

// giveRoom gives back the room j holds.
func (d *dispatcher) giveRoom(j *job) {
	if j.holdN > 0 {
		d.count.Release(j.holdN)
	}
	if j.holdB > 0 {
		d.bytes.Release(j.holdB)
	}
	if j.fnN > 0 {
		j.room.held.Add(-j.fnN)
		j.room.count.Release(j.fnN)
	}
	if j.fnB > 0 {
		j.room.bytes.Release(j.fnB)
	}
	j.holdN, j.holdB, j.fnN, j.fnB = 0, 0, 0, 0
}

// push queues admitted jobs. Jobs of one lane are kept in sequence order
// even when pushes race.
func (d *dispatcher) push(laneKey string, jobs ...*job) {
	d.mu.Lock()
	defer d.mu.Unlock()
	l := d.lanes[laneKey]
	if l == nil {
		l = &lane{key: laneKey}
		d.lanes[laneKey] = l
	}
	for _, j := range jobs {
		// Insert by sequence: almost always an append.
		i := len(l.q)
		for i > 0 && l.q[i-1].entry.Seq > j.entry.Seq {
			i--
		}
		// Never insert in front of the job a worker is running (index 0
		// of a running lane); a lane only waiting in the ready queue takes
		// an older job at its head.
		if i == 0 && l.running && len(l.q) > 0 {
			i = 1
		}
		l.q = append(l.q, nil)
		copy(l.q[i+1:], l.q[i:])
		l.q[i] = j
		d.pending++
	}
	if !l.queued && len(l.q) > 0 {
		l.queued = true
		d.ready = append(d.ready, l)
		d.cond.Signal()
	}
}

// start runs n workers until ctx is done.
func (d *dispatcher) start(ctx context.Context, n int) {
	for range n {
		d.wg.Add(1)
		go d.worker(ctx)
	}
	go func() {
		<-ctx.Done()
		d.mu.Lock()
		d.closed = true
		for t := range d.timers {
			t.Stop()
		}
		d.cond.Broadcast()
		d.mu.Unlock()
	}()
}

// wait blocks until every worker has returned (after ctx passed to start is done).
func (d *dispatcher) wait() { d.wg.Wait() }

// backlog is the number of jobs queued or running.
func (d *dispatcher) backlog() int {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.pending
}

func (d *dispatcher) worker(ctx context.Context) {
	defer d.wg.Done()
	for {
		d.mu.Lock()
		for len(d.ready) == 0 && !d.closed {
			d.cond.Wait()
		}
		if d.closed {
			d.mu.Unlock()
			return
		}
		l := d.ready[0]
		d.ready[0] = nil
		d.ready = d.ready[1:]
		j := l.q[0]
		if wait := time.Until(j.notBefore); !j.notBefore.IsZero() {
			j.notBefore = time.Time{}
			if wait > 0 {
				// A resumed entry whose backoff began before the restart.
				d.laterLocked(l, wait)
				d.mu.Unlock()
				continue
			}
		}
		if d.turn != nil {
			fn := j.entry.Function
			if t := d.turn(fn); t != nil {
				select {
				case t <- struct{}{}:
					j.turn = t
				default:
					// Every turn of its function is taken: the lane waits
					// for one to be given back, without this worker.
					d.parked[fn] = append(d.parked[fn], l)
					d.mu.Unlock()
					continue
				}
			}
		}
		l.running = true
		d.mu.Unlock()

		out, backoff := d.process(ctx, j)
		d.giveTurn(j)

		d.mu.Lock()
		l.running = false
		switch out {
		case done:
			l.q[0] = nil
			l.q = l.q[1:]
			d.pending--
			d.giveRoom(j)
			d.requeueLocked(l)
		case retry:
			if d.closed {
				break
			}
			d.laterLocked(l, backoff)
		case stop:
		}
		d.mu.Unlock()
	}
}

// laterLocked makes lane l ready again after wait. d.mu is held.
func (d *dispatcher) laterLocked(l *lane, wait time.Duration) {
	var t *time.Timer
	t = time.AfterFunc(wait, func() {
		d.mu.Lock()
		defer d.mu.Unlock()
		delete(d.timers, t)
		if !d.closed {
			d.ready = append(d.ready, l)
			d.cond.Signal()
		}
	})
	d.timers[t] = struct{}{}
}

// giveTurn gives back the turn of its function j holds, if any, and wakes
// one lane parked for it. Safe to call more than once.
func (d *dispatcher) giveTurn(j *job) {
	if j.turn == nil {
		return
	}
	<-j.turn
	j.turn = nil
	fn := j.entry.Function
	d.mu.Lock()
	defer d.mu.Unlock()
	p := d.parked[fn]
	if len(p) == 0 || d.closed {
		return
	}
	// As many lanes as there are free turns now (one, usually; more when
	// a redeploy raised max_concurrency), or all of them when the
	// function has no limit any more (removed: its events go to the dead
	// letters).
	n := len(p)
	if t := d.turn(fn); t != nil {
		n = min(n, max(1, cap(t)-len(t)))
	}
	for _, l := range p[:n] {
		d.ready = append(d.ready, l)
	}
	clear(p[:n])
	if n == len(p) {
		delete(d.parked, fn)
	} else {
		d.parked[fn] = p[n:]
	}
	d.cond.Broadcast()
}

func (d *dispatcher) requeueLocked(l *lane) {
	if len(l.q) == 0 {
		l.queued = false
		delete(d.lanes, l.key)
		return
	}
	d.ready = append(d.ready, l)
	d.cond.Signal()
}
