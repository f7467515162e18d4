package sync

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"math/rand/v2"
	"sort"
	"strconv"
	"strings"
	gosync "sync"
	"sync/atomic"
	"time"

	"golang.org/x/time/rate"

	"github.com/moongate-edge/moongate/store"
)

// Store is what the manager needs from the store: the per-target outboxes
// and Commit, for the dead letters of records an upstream refused.
// *store.Store implements it, and BlobObjects, which the manager hands to
// the targets (Env.Objects) for the blob sends.
type Store interface {
	OutboxRead(ctx context.Context, target string, after uint64, limit, maxBytes int) ([]store.OutboxEntry, error)
	OutboxAck(ctx context.Context, target string, upTo uint64) error
	OutboxStats(target string) store.OutboxStats
	OutboxBounds(target string) (head, next uint64)
	OutboxTargets() []string
	Commit(ctx context.Context, c *store.Commit) (store.CommitResult, error)
	GetState(ctx context.Context, function, key string) ([]byte, bool, error)
}

// DeadMarkFunction is the state namespace where each outbox keeps the
// sequence of the last entry whose record was dead-lettered, written in the
// same atomic commit as the dead letter: the outbox entry itself goes with
// a later acknowledgement, and an entry sent again after a crash in between
// (refused again) is not dead-lettered twice. It is not a valid function
// name, so it cannot clash with one.
const DeadMarkFunction = "_sync"

// Options configures a Manager.
type Options struct {
	Store     Store
	GatewayID string
	Logger    *slog.Logger
	Targets   []TargetConfig
	// PollInterval is how often an idle target looks for new records in its
	// outbox (default 20ms).
	PollInterval time.Duration
}

// Target states reported in TargetStatus.State.
const (
	StateConnecting   = "connecting"   // not yet connected since start
	StateConnected    = "connected"    // the last attempt succeeded
	StateDisconnected = "disconnected" // the last attempt failed; retrying with backoff
	StatePaused       = "paused"       // the daily byte budget is spent; priority streams still flow
	StateStopped      = "stopped"      // the manager stopped
	StateUnconfigured = "unconfigured" // an outbox with records but no configured target
)

// DeadLetterPrefix prefixes the Function of the dead letters the manager
// writes for refused records: "sync:<target>".
const DeadLetterPrefix = "sync:"

// TargetStatus is the state of one target, a plain value for APIs.
type TargetStatus struct {
	Name          string
	Type          string
	State         string
	Connected     bool
	Backlog       int64         // records waiting (normal and priority outboxes)
	BacklogBytes  int64         // stored size of the waiting entries (records and blob sends)
	OldestPending time.Duration // age of the oldest waiting entry
	Delivered     int64         // records acknowledged upstream since start (not counting DeadLettered)
	DeliveredB    int64         // their stored bytes
	Rate          float64       // records/s delivered over the last 10 s
	DeadLettered  int64         // records refused by the upstream since start (in the dead letters)
	Dropped       int64         // records dropped by the store's outbox quota (since the outbox exists)
	LastError     string
	LastErrorAt   time.Time
	StateSince    time.Time
	BudgetUsed    int64 // bytes sent this UTC day (counted when DailyBudget > 0)

	// Blob sends (buckets with sync): waiting, the bytes of their content,
	// acknowledged upstream since start, refused since start (in the dead
	// letters), dropped by the outbox quota (since the outbox exists).
	BlobBacklog       int64
	BlobBacklogBytes  int64
	BlobsDelivered    int64
	BlobsDeadLettered int64
	BlobsDropped      int64
}

// Manager drains every configured target's outboxes, each in its own
// goroutine with its own cursor. Create it with New, run it with Run.
// Status and Route are safe for concurrent use; the zero value is not
// usable.
type Manager struct {
	opts    Options
	log     *slog.Logger
	workers []*worker
	byName  map[string]*worker
	prio    map[string]map[string]bool // target -> priority streams
	running atomic.Bool
}

// New checks the configuration and builds every target (connections are
// made later, by Run). Errors: ErrDuplicateTarget, ErrUnknownType,
// ErrInvalidConfig and the constructors' own.
func New(opts Options) (*Manager, error) {
	if opts.Store == nil {
		return nil, fmt.Errorf("%w: Options.Store is required", ErrInvalidConfig)
	}
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	if opts.PollInterval <= 0 {
		opts.PollInterval = 20 * time.Millisecond
	}
	m := &Manager{opts: opts, log: opts.Logger, byName: map[string]*worker{}, prio: map[string]map[string]bool{}}
	for _, tc := range opts.Targets {
		if tc.Name == "" || strings.ContainsAny(tc.Name, "!\x00") {
			m.closeTargets()
			return nil, fmt.Errorf("%w: target name %q", ErrInvalidConfig, tc.Name)
		}
		if _, dup := m.byName[tc.Name]; dup {
			m.closeTargets()
			return nil, fmt.Errorf("%w: %q", ErrDuplicateTarget, tc.Name)
		}
		mod, ok := lookupModule(tc.Type)
		if !ok {
			m.closeTargets()
			return nil, fmt.Errorf("%w: %q (target %s; registered: %s)", ErrUnknownType, tc.Type, tc.Name, strings.Join(Modules(), ", "))
		}
		tc.withDefaults()
		objs, _ := opts.Store.(BlobObjects)
		t, err := mod.New(tc, Env{GatewayID: opts.GatewayID, Logger: opts.Logger.With("target", tc.Name), Objects: objs})
		if err != nil {
			m.closeTargets()
			return nil, fmt.Errorf("sync target %s: %w", tc.Name, err)
		}
		w := newWorker(m, tc, t)
		m.workers = append(m.workers, w)
		m.byName[tc.Name] = w
		if len(tc.PriorityStreams) > 0 {
			ps := map[string]bool{}
			for _, s := range tc.PriorityStreams {
				ps[s] = true
			}
			m.prio[tc.Name] = ps
		}
	}
	return m, nil
}

func (m *Manager) closeTargets() {
	for _, w := range m.workers {
		_ = w.target.Close()
	}
}

// Targets lists the configured target names in configuration order.
func (m *Manager) Targets() []string {
	out := make([]string, len(m.workers))
	for i, w := range m.workers {
		out[i] = w.cfg.Name
	}
	return out
}

// Has reports whether a target of that name is configured.
func (m *Manager) Has(name string) bool { _, ok := m.byName[name]; return ok }

// Route maps the targets of a record of stream to the outboxes it must be
// written to: a target's own outbox, or its priority outbox
// (PriorityOutbox) when stream is one of its priority streams. It returns
// targets itself when nothing changes. A nil Manager routes nothing.
func (m *Manager) Route(stream string, targets []string) []string {
	if m == nil || len(m.prio) == 0 {
		return targets
	}
	var out []string
	for i, t := range targets {
		if m.prio[t][stream] {
			if out == nil {
				out = append([]string(nil), targets...)
			}
			out[i] = PriorityOutbox(t)
		}
	}
	if out == nil {
		return targets
	}
	return out
}

// Run drains the outboxes until ctx ends, then stops every worker, writes
// the last acknowledgements to the store and closes the targets. It returns
// nil after a normal stop. Run may be called once.
func (m *Manager) Run(ctx context.Context) error {
	if !m.running.CompareAndSwap(false, true) {
		return errors.New("sync: Manager.Run called twice")
	}
	var wg gosync.WaitGroup
	for _, w := range m.workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			w.run(ctx)
		}()
	}
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			for _, w := range m.workers {
				_ = w.target.Close()
			}
			wg.Wait()
			for _, w := range m.workers {
				w.setState(StateStopped, nil)
			}
			return nil
		case now := <-tick.C:
			for _, w := range m.workers {
				w.sample(now)
			}
		}
	}
}

// Status returns the state of every configured target (in configuration
// order), then of every outbox in the store that holds records but has no
// configured target (State StateUnconfigured).
func (m *Manager) Status() []TargetStatus {
	out := make([]TargetStatus, 0, len(m.workers))
	for _, w := range m.workers {
		out = append(out, w.status())
	}
	var extra []string
	for _, name := range m.opts.Store.OutboxTargets() {
		base := strings.TrimSuffix(name, PrioritySuffix)
		if m.byName[base] != nil {
			continue
		}
		if st := m.opts.Store.OutboxStats(name); st.Backlog > 0 || st.Dropped > 0 {
			extra = append(extra, name)
		}
	}
	sort.Strings(extra)
	for _, name := range extra {
		st := m.opts.Store.OutboxStats(name)
		out = append(out, TargetStatus{Name: name, State: StateUnconfigured, Backlog: st.Backlog - st.Blobs, BacklogBytes: st.Bytes,
			OldestPending: st.OldestAge, Dropped: st.Dropped - st.BlobsDropped,
			BlobBacklog: st.Blobs, BlobBacklogBytes: st.BlobBytes, BlobsDropped: st.BlobsDropped})
	}
	return out
}

// outbox is one outbox a worker drains, with its in-memory cursor.
type outbox struct {
	name    string
	prio    bool
	after   uint64              // last sequence delivered (or handed to the acker)
	pending []store.OutboxEntry // the rest of a failed batch, retried as is
	since   time.Time           // when a partial batch was first seen
	ahead   chan readResult     // the batch after the one being delivered, read meanwhile
	// A partial batch waiting for max_delay, and the outbox's Next when it
	// was read: read again only when more records came (then only those).
	wait     []store.OutboxEntry
	waitNext uint64
}

type readResult struct {
	after uint64
	ents  []store.OutboxEntry
	err   error
}

type worker struct {
	m       *Manager
	cfg     TargetConfig
	target  Target
	log     *slog.Logger
	outs    []*outbox
	limiter *rate.Limiter

	ackMu   gosync.Mutex
	ackUpTo map[string]uint64
	ackKick chan struct{}

	mu           gosync.Mutex
	state        string
	stateSince   time.Time
	lastErr      string
	lastErrAt    time.Time
	delivered    int64
	deliveredB   int64
	deadLettered int64
	blobsOK      int64 // blob sends acknowledged
	blobsDead    int64 // blob sends refused
	budgetDay    int64 // UTC day number of budgetUsed
	// pausedDay is the UTC day on which the normal outbox went over the
	// budget (0: not paused); worker goroutine only.
	pausedDay  int64
	budgetUsed int64
	samples    [11]sample
	nsamples   int

	attempt     int // consecutive failures that acknowledged nothing
	nextConnect time.Time
	// connAt is when the connection the idle loop last saw open (or made)
	// was made; zero when none is known to be open.
	connAt time.Time
}

type sample struct {
	t time.Time
	n int64
}

func newWorker(m *Manager, cfg TargetConfig, t Target) *worker {
	w := &worker{m: m, cfg: cfg, target: t, log: m.log.With("target", cfg.Name, "type", cfg.Type),
		ackUpTo: map[string]uint64{}, ackKick: make(chan struct{}, 1), state: StateConnecting, stateSince: time.Now()}
	// The priority outbox also when priority_streams is gone from the
	// configuration but the store still holds records routed to it then:
	// nothing else would send them (nor show them: Status counts it as
	// this target's).
	if len(cfg.PriorityStreams) > 0 || m.opts.Store.OutboxStats(PriorityOutbox(cfg.Name)).Backlog > 0 {
		w.outs = append(w.outs, &outbox{name: PriorityOutbox(cfg.Name), prio: true})
	}
	w.outs = append(w.outs, &outbox{name: cfg.Name})
	if cfg.BandwidthLimit > 0 {
		// A burst of a second's bytes, at least one batch; within an int
		// of a 32-bit ARM (bandwidth_limit: 4GiB made it negative there,
		// and every wait failed: the worker ended).
		burst := min(max(cfg.BandwidthLimit, int64(cfg.MaxBytes)), math.MaxInt32)
		w.limiter = rate.NewLimiter(rate.Limit(cfg.BandwidthLimit), int(burst))
	}
	return w
}

func (w *worker) setState(state string, err error) {
	w.mu.Lock()
	prev := w.state
	now := time.Now()
	if err != nil {
		w.lastErr = err.Error()
		w.lastErrAt = now
	}
	changed := prev != state
	if changed {
		w.state = state
		w.stateSince = now
	}
	w.mu.Unlock()
	if !changed {
		return
	}
	if err != nil {
		w.log.Warn("sync target state", "from", prev, "to", state, "err", err)
	} else {
		w.log.Info("sync target state", "from", prev, "to", state)
	}
}

func (w *worker) sample(now time.Time) {
	w.mu.Lock()
	defer w.mu.Unlock()
	copy(w.samples[1:], w.samples[:len(w.samples)-1])
	w.samples[0] = sample{t: now, n: w.delivered}
	w.nsamples = min(w.nsamples+1, len(w.samples))
}

func (w *worker) status() TargetStatus {
	w.mu.Lock()
	st := TargetStatus{Name: w.cfg.Name, Type: w.cfg.Type, State: w.state, StateSince: w.stateSince,
		Delivered: w.delivered, DeliveredB: w.deliveredB, DeadLettered: w.deadLettered,
		BlobsDelivered: w.blobsOK, BlobsDeadLettered: w.blobsDead,
		LastError: w.lastErr, LastErrorAt: w.lastErrAt, Connected: w.state == StateConnected || w.state == StatePaused}
	if w.cfg.DailyBudget > 0 && w.budgetDay == utcDay(time.Now()) {
		st.BudgetUsed = w.budgetUsed
	}
	if w.nsamples >= 2 {
		a, b := w.samples[0], w.samples[w.nsamples-1]
		if dt := a.t.Sub(b.t).Seconds(); dt > 0 {
			st.Rate = float64(a.n-b.n) / dt
		}
	}
	w.mu.Unlock()
	if c, ok := w.target.(Connector); ok && st.State != StateStopped {
		st.Connected = c.Connected()
	}
	for _, ob := range w.outs {
		os := w.m.opts.Store.OutboxStats(ob.name)
		st.Backlog += os.Backlog - os.Blobs
		st.BacklogBytes += os.Bytes
		st.OldestPending = max(st.OldestPending, os.OldestAge)
		st.Dropped += os.Dropped - os.BlobsDropped
		st.BlobBacklog += os.Blobs
		st.BlobBacklogBytes += os.BlobBytes
		st.BlobsDropped += os.BlobsDropped
	}
	return st
}

// count adds a finished prefix of a batch to the counters: records and
// blob sends delivered (the refused ones were counted by deadLetter), and
// the bytes sent today.
func (w *worker) count(done []store.OutboxEntry, rej []Rejection) {
	var refused map[int]bool // nil (no allocation) in the common case
	for _, r := range rej {
		if refused == nil {
			refused = make(map[int]bool, len(rej))
		}
		refused[r.Index] = true
	}
	var recs, blobs, b int64
	for i := range done {
		if refused[i] {
			continue
		}
		if done[i].Blob != nil {
			blobs++
		} else {
			recs++
			b += int64(done[i].Size)
		}
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	w.delivered += recs
	w.deliveredB += b
	w.blobsOK += blobs
	if w.cfg.DailyBudget > 0 {
		// Counted to the day it was delivered in: a delivery after
		// midnight UTC starts the new day's count (it went to the old
		// day's, which the next check then wiped).
		if day := utcDay(time.Now()); w.budgetDay != day {
			w.budgetDay, w.budgetUsed = day, 0
		}
		w.budgetUsed += w.cost(done)
	}
}

// cost is what entries count against the daily budget: their stored
// bytes, except that a blob send counts its content when the target sends
// it (BlobSender).
func (w *worker) cost(entries []store.OutboxEntry) int64 {
	content := false
	if bs, ok := w.target.(BlobSender); ok {
		content = bs.SendsBlobContent()
	}
	var n int64
	for i := range entries {
		if content && entries[i].Blob != nil {
			n += entries[i].Blob.Size
		} else {
			n += int64(entries[i].Size)
		}
	}
	return n
}

// sends is how many entries of batch one Deliver call can send: all of
// them, except for a target that sends blob content, which stops after
// the first blob (the budget is checked against what goes out; charging
// the blobs behind it would pause the target after one blob a day).
func (w *worker) sends(batch []store.OutboxEntry) int {
	if bs, ok := w.target.(BlobSender); ok && bs.SendsBlobContent() {
		for i := range batch {
			if batch[i].Blob != nil {
				return i + 1
			}
		}
	}
	return len(batch)
}

func utcDay(t time.Time) int64 { return t.UTC().Unix() / 86400 }

// backoff is the next wait after a failure: exponential from
// InitialBackoff over the consecutive failures (w.attempt, reset by an
// attempt that acknowledged at least one entry), capped at MaxBackoff,
// with full jitter (uniform in [0, cap)), at least 10ms.
func (w *worker) backoff(after time.Duration) time.Duration {
	c := w.cfg.InitialBackoff
	for i := 0; i < w.attempt && c < w.cfg.MaxBackoff; i++ {
		if c > w.cfg.MaxBackoff/2 {
			c = w.cfg.MaxBackoff // doubling could overflow
			break
		}
		c *= 2
	}
	c = max(min(c, w.cfg.MaxBackoff), 1)
	w.attempt++
	d := max(time.Duration(rand.Int64N(int64(c))), 10*time.Millisecond)
	if after > 0 {
		d = max(d, min(after, time.Hour))
	}
	return d
}

func sleepCtx(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}

func (w *worker) run(ctx context.Context) {
	stop, ackDone := make(chan struct{}), make(chan struct{})
	go w.acker(stop, ackDone)
	defer func() {
		close(stop)
		<-ackDone
	}()
	for ctx.Err() == nil {
		ob, batch, err := w.next(ctx)
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			w.setState(StateDisconnected, fmt.Errorf("read outbox: %w", err))
			sleepCtx(ctx, w.backoff(0))
			continue
		}
		bytes := 0
		for i := range batch {
			bytes += batch[i].Size
		}
		if !ob.prio && w.cfg.DailyBudget > 0 && !w.budgetAllows(w.cost(batch[:w.sends(batch)])) {
			w.setState(StatePaused, nil)
			// next reads only the priority outbox until the day ends: the
			// same batch would be refused again (it only grows), and
			// reading and encoding it every second costs a Pi for nothing.
			w.pausedDay = utcDay(time.Now())
			continue
		}
		if w.limiter != nil && !w.waitBandwidth(ctx, ob, bytes) {
			if ctx.Err() != nil {
				return
			}
			// Priority records came while this normal batch waited for
			// its bandwidth: they go first (next), then this batch
			// (held as is if it is a retry, read again otherwise).
			continue
		}
		res, derr := w.target.Deliver(ctx, batch)
		res.Done = min(max(res.Done, 0), len(batch))
		done := res.Done
		if len(res.Rejected) > 0 {
			if n, err := w.deadLetter(ctx, ob.name, batch, res.Rejected); err != nil {
				// Keep the refused records in the outbox: never lose them.
				done = n
				if derr == nil {
					derr = fmt.Errorf("dead letter: %w", err)
				}
			}
		}
		if done > 0 {
			ob.after = batch[done-1].Seq
			// Counted before the acknowledgement is handed over, so that
			// the status never shows a backlog drained of records it
			// has not counted as delivered yet.
			w.count(batch[:done], res.Rejected)
			w.ack(ob.name, ob.after)
			// Progress, even if the rest fails: a slow but working
			// upstream is retried after the initial backoff.
			w.attempt = 0
		}
		if derr != nil {
			if ctx.Err() != nil {
				return
			}
			ob.pending = batch[done:]
			if len(ob.pending) == 0 {
				ob.pending = nil
			}
			var re *RetryError
			after := time.Duration(0)
			if errors.As(derr, &re) {
				after = re.After
			}
			w.setState(StateDisconnected, derr)
			w.connAt = time.Time{} // this wait is the one for a connection lost too
			sleepCtx(ctx, w.backoff(after))
			continue
		}
		ob.pending = nil
		w.attempt = 0
		w.setState(w.upState(), nil)
	}
}

// upState is the state of a target whose last attempt succeeded:
// connected, or paused while the normal outbox is over today's budget
// (a priority delivery or a reconnect does not end the pause).
func (w *worker) upState() string {
	if w.pausedDay != 0 && w.pausedDay == utcDay(time.Now()) {
		return StatePaused
	}
	return StateConnected
}

// waitBandwidth waits for the limiter's tokens for n bytes of a batch of
// ob. A normal batch may wait long (max_bytes / bandwidth_limit: minutes
// on a slow link) before anything of it is sent: meanwhile the priority
// outbox is polled, and when records come there the reservation is
// cancelled (its tokens given back) and waitBandwidth returns false, as
// it does when ctx ends.
func (w *worker) waitBandwidth(ctx context.Context, ob *outbox, n int) bool {
	n = min(n, w.limiter.Burst())
	var prio *outbox
	if !ob.prio && w.outs[0].prio {
		prio = w.outs[0]
	}
	if prio == nil {
		return w.limiter.WaitN(ctx, n) == nil
	}
	r := w.limiter.ReserveN(time.Now(), n)
	if !r.OK() {
		return w.limiter.WaitN(ctx, n) == nil
	}
	d := r.Delay()
	if d <= 0 {
		return true
	}
	done := time.NewTimer(d)
	defer done.Stop()
	poll := time.NewTicker(w.m.opts.PollInterval)
	defer poll.Stop()
	for {
		select {
		case <-ctx.Done():
			r.Cancel()
			return false
		case <-done.C:
			return true
		case <-poll.C:
			if w.waiting(prio) {
				r.Cancel()
				return false
			}
		}
	}
}

// waiting reports whether ob has entries to send: a held retry, or
// entries after its cursor.
func (w *worker) waiting(ob *outbox) bool {
	if ob.pending != nil {
		return true
	}
	head, next := w.m.opts.Store.OutboxBounds(ob.name)
	return next > max(head, ob.after+1)
}

// budgetAllows reports whether n more bytes fit in today's budget (a batch
// always goes when nothing was sent today, so one batch larger than the
// budget cannot block forever).
func (w *worker) budgetAllows(n int64) bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	day := utcDay(time.Now())
	if w.budgetDay != day {
		w.budgetDay, w.budgetUsed = day, 0
	}
	return w.budgetUsed == 0 || w.budgetUsed+n <= w.cfg.DailyBudget
}

// next returns the next batch to send: the priority outbox's (a retry
// first), then the normal outbox's (a retry first): an alert does not
// wait behind a retry of the normal outbox. A partial
// normal batch waits up to MaxDelay for more records; a batch that cannot
// take the next record (max_records, or max_bytes) is full. While idle it
// connects connectors.
func (w *worker) next(ctx context.Context) (*outbox, []store.OutboxEntry, error) {
	paused := func(ob *outbox) bool {
		// Over today's budget (see run): a pending retry waits for
		// tomorrow too (handed back at once, it was refused again at once,
		// in a loop taking a whole core).
		return !ob.prio && w.pausedDay != 0 && w.pausedDay == utcDay(time.Now())
	}
	for {
		wait := w.m.opts.PollInterval
		for _, ob := range w.outs {
			if paused(ob) {
				continue
			}
			head, next := w.m.opts.Store.OutboxBounds(ob.name)
			if ob.pending != nil {
				// As it was, even when the outbox quota dropped some of its
				// entries meanwhile: an HTTP retry keeps its Idempotency-Key
				// (records still in it are sent again; a blob send whose
				// object was given back is refused by the target, and
				// deadLetter leaves out what the quota dropped).
				return ob, ob.pending, nil
			}
			if ob.wait != nil && (head > ob.wait[0].Seq || ob.wait[0].Seq <= ob.after) {
				ob.wait = nil // dropped by a quota meanwhile: read again
			}
			var ents []store.OutboxEntry
			var err error
			if ob.wait != nil {
				ents = ob.wait
				if next > ob.waitNext {
					ents, err = w.readMore(ctx, ob, ents)
				}
			} else if ob.ahead != nil {
				r := <-ob.ahead
				ob.ahead = nil
				if r.after == ob.after && r.err == nil {
					ents = r.ents
				} else {
					ents, err = w.read(ctx, ob, ob.after)
				}
			} else {
				ents, err = w.read(ctx, ob, ob.after)
			}
			if err != nil {
				return nil, nil, err
			}
			if len(ents) == 0 {
				ob.since, ob.wait = time.Time{}, nil
				continue
			}
			total := 0
			for i := range ents {
				total += ents[i].Size
			}
			// Records after the last one read that it did not take (they
			// could be read before it read) would not fit: waiting cannot
			// make the batch larger.
			full := len(ents) >= w.cfg.MaxRecords || total >= w.cfg.MaxBytes*3/4 || next > ents[len(ents)-1].Seq+1
			now := time.Now()
			if ob.since.IsZero() {
				ob.since = now
			}
			if full || ob.prio || w.cfg.MaxDelay < 0 || now.Sub(ob.since) >= w.cfg.MaxDelay {
				ob.since, ob.wait = time.Time{}, nil
				if full && !ob.prio {
					// A backlog: read the next batch while this one is
					// delivered. It is used only if this one is delivered
					// whole (the cursor then equals its last sequence).
					ch := make(chan readResult, 1)
					ob.ahead = ch
					last := ents[len(ents)-1].Seq
					go func() {
						e, err := w.read(ctx, ob, last)
						if p, ok := w.target.(Preparer); ok && err == nil && len(e) > 0 {
							p.Prepare(e)
						}
						ch <- readResult{after: last, ents: e, err: err}
					}()
				}
				return ob, ents, nil
			}
			ob.wait, ob.waitNext = ents, next
			wait = min(wait, w.cfg.MaxDelay-now.Sub(ob.since))
		}
		if c, ok := w.target.(Connector); ok {
			if tried, err := w.idleConnect(ctx, c); err != nil {
				return nil, nil, err
			} else if tried {
				continue
			}
		}
		if !sleepCtx(ctx, max(wait, time.Millisecond)) {
			return nil, nil, ctx.Err()
		}
	}
}

// idleConnect keeps a connector connected while the worker is idle, with
// the backoff: a connect that fails and a connection lost are both
// failures, and the next connect waits for the backoff. A connect that
// succeeds does not reset the backoff (a connection that the upstream
// closes right after it was made, say for another client with the same
// client id, would be made again at every poll): a delivery that succeeds
// does (run), and so does a connection that stayed up for stableConn.
// tried reports whether it connected (or tried to); err is the context's.
func (w *worker) idleConnect(ctx context.Context, c Connector) (tried bool, err error) {
	now := time.Now()
	if c.Connected() {
		if w.connAt.IsZero() {
			w.connAt = now // made by Deliver
		} else if w.attempt > 0 && now.Sub(w.connAt) >= w.stableConn() {
			w.attempt = 0
		}
		return false, nil
	}
	if !w.connAt.IsZero() {
		// Lost while idle: a failure, unless it had stayed up.
		up := now.Sub(w.connAt)
		w.connAt = time.Time{}
		if up >= w.stableConn() {
			w.attempt = 0
		}
		w.setState(StateDisconnected, fmt.Errorf("connection lost %s after it was made", up.Round(time.Millisecond)))
		w.nextConnect = now.Add(w.backoff(0))
	}
	if now.Before(w.nextConnect) {
		return false, nil
	}
	if err := c.Connect(ctx); err != nil {
		if ctx.Err() != nil {
			return true, ctx.Err()
		}
		w.setState(StateDisconnected, err)
		w.nextConnect = time.Now().Add(w.backoff(0))
		return true, nil
	}
	w.connAt = time.Now()
	w.setState(w.upState(), nil)
	return true, nil
}

// stableConn is how long a connection must stay up to count as a success
// that resets the backoff: backoff.max, so that a connection lost sooner
// keeps the backoff growing up to its cap.
func (w *worker) stableConn() time.Duration { return w.cfg.MaxBackoff }

func (w *worker) read(ctx context.Context, ob *outbox, after uint64) ([]store.OutboxEntry, error) {
	return w.m.opts.Store.OutboxRead(ctx, ob.name, after, w.cfg.MaxRecords, w.cfg.MaxBytes)
}

// readMore appends to the partial batch ents the records committed after
// it that fit (max_records, max_bytes). A record that does not fit is left
// for the next batch (next then finds the batch full).
func (w *worker) readMore(ctx context.Context, ob *outbox, ents []store.OutboxEntry) ([]store.OutboxEntry, error) {
	total := 0
	for i := range ents {
		total += ents[i].Size
	}
	room := w.cfg.MaxRecords - len(ents)
	if room <= 0 || total >= w.cfg.MaxBytes {
		return ents, nil
	}
	more, err := w.m.opts.Store.OutboxRead(ctx, ob.name, ents[len(ents)-1].Seq, room, w.cfg.MaxBytes-total)
	if err != nil {
		return nil, err
	}
	if len(more) > 0 && total+more[0].Size > w.cfg.MaxBytes {
		more = nil // OutboxRead always takes its first record
	}
	return append(ents[:len(ents):len(ents)], more...), nil
}

// deadLetterHead is how much of a refused record's data its dead letter
// keeps when the whole record line cannot be stored as one (it is larger
// than the store's MaxValueBytes): escaped as a JSON string, at most 6
// times as many bytes, well within the default 1 MiB.
const deadLetterHead = 64 << 10

// deadLetter stores the refused records as dead letters, in order. It
// returns how many entries of the batch are safe to acknowledge when
// storing one fails with an error that can clear (disk space, quota,
// context): those before the first refused record not stored.
func (w *worker) deadLetter(ctx context.Context, outbox string, batch []store.OutboxEntry, rej []Rejection) (int, error) {
	mark, err := w.deadMark(ctx, outbox)
	if err != nil {
		return 0, err
	}
	head, _ := w.m.opts.Store.OutboxBounds(outbox)
	for _, r := range rej {
		if r.Index < 0 || r.Index >= len(batch) {
			continue
		}
		rec := &batch[r.Index].Record
		if seq := batch[r.Index].Seq; seq <= mark {
			// Dead-lettered before a crash took its acknowledgement.
			continue
		} else if seq < head {
			// Dropped by the outbox quota during the attempt (counted
			// as dropped): a blob send whose object was given back is
			// refused by the target, not by the upstream.
			continue
		}
		stored, err := w.storeDeadLetter(ctx, rec, r.Reason, outbox, batch[r.Index].Seq)
		if err != nil {
			return r.Index, err
		}
		if !stored {
			// Not even a minimal dead letter fits: logged by
			// storeDeadLetter; holding the outbox would block it forever.
			continue
		}
		w.mu.Lock()
		if bs := batch[r.Index].Blob; bs != nil {
			w.blobsDead++
			w.mu.Unlock()
			w.log.Warn("sync blob send refused, dead-lettered", "id", rec.ID, "bucket", bs.Bucket, "name", bs.Name, "sha256", bs.SHA256, "reason", r.Reason)
			continue
		}
		w.deadLettered++
		w.mu.Unlock()
		w.log.Warn("sync record refused by upstream, dead-lettered", "id", rec.ID, "stream", rec.Stream, "reason", r.Reason)
	}
	return len(batch), nil
}

// deadMark is the sequence of the last entry of outbox whose record was
// dead-lettered (DeadMarkFunction), 0 when none.
func (w *worker) deadMark(ctx context.Context, outbox string) (uint64, error) {
	v, ok, err := w.m.opts.Store.GetState(ctx, DeadMarkFunction, outbox)
	if err != nil || !ok {
		return 0, err
	}
	n, perr := strconv.ParseUint(string(v), 10, 64)
	if perr != nil {
		return 0, nil // not ours to trust: dead-letter again rather than skip
	}
	return n, nil
}

// permanentStoreError reports whether a store error can never clear for
// the same write: retrying it would block the outbox forever.
func permanentStoreError(err error) bool { return store.IsPermanent(err) }

// storeDeadLetter commits the dead letter of a refused record: its whole
// record line, or, when the store can never take that (larger than its
// MaxValueBytes: a record's data may be up to that size, and JSON escaping
// expands text up to 6 times), the line with the data cut to a head of
// deadLetterHead bytes, then to none, and an Error that says what was cut
// (the whole record stays in the store's records until retention). It
// returns an error only when the commit failed with an error that can
// clear (disk space, quota, context): the record must then stay in the
// outbox. stored is false when not even the data-less line could be
// stored; that is logged.
func (w *worker) storeDeadLetter(ctx context.Context, rec *store.Record, reason, outbox string, seq uint64) (stored bool, err error) {
	line := AppendRecord(nil, w.m.opts.GatewayID, rec)
	dl := &store.DeadLetter{Function: DeadLetterPrefix + w.cfg.Name, Key: rec.ID, Event: line,
		Error: reason, Attempts: 1, TS: time.Now().UnixMilli()}
	mark := []store.StateChange{{Function: DeadMarkFunction, Op: store.StateSet, Key: outbox, Value: strconv.AppendUint(nil, seq, 10)}}
	_, err = w.m.opts.Store.Commit(ctx, &store.Commit{DeadLetter: dl, State: mark})
	if err == nil {
		return true, nil
	}
	if !permanentStoreError(err) {
		return false, err
	}
	whole := err
	for _, head := range []int{deadLetterHead, 0} {
		kept := headLen(rec.Data, head)
		dl.Event = appendRecordHead(nil, w.m.opts.GatewayID, rec, head)
		dl.Error = fmt.Sprintf("%s; the record line of %d bytes does not fit in a dead letter (%v): its data was cut to the first %d of %d bytes (data_truncated); the whole record stays in the store's records until retention",
			reason, len(line), whole, kept, len(rec.Data))
		_, err = w.m.opts.Store.Commit(ctx, &store.Commit{DeadLetter: dl, State: mark})
		if err == nil {
			w.log.Warn("sync refused record too large for a dead letter: data cut", "id", rec.ID, "line_bytes", len(line), "data_bytes", len(rec.Data), "kept", kept, "err", whole)
			return true, nil
		}
		if !permanentStoreError(err) {
			return false, err
		}
	}
	w.log.Error("sync refused record could not be dead-lettered: acknowledged; it stays in the store's records until retention",
		"id", rec.ID, "stream", rec.Stream, "reason", reason, "err", err)
	return false, nil
}

// ack hands a delivered prefix to the acker goroutine, which deletes it
// from the store asynchronously (a crash before that only re-sends it).
func (w *worker) ack(name string, upTo uint64) {
	w.ackMu.Lock()
	w.ackUpTo[name] = upTo
	w.ackMu.Unlock()
	select {
	case w.ackKick <- struct{}{}:
	default:
	}
}

func (w *worker) acker(stop <-chan struct{}, done chan<- struct{}) {
	defer close(done)
	flush := func(ctx context.Context) {
		w.ackMu.Lock()
		todo := w.ackUpTo
		w.ackUpTo = map[string]uint64{}
		w.ackMu.Unlock()
		for name, upTo := range todo {
			if err := w.m.opts.Store.OutboxAck(ctx, name, upTo); err != nil {
				w.log.Error("sync: acknowledge delivered records in the store", "outbox", name, "up_to", upTo, "err", err)
			}
		}
	}
	for {
		select {
		case <-w.ackKick:
			flush(context.Background())
		case <-stop:
			// run returned: the last acknowledgements, with a deadline.
			fctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			flush(fctx)
			cancel()
			return
		}
	}
}
