package gateway

import (
	"context"
	"sync"
	"time"

	"golang.org/x/sync/semaphore"

	"github.com/moongate-edge/moongate/store"
)

// job is one inbox entry on its way through a function.
type job struct {
	entry    store.InboxEntry
	attempts int // failed invocations so far (in memory: a restart starts again)
	size     int64
	// holdN and holdB are the backlog room the job gives back when done:
	// by default one entry and its clamped size; the jobs of one admission
	// of several entries share what it reserved (see share).
	holdN, holdB int64
	shared       bool // holdN and holdB are set
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
// backlog is full, which is how flow control reaches the broker.
type dispatcher struct {
	process func(ctx context.Context, j *job) (outcome, time.Duration)

	count *semaphore.Weighted // in-memory backlog, entries
	bytes *semaphore.Weighted // in-memory backlog, bytes
	maxN  int64
	maxB  int64

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

func newDispatcher(workers int, maxCount, maxBytes int64, process func(context.Context, *job) (outcome, time.Duration)) *dispatcher {
	d := &dispatcher{
		process: process,
		count:   semaphore.NewWeighted(maxCount),
		bytes:   semaphore.NewWeighted(maxBytes),
		maxN:    maxCount,
		maxB:    maxBytes,
		lanes:   make(map[string]*lane),
		timers:  make(map[*time.Timer]struct{}),
		parked:  make(map[string][]*lane),
	}
	d.cond = sync.NewCond(&d.mu)
	return d
}

// admit reserves room for n jobs of the given total size, blocking while the
// backlog is full. Every admitted job must later be pushed or released.
//
// A group larger than the whole backlog (more entries than its count, more
// bytes than its size: a message that fans out to many functions) takes
// the whole backlog rather than waiting for room that can never come; its
// jobs then share what was reserved (share).
func (d *dispatcher) admit(ctx context.Context, n int, size int64) error {
	if err := d.count.Acquire(ctx, d.clampCount(n)); err != nil {
		return err
	}
	if err := d.bytes.Acquire(ctx, d.clampBytes(size)); err != nil {
		d.count.Release(d.clampCount(n))
		return err
	}
	return nil
}

// tryAdmit is admit without waiting: it reports whether the room was taken.
func (d *dispatcher) tryAdmit(n int, size int64) bool {
	if !d.count.TryAcquire(d.clampCount(n)) {
		return false
	}
	if !d.bytes.TryAcquire(d.clampBytes(size)) {
		d.count.Release(d.clampCount(n))
		return false
	}
	return true
}

func (d *dispatcher) clampCount(n int) int64 {
	return min(max(int64(n), 1), d.maxN)
}

func (d *dispatcher) clampBytes(size int64) int64 {
	return min(max(size, 1), d.maxB)
}

// release gives back the room of jobs that were admitted but never pushed.
func (d *dispatcher) release(n int, size int64) {
	d.count.Release(d.clampCount(n))
	d.bytes.Release(d.clampBytes(size))
}

// share sets what each of jobs, admitted together by admit(len(jobs),
// total of their sizes), gives back when done, so that together they give
// back exactly what was reserved: one entry and its size each while the
// reservation lasts, the rest of it with the last job.
func (d *dispatcher) share(jobs []*job) {
	var size int64
	for _, j := range jobs {
		size += j.size
	}
	leftN, leftB := d.clampCount(len(jobs)), d.clampBytes(size)
	for i, j := range jobs {
		j.holdN, j.holdB, j.shared = min(1, leftN), min(max(j.size, 1), leftB), true
		if i == len(jobs)-1 {
			j.holdN, j.holdB = leftN, leftB
		}
		leftN -= j.holdN
		leftB -= j.holdB
	}
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
			if j.shared {
				d.count.Release(j.holdN)
				d.bytes.Release(j.holdB)
			} else {
				d.count.Release(1)
				d.bytes.Release(d.clampBytes(j.size))
			}
			d.requeueLocked(l)
		case retry:
			if d.closed {
				break
			}
			var t *time.Timer
			t = time.AfterFunc(backoff, func() {
				d.mu.Lock()
				defer d.mu.Unlock()
				delete(d.timers, t)
				if !d.closed {
					d.ready = append(d.ready, l)
					d.cond.Signal()
				}
			})
			d.timers[t] = struct{}{}
		case stop:
		}
		d.mu.Unlock()
	}
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
