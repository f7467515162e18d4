package luavm

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"sync"
	"sync/atomic"
	"time"
)

// Pool defaults (see Spec).
const (
	DefaultMaxConcurrency = 4
	DefaultIdleTimeout    = 60 * time.Second
	DefaultQueueTimeout   = 5 * time.Second
	// DefaultReclaimInterval is how often idle instances are looked for.
	DefaultReclaimInterval = time.Second
)

// Options configure a Runtime. The zero value is usable.
type Options struct {
	Logger         *slog.Logger // nil: slog.Default()
	MaxSourceBytes int          // source size limit (0: DefaultMaxSourceBytes)
	DefaultLimits  Limits       // fills zero fields of every Spec.Limits (then the built-in defaults)
	// ReclaimInterval is how often idle instances are reclaimed
	// (0: DefaultReclaimInterval).
	ReclaimInterval time.Duration
}

// PoolStats describes the pool of the current version of a function.
type PoolStats struct {
	Version     int64
	Warm        int    // idle, ready instances
	Busy        int    // instances running an invocation
	Waiting     int    // callers waiting for an instance
	Invocations uint64 // invocations started on this version
	ColdStarts  uint64 // instances created for this version
}

// Runtime runs deployed functions. It is safe for concurrent use. Create it
// with NewRuntime and release it with Close.
type Runtime struct {
	opts   Options
	log    *slog.Logger
	mu     sync.RWMutex
	fns    map[string]*pool
	closed bool
	stop   chan struct{}
	done   chan struct{}
	idPfx  string
	idSeq  atomic.Uint64
}

// pool is the set of instances of one function version.
type pool struct {
	rt     *Runtime
	spec   Spec
	prog   *Program
	limits Limits
	sem    chan struct{} // one token per running invocation
	gone   chan struct{} // closed by retire: wakes the calls waiting for a slot

	mu       sync.Mutex
	idle     []*instance // LIFO: the most recently used is reused first
	busy     int
	waiting  int
	inflight int
	retired  bool

	invocations atomic.Uint64
	coldStarts  atomic.Uint64
}

// NewRuntime returns a Runtime with opts. It starts one goroutine that
// reclaims idle instances; Close stops it.
func NewRuntime(opts Options) *Runtime {
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	if opts.MaxSourceBytes <= 0 {
		opts.MaxSourceBytes = DefaultMaxSourceBytes
	}
	if opts.ReclaimInterval <= 0 {
		opts.ReclaimInterval = DefaultReclaimInterval
	}
	var b [4]byte
	_, _ = rand.Read(b[:])
	r := &Runtime{opts: opts, log: opts.Logger, fns: map[string]*pool{}, stop: make(chan struct{}), done: make(chan struct{}), idPfx: hex.EncodeToString(b[:])}
	go r.reclaimLoop()
	return r
}

// Compile compiles src with the runtime's source size limit.
func (r *Runtime) Compile(name string, src []byte) (*Program, error) {
	return compile(name, src, r.opts.MaxSourceBytes)
}

// Deploy compiles spec.Source, pre-warms spec.MinInstances instances and
// atomically makes this version the one new invocations get. A function of
// the same name is replaced: its in-flight invocations finish on the old
// version, whose instances are freed once they are done. On error nothing
// changes.
func (r *Runtime) Deploy(ctx context.Context, spec Spec) error {
	if spec.Name == "" {
		return fmt.Errorf("luavm: deploy: empty function name")
	}
	prog, err := r.Compile(spec.Name, spec.Source)
	if err != nil {
		return fmt.Errorf("luavm: deploy %s v%d: %w", spec.Name, spec.Version, err)
	}
	if spec.MaxConcurrency <= 0 {
		spec.MaxConcurrency = DefaultMaxConcurrency
	}
	if spec.MinInstances < 0 {
		spec.MinInstances = 0
	}
	if spec.MinInstances > spec.MaxConcurrency {
		spec.MinInstances = spec.MaxConcurrency
	}
	if spec.IdleTimeout <= 0 {
		spec.IdleTimeout = DefaultIdleTimeout
	}
	if spec.QueueTimeout <= 0 {
		spec.QueueTimeout = DefaultQueueTimeout
	}
	if spec.MaxWaiting <= 0 {
		spec.MaxWaiting = 4 * spec.MaxConcurrency
	}
	p := &pool{rt: r, spec: spec, prog: prog, sem: make(chan struct{}, spec.MaxConcurrency), gone: make(chan struct{})}
	p.limits = spec.Limits.withBase(r.opts.DefaultLimits.WithDefaults())
	for i := 0; i < spec.MinInstances; i++ {
		if err := ctx.Err(); err != nil {
			p.freeIdle()
			return fmt.Errorf("luavm: deploy %s: %w", spec.Name, err)
		}
		in, err := p.newInstance()
		if err != nil {
			p.freeIdle()
			return fmt.Errorf("luavm: deploy %s: %w", spec.Name, err)
		}
		in.lastUsed = time.Now()
		p.idle = append(p.idle, in)
	}
	r.mu.Lock()
	if r.closed {
		r.mu.Unlock()
		p.freeIdle()
		return ErrClosed
	}
	old := r.fns[spec.Name]
	r.fns[spec.Name] = p
	r.mu.Unlock()
	if old != nil {
		old.retire()
	}
	r.log.Debug("luavm: deployed", "function", spec.Name, "version", spec.Version, "warm", spec.MinInstances)
	return nil
}

// Remove undeploys a function; in-flight invocations finish first. It
// reports whether the function was deployed.
func (r *Runtime) Remove(name string) bool {
	r.mu.Lock()
	p := r.fns[name]
	delete(r.fns, name)
	r.mu.Unlock()
	if p == nil {
		return false
	}
	p.retire()
	return true
}

// Stats returns the pool statistics of the current version of name.
func (r *Runtime) Stats(name string) (PoolStats, bool) {
	r.mu.RLock()
	p := r.fns[name]
	r.mu.RUnlock()
	if p == nil {
		return PoolStats{}, false
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	return PoolStats{Version: p.spec.Version, Warm: len(p.idle), Busy: p.busy, Waiting: p.waiting,
		Invocations: p.invocations.Load(), ColdStarts: p.coldStarts.Load()}, true
}

// Close stops the runtime: later calls fail with ErrClosed, in-flight
// invocations finish, and every instance is freed.
func (r *Runtime) Close() {
	r.mu.Lock()
	if r.closed {
		r.mu.Unlock()
		return
	}
	r.closed = true
	pools := r.fns
	r.fns = map[string]*pool{}
	r.mu.Unlock()
	close(r.stop)
	<-r.done
	for _, p := range pools {
		p.retire()
	}
}

// Invoke runs the current version of function name once on ev. state may
// be nil (state.get then sees no values). It returns ErrNotFound for an
// unknown function, ErrBusy when no instance became free in time, and the
// invocation's error otherwise. The Result is never nil: its Cost and Logs
// are filled even when an error is returned.
func (r *Runtime) Invoke(ctx context.Context, name string, ev *Event, state StateReader) (*Result, error) {
	return r.InvokeGated(ctx, name, ev, state, nil)
}

// A Gate is asked, once an invocation holds an instance of its function
// and before it runs, for a turn of the caller's own (a bound of the
// caller on invocations running at once, whatever function: the gateway
// bounds direct calls so). It returns what gives the turn back, called
// when the invocation has run, or an error, with which the invocation
// fails without running (the instance goes back to its pool). An error
// meaning "no turn in time" should wrap ErrBusy.
type Gate func(ctx context.Context) (release func(), err error)

// InvokeGated is Invoke with a Gate (nil: none). The gate is asked only
// once an instance is held, so that a call waiting for its function's
// instance holds none of the gate's turns meanwhile.
func (r *Runtime) InvokeGated(ctx context.Context, name string, ev *Event, state StateReader, gate Gate) (*Result, error) {
	return r.invoke(ctx, name, ev, state, gate, true)
}

// TryInvoke is Invoke without waiting for an instance: when none of the
// function's is free at once, it fails with ErrBusy without running. (The
// gateway's events take a turn of the gateway first and must not hold it
// while they wait, nor hold an instance while they wait for the turn.)
func (r *Runtime) TryInvoke(ctx context.Context, name string, ev *Event, state StateReader) (*Result, error) {
	return r.invoke(ctx, name, ev, state, nil, false)
}

func (r *Runtime) invoke(ctx context.Context, name string, ev *Event, state StateReader, gate Gate, wait bool) (*Result, error) {
	res := &Result{Function: name}
	if ev == nil {
		ev = &Event{}
	}
	start := time.Now()
	if err := ctx.Err(); err != nil {
		// The caller left before the call ran: not run, as when busy
		// (the gateway meters and counts nothing for it).
		res.Cost.Outcome = outcome(ErrBusy)
		return res, fmt.Errorf("luavm: %s: %w: %w", name, ErrBusy, err)
	}
	var p *pool
	var in *instance
	var gated func() // the gate's turn, held until the call returns
	defer func() {
		if gated != nil {
			gated()
		}
	}()
	for {
		var err error
		p, err = r.acquirePool(name)
		if err != nil {
			res.Cost.Outcome = outcome(err)
			return res, err
		}
		in, err = p.get(ctx, wait)
		if errors.Is(err, errRetired) {
			// Deployed or removed while this call waited for a slot: a
			// call that had not started runs the version current now.
			p.release()
			continue
		}
		if err != nil {
			p.release()
			res.Cost.Outcome = outcome(err)
			res.Cost.Wall = time.Since(start)
			return res, fmt.Errorf("luavm: %s: %w", name, err)
		}
		if gate != nil && gated == nil {
			done, err := gate(ctx)
			if err != nil {
				p.put(in)
				p.release()
				res.Cost.Outcome = outcome(err)
				res.Cost.Wall = time.Since(start)
				return res, fmt.Errorf("luavm: %s: %w", name, err)
			}
			gated = done
			if p.isRetired() {
				// Deployed or removed while this call waited for the
				// gate: it has not started, so it runs the version
				// current now (or finds the function gone). The turn is
				// given back first: a call waiting for an instance holds
				// none (with it, the new version's only instance and the
				// last turn could wait for each other).
				p.put(in)
				p.release()
				gated()
				gated = nil
				continue
			}
		}
		break
	}
	defer p.release()
	res.Version, res.Tag = p.spec.Version, p.spec.Tag
	p.invocations.Add(1)
	id := r.invocationID()
	res.InvocationID = id
	err := in.run(ctx, name, ev, state, p.limits, id, res)
	p.put(in)
	if errors.Is(err, ErrPanic) {
		r.log.Error("luavm: interpreter panic recovered; instance discarded", "function", name, "version", p.spec.Version, "err", err)
	}
	if err != nil {
		return res, fmt.Errorf("luavm: %s v%d: %w", name, p.spec.Version, err)
	}
	return res, nil
}

// invocationID returns a new unique invocation id (ctx.invocation_id).
func (r *Runtime) invocationID() string {
	return r.idPfx + strconv.FormatUint(r.idSeq.Add(1), 16)
}

// acquirePool returns the current pool of name with its in-flight count
// raised; release lowers it.
func (r *Runtime) acquirePool(name string) (*pool, error) {
	for {
		r.mu.RLock()
		closed := r.closed
		p := r.fns[name]
		r.mu.RUnlock()
		if closed {
			return nil, ErrClosed
		}
		if p == nil {
			return nil, fmt.Errorf("%w: %s", ErrNotFound, name)
		}
		p.mu.Lock()
		if !p.retired {
			p.inflight++
			p.mu.Unlock()
			return p, nil
		}
		p.mu.Unlock() // swapped meanwhile: take the new one
	}
}

// isRetired reports whether p was replaced (a deploy) or removed.
func (p *pool) isRetired() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.retired
}

func (p *pool) release() {
	p.mu.Lock()
	p.inflight--
	free := p.retired && p.inflight == 0
	p.mu.Unlock()
	if free {
		p.freeIdle()
	}
}

func (p *pool) newInstance() (*instance, error) {
	in, err := newInstance(p.prog, &p.spec, p.limits)
	if err == nil {
		p.coldStarts.Add(1)
	}
	return in, err
}

// errRetired is get's answer when the pool was replaced (a deploy) or
// removed while the call waited: Invoke then takes the current pool.
var errRetired = errors.New("luavm: pool replaced")

// get waits for a concurrency slot (bounded queue, QueueTimeout) and
// returns an idle instance or a new one.
func (p *pool) get(ctx context.Context, wait bool) (*instance, error) {
	select {
	case p.sem <- struct{}{}:
	default:
		if !wait {
			return nil, fmt.Errorf("%w: no instance free", ErrBusy)
		}
		p.mu.Lock()
		if p.waiting >= p.spec.MaxWaiting {
			p.mu.Unlock()
			return nil, fmt.Errorf("%w: %d waiting", ErrBusy, p.spec.MaxWaiting)
		}
		p.waiting++
		p.mu.Unlock()
		t := time.NewTimer(p.spec.QueueTimeout)
		var err error
		select {
		case p.sem <- struct{}{}:
		case <-p.gone:
			err = errRetired
		case <-t.C:
			err = fmt.Errorf("%w: no instance free within %v", ErrBusy, p.spec.QueueTimeout)
		case <-ctx.Done():
			// The caller left while waiting: the call did not run.
			err = fmt.Errorf("%w: %w", ErrBusy, ctx.Err())
		}
		t.Stop()
		p.mu.Lock()
		p.waiting--
		p.mu.Unlock()
		if err != nil {
			return nil, err
		}
	}
	p.mu.Lock()
	if p.retired {
		// Replaced while the slot was taken: the caller moves to the
		// current pool (Invoke).
		p.mu.Unlock()
		<-p.sem
		return nil, errRetired
	}
	p.busy++
	if n := len(p.idle); n > 0 {
		in := p.idle[n-1]
		p.idle[n-1] = nil
		p.idle = p.idle[:n-1]
		p.mu.Unlock()
		return in, nil
	}
	p.mu.Unlock()
	in, err := p.newInstance()
	if err != nil {
		p.mu.Lock()
		p.busy--
		p.mu.Unlock()
		<-p.sem
		return nil, err
	}
	return in, nil
}

// put returns an instance after an invocation; broken ones are closed.
func (p *pool) put(in *instance) {
	in.lastUsed = time.Now()
	p.mu.Lock()
	p.busy--
	keep := !in.broken && !p.retired
	if keep {
		p.idle = append(p.idle, in)
	}
	p.mu.Unlock()
	<-p.sem
	if !keep {
		in.close()
	}
}

// retire marks the pool as replaced; its instances are freed as soon as no
// invocation is in flight.
func (p *pool) retire() {
	p.mu.Lock()
	if !p.retired {
		close(p.gone)
	}
	p.retired = true
	free := p.inflight == 0
	p.mu.Unlock()
	if free {
		p.freeIdle()
	}
}

func (p *pool) freeIdle() {
	p.mu.Lock()
	idle := p.idle
	p.idle = nil
	p.mu.Unlock()
	for _, in := range idle {
		in.close()
	}
}

// reclaim closes instances idle for longer than IdleTimeout, keeping
// MinInstances, and starts instances again up to MinInstances when some
// were discarded (a breach or a panic throws its instance away).
func (p *pool) reclaim(now time.Time) {
	var drop []*instance
	p.mu.Lock()
	for len(p.idle) > p.spec.MinInstances {
		// idle is LIFO: the oldest is first.
		if now.Sub(p.idle[0].lastUsed) < p.spec.IdleTimeout {
			break
		}
		drop = append(drop, p.idle[0])
		p.idle[0] = nil
		p.idle = p.idle[1:]
	}
	need := 0
	if !p.retired {
		need = p.spec.MinInstances - len(p.idle) - p.busy
	}
	p.mu.Unlock()
	for _, in := range drop {
		in.close()
	}
	for ; need > 0; need-- {
		in, err := p.newInstance()
		if err != nil {
			p.rt.log.Warn("luavm: min_instances not restored", "function", p.spec.Name, "version", p.spec.Version, "err", err)
			return
		}
		in.lastUsed = now
		p.mu.Lock()
		keep := !p.retired && len(p.idle)+p.busy < p.spec.MinInstances
		if keep {
			p.idle = append(p.idle, in)
		}
		p.mu.Unlock()
		if !keep {
			in.close()
			return
		}
	}
}

func (r *Runtime) reclaimLoop() {
	defer close(r.done)
	t := time.NewTicker(r.opts.ReclaimInterval)
	defer t.Stop()
	for {
		select {
		case <-r.stop:
			return
		case now := <-t.C:
			r.mu.RLock()
			pools := make([]*pool, 0, len(r.fns))
			for _, p := range r.fns {
				pools = append(pools, p)
			}
			r.mu.RUnlock()
			for _, p := range pools {
				p.reclaim(now)
			}
		}
	}
}
