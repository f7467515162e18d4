package gateway

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"runtime"
	"strconv"
	"sync"
	"sync/atomic"
	"time"
	"unicode/utf8"

	"github.com/moongate-edge/moongate/gateway/trigger"
	"github.com/moongate-edge/moongate/luavm"
	"github.com/moongate-edge/moongate/mqtt"
	"github.com/moongate-edge/moongate/store"
)

// Store is what the gateway needs of the durable store (*store.Store).
type Store interface {
	Enqueue(ctx context.Context, entries []store.InboxEntry) ([]uint64, error)
	InboxPending(ctx context.Context, after uint64, limit int) ([]store.InboxEntry, error)
	InboxNext() uint64
	Commit(ctx context.Context, c *store.Commit) (store.CommitResult, error)
	PendingPublishes(ctx context.Context, after uint64, limit int) ([]store.Publish, error)
	AckPublishes(ctx context.Context, seqs ...uint64) error
	GetState(ctx context.Context, function, key string) ([]byte, bool, error)
	ListState(ctx context.Context, function, prefix string, limit int, cursor string) ([]store.KV, string, error)
	Redelivered(ctx context.Context, sender string, packetID uint16, fingerprint []byte) bool
	// SetChained has the committer hand over each commit's chained
	// entries, in sequence order (store.Store.SetChained). Run sets it:
	// one gateway runs on a store at a time.
	SetChained(fn func([]store.InboxEntry))
}

// Runtime is what the gateway needs of the Lua runtime (*luavm.Runtime).
type Runtime interface {
	Deploy(ctx context.Context, spec luavm.Spec) error
	Remove(name string) bool
	Invoke(ctx context.Context, name string, ev *luavm.Event, state luavm.StateReader) (*luavm.Result, error)
	// InvokeGated is Invoke asking gate for a turn once an instance is
	// held (direct invocations: see Gateway.Invoke).
	InvokeGated(ctx context.Context, name string, ev *luavm.Event, state luavm.StateReader, gate luavm.Gate) (*luavm.Result, error)
	// TryInvoke is Invoke failing with luavm.ErrBusy at once, without
	// running, when no instance of the function is free.
	TryInvoke(ctx context.Context, name string, ev *luavm.Event, state luavm.StateReader) (*luavm.Result, error)
}

// Ingest is what the gateway needs of an MQTT side (*mqtt.Embedded or *mqtt.External).
type Ingest interface {
	Start(ctx context.Context, h mqtt.Handler) error
	SetFilters(ctx context.Context, filters []string) error
	Publish(ctx context.Context, topic string, payload []byte, qos byte, retain bool) error
	Ready() bool
	Close(ctx context.Context) error
}

// RetryPolicy says how often and how patiently a failing event is retried
// before it goes to the dead letters.
type RetryPolicy struct {
	MaxAttempts    int           // invocations in all (default 5)
	InitialBackoff time.Duration // first wait (default 200ms), doubled each time
	MaxBackoff     time.Duration // cap (default 30s)
}

// CommitsPerWorker is how many events per worker (Options.Workers) the
// dispatcher processes at once: an event holds a worker only while its
// function runs, and waits for its durable commit without one. With
// durability "always" a commit waits for an fsync, so events that only
// waited on commits would otherwise leave the group commit with batches of
// a few entries and the CPUs idle.
const CommitsPerWorker = 16

// Options configure a Gateway. Store, Runtime and Ingest are required.
type Options struct {
	Store   Store
	Runtime Runtime
	Ingest  Ingest
	Logger  *slog.Logger

	// Workers bounds the invocations running at once (default 2 x CPUs).
	// Up to CommitsPerWorker times as many events may be waiting for
	// their commit to be durable meanwhile, so that the group commit gets
	// batches bigger than the number of CPUs.
	Workers         int
	InboxLimit      int   // in-memory backlog, entries, at which intake blocks (default 10,000)
	MaxBacklogBytes int64 // in-memory backlog, bytes (default 16 MiB)
	// FunctionBacklog is the part of the in-memory backlog, in entries,
	// that the events of one function may hold (and the same part of
	// MaxBacklogBytes); default InboxLimit/4, at most InboxLimit. Once a
	// slow or failing function has filled it, only the intake of events
	// for that function waits.
	FunctionBacklog int
	MaxPayload      int // bytes (default 256 KiB); larger events are dead-lettered
	Retry           RetryPolicy
	ShutdownTimeout time.Duration // for in-flight work at stop: closing intake, then running invocations (default 10s each)
	// MaxHops bounds function chains: an event chained through more
	// stream or state triggers than this is dead-lettered with ErrHopLimit
	// (default 8, at most 1000).
	MaxHops int
	// MaxChainEvents bounds the chained events that one event (a device's
	// message, a timer tick, a call or write over the API) may cause, at
	// every hop together: an event with budget b whose outputs chain n
	// events (n <= b, or it is dead-lettered with ErrChainBudget) gives each
	// of them (b-n)/n to cause in turn (default 1,000, at most 1,000,000).
	MaxChainEvents int
	// MaxEventBytes is the largest event the store takes in one value
	// (store.Options.MaxValueBytes; 0: unknown). A state-triggered event
	// whose old and new values would not fit leaves them out (old first)
	// instead of making the commit that changed the state fail.
	MaxEventBytes int

	// Now is the clock (default time.Now); tests may replace it.
	Now func() time.Time

	// RouteTargets, when set, maps the sync targets of a record of stream
	// to the outboxes it is written to (the sync manager's Route: priority
	// streams go to a target's priority outbox). Nil: the targets as is.
	RouteTargets func(stream string, targets []string) []string
}

func (o *Options) withDefaults() error {
	if o.Store == nil || o.Runtime == nil || o.Ingest == nil {
		return errors.New("gateway: Options.Store, Runtime and Ingest are required")
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	if o.Workers <= 0 {
		o.Workers = 2 * runtime.NumCPU()
	}
	if o.InboxLimit <= 0 {
		o.InboxLimit = 10000
	}
	if o.MaxBacklogBytes <= 0 {
		o.MaxBacklogBytes = 16 << 20
	}
	if o.FunctionBacklog <= 0 {
		o.FunctionBacklog = max(1, o.InboxLimit/4)
	}
	o.FunctionBacklog = min(o.FunctionBacklog, o.InboxLimit)
	if o.MaxPayload <= 0 {
		o.MaxPayload = 256 << 10
	}
	if o.Retry.MaxAttempts <= 0 {
		o.Retry.MaxAttempts = 5
	}
	if o.Retry.InitialBackoff <= 0 {
		o.Retry.InitialBackoff = 200 * time.Millisecond
	}
	if o.Retry.MaxBackoff <= 0 {
		o.Retry.MaxBackoff = 30 * time.Second
	}
	if o.ShutdownTimeout <= 0 {
		o.ShutdownTimeout = 10 * time.Second
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.MaxHops <= 0 {
		o.MaxHops = DefaultMaxHops
	}
	if o.MaxHops > maxHops {
		return fmt.Errorf("gateway: Options.MaxHops %d is more than %d", o.MaxHops, maxHops)
	}
	if o.MaxChainEvents <= 0 {
		o.MaxChainEvents = DefaultMaxChainEvents
	}
	if o.MaxChainEvents > maxChainEvents {
		return fmt.Errorf("gateway: Options.MaxChainEvents %d is more than %d", o.MaxChainEvents, maxChainEvents)
	}
	return nil
}

// DefaultMaxChainEvents is the default of Options.MaxChainEvents.
const DefaultMaxChainEvents = 1000

// maxChainEvents is the largest Options.MaxChainEvents (and chain budget an
// event may carry).
const maxChainEvents = 1_000_000

// DefaultMaxHops is the default of Options.MaxHops.
const DefaultMaxHops = 8

// maxHops is the largest Options.MaxHops (and hop count an event may carry).
const maxHops = 1000

// Stats are the gateway's counters since start.
type Stats struct {
	Received     uint64 // messages handed over by the ingest
	Unmatched    uint64 // messages no function wanted
	Rejected     uint64 // messages dead-lettered at intake (oversize, invalid topic)
	Enqueued     uint64 // inbox entries written
	Processed    uint64 // invocations committed
	Failed       uint64 // invocations that failed (each attempt)
	DeadLettered uint64 // entries that went to the dead letters
	Duplicates   uint64 // entries found already consumed (skipped: exactly once)
	Redelivered  uint64 // MQTT redeliveries of messages already accepted (acknowledged, not run again)
	Published    uint64 // local publishes carried out
	// PublishRetries counts failed tries of a local publish that is kept
	// and tried again (the broker away or not answering).
	PublishRetries uint64
	Backlog        int // entries queued or running
}

// Gateway runs functions on events: it takes messages from the ingest,
// makes them durable in the inbox (then they are acknowledged), runs the
// matching functions in order per device and commits their outputs
// atomically. It is safe for concurrent use; its zero value is not usable:
// create it with New.
type Gateway struct {
	opts Options
	log  *slog.Logger
	disp *dispatcher
	// state is what invocations read through (the store's state and blobs).
	state *invokeState
	// invoking holds a token per running invocation (Options.Workers).
	invoking chan struct{}
	// direct holds a token per running invocation called directly (the
	// API, HTTP triggers: Invoke), Options.Workers of them apart from the
	// events' so that a flood of requests neither runs more functions at
	// once than the gateway is sized for (each may take its max_memory)
	// nor takes the events' turns.
	direct chan struct{}
	// slots holds, per function, a token per invocation of its events
	// (its max_concurrency): see fnSlots.
	slotsMu sync.Mutex
	slots   map[string]chan struct{}
	funcs   atomic.Pointer[funcTable]
	// deploying holds, while SetFunctions runs, the functions it is
	// deploying by name: the runtime runs a new version before the table
	// routes to it (ranAs).
	deploying atomic.Pointer[map[string]*Function]
	match     *trigger.Matcher

	idPrefix string
	idSeq    atomic.Uint64

	pubNotify chan struct{}
	chainQ    chainQueue
	inflight  inflightSet // QoS 1 messages on their way into the inbox
	ready     atomic.Bool
	// resumed is set once Run queued the inbox backlog: entries queued
	// from then on (replays) go to the dispatcher, broker up or not.
	resumed atomic.Bool
	// resumeBound is the inbox sequence from which Run's resume does not
	// queue entries, once boundRead, under boundMu: whoever commits
	// entries outside the pipeline (WriteState) queues those from it on.
	boundMu     sync.Mutex
	boundRead   bool
	resumeBound uint64
	stopping    atomic.Bool

	deployMu sync.Mutex // serialises SetFunctions
	// filtersOn, under deployMu: the ingest's subscriptions follow the
	// function table (Run subscribed, shutdown not begun); until then a
	// deploy only counts in deploys.
	filtersOn bool
	deploys   uint64

	commits commitSignal // closed after each commit (Committed)

	timersMu sync.Mutex
	timers   map[string]*timerRun // function -> its timer loops
	// timerAfter is how timer loops wait (realAfter; tests give a fake
	// clock's). Set before Run.
	timerAfter afterFunc
	runCtx     context.Context // set by Run, under timersMu
	// timersOn is set (under timersMu) once Run has resumed the inbox
	// backlog: timer loops start from then on, so that no tick is
	// committed below the resume bound (it would be queued twice).
	timersOn bool

	stats struct {
		received, unmatched, rejected, enqueued, processed, failed, dead, dups, published, pubRetries, redelivered atomic.Uint64
	}
}

// New returns a gateway ready to Run.
func New(opts Options) (*Gateway, error) {
	if err := opts.withDefaults(); err != nil {
		return nil, err
	}
	var nonce [6]byte
	if _, err := rand.Read(nonce[:]); err != nil {
		return nil, fmt.Errorf("gateway: event id nonce: %w", err)
	}
	g := &Gateway{
		opts:      opts,
		log:       opts.Logger,
		match:     trigger.NewMatcher(),
		idPrefix:  hex.EncodeToString(nonce[:]) + "-",
		pubNotify: make(chan struct{}, 1),
		timers:    make(map[string]*timerRun),
	}
	g.state = &invokeState{Store: opts.Store}
	g.chainQ.waiting = make(map[string][]uint64)
	g.chainQ.feeding = make(map[string]bool)
	g.funcs.Store(&funcTable{byName: map[string]*Function{}, chain: buildChainIndex(nil)})
	g.invoking = make(chan struct{}, opts.Workers)
	g.direct = make(chan struct{}, opts.Workers)
	g.disp = newDispatcher(opts.Workers, int64(opts.InboxLimit), opts.MaxBacklogBytes, int64(opts.FunctionBacklog), g.process)
	g.disp.turn = g.functionTurns
	return g, nil
}

// Ready reports whether the gateway has loaded its backlog and takes events.
func (g *Gateway) Ready() bool { return g.ready.Load() && g.opts.Ingest.Ready() }

// Stats returns a snapshot of the gateway's counters.
func (g *Gateway) Stats() Stats {
	return Stats{
		Received: g.stats.received.Load(), Unmatched: g.stats.unmatched.Load(), Rejected: g.stats.rejected.Load(),
		Enqueued: g.stats.enqueued.Load(), Processed: g.stats.processed.Load(), Failed: g.stats.failed.Load(),
		DeadLettered: g.stats.dead.Load(), Duplicates: g.stats.dups.Load(), Published: g.stats.published.Load(),
		PublishRetries: g.stats.pubRetries.Load(),
		Redelivered:    g.stats.redelivered.Load(),
		Backlog:        g.disp.backlog(),
	}
}

// newEventID returns an id unique to this gateway: a random per-process
// prefix and a counter (no wall clock: a Pi may boot into the past).
func (g *Gateway) newEventID() string {
	return g.idPrefix + strconv.FormatUint(g.idSeq.Add(1), 36)
}

// FunctionBacklogs returns, per function, the events of the in-memory
// backlog that it holds (queued or running; at most
// Options.FunctionBacklog). Functions holding none are left out. Safe for
// concurrent use.
func (g *Gateway) FunctionBacklogs() map[string]int64 { return g.disp.functionBacklogs() }

// Run resumes the inbox backlog, starts intake and runs until ctx is done;
// then it stops intake, lets in-flight invocations finish (their events stay
// in the inbox otherwise), flushes local publishes and returns. It does not
// close the store.
//
// Timers and replays start once the backlog is queued; MQTT intake once
// the ingest is started, which for an external broker waits until it is
// reachable (Ready stays false until then).
func (g *Gateway) Run(ctx context.Context) error {
	// Chained entries reach the dispatcher from the store's committer, in
	// the order they were written: handed over by each commit's caller
	// after its Commit returned, two commits of one group commit feeding
	// one lane (a state key, a stream without device) raced, and the
	// later change could run first. One gateway runs on a store: the one
	// running takes them (set here, not in New: a gateway made but not run
	// took a running one's entries). Entries committed before this (the
	// resume bound is not read yet) are queued by the resume.
	g.opts.Store.SetChained(func(entries []store.InboxEntry) { g.pushChained(g.ownEntries(entries)) })
	workCtx, stopWork := context.WithCancel(context.WithoutCancel(ctx))
	defer stopWork()
	g.timersMu.Lock()
	g.runCtx = workCtx
	g.timersMu.Unlock()
	g.disp.start(workCtx, g.opts.Workers*CommitsPerWorker)

	pubDone := make(chan struct{})
	pubCtx, stopPub := context.WithCancel(context.WithoutCancel(ctx))
	defer stopPub()

	// The backlog goes first, all of it, so that new events of a device
	// cannot overtake older ones.
	n, err := g.resume(ctx)
	if err != nil {
		close(pubDone)
		return g.shutdown(stopWork, stopPub, pubDone, startErr(ctx, "resume inbox", err))
	}
	// Chained entries committed while resuming waited for the backlog
	// before them; from now on they go to the workers directly.
	g.startChain(workCtx)
	g.resumed.Store(true)
	// Timers need no broker: they run while an external one is still down
	// (Start below waits for it; they ran only once it was up). Their
	// local publishes wait in the publish outbox.
	g.startTimers()
	if err := g.opts.Ingest.Start(ctx, g.handle); err != nil {
		close(pubDone)
		return g.shutdown(stopWork, stopPub, pubDone, startErr(ctx, "start ingest", err))
	}
	// Local publishes need the ingest started.
	go func() { defer close(pubDone); g.publisher(pubCtx) }()
	if err := g.subscribe(ctx); err != nil {
		return g.shutdown(stopWork, stopPub, pubDone, startErr(ctx, "subscribe", err))
	}
	g.ready.Store(true)
	g.log.Info("gateway ready", "resumed", n, "functions", len(g.Functions()), "workers", g.opts.Workers)

	<-ctx.Done()
	return g.shutdown(stopWork, stopPub, pubDone, nil)
}

// subscribe makes the ingest's subscriptions those of the function table,
// and from then on leaves them to SetFunctions. A deploy during the
// subscription (a broker round trip, which deploys do not wait for)
// changes the table after its filters were read: the subscription is made
// again with the new ones. (Subscribed once, the new function's topic
// stayed unsubscribed, its events acknowledged by the broker and dropped.)
func (g *Gateway) subscribe(ctx context.Context) error {
	for {
		g.deployMu.Lock()
		filters, seen := g.match.Filters(), g.deploys
		g.deployMu.Unlock()
		if err := g.opts.Ingest.SetFilters(ctx, filters); err != nil {
			return err
		}
		g.deployMu.Lock()
		done := g.deploys == seen
		g.filtersOn = done
		g.deployMu.Unlock()
		if done {
			return nil
		}
	}
}

// startErr is the error Run returns when a start-up step failed: none when
// the step failed because ctx ended (a stop asked for while starting, e.g.
// SIGTERM during a long inbox resume, is a clean stop, not a failure).
func startErr(ctx context.Context, step string, err error) error {
	if ctx.Err() != nil && (errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded)) {
		return nil
	}
	return fmt.Errorf("gateway: %s: %w", step, err)
}

func (g *Gateway) shutdown(stopWork, stopPub context.CancelFunc, pubDone chan struct{}, cause error) error {
	g.ready.Store(false)
	g.deployMu.Lock()
	g.filtersOn = false
	g.deployMu.Unlock()
	g.stopping.Store(true)
	g.stopTimers()
	closeCtx, cancel := context.WithTimeout(context.Background(), g.opts.ShutdownTimeout)
	defer cancel()
	// Stop intake first: in-flight handlers finish (their events are durable or not acked).
	if err := g.opts.Ingest.Close(closeCtx); err != nil {
		g.log.Warn("ingest close", "err", err)
	}
	// Workers finish the invocation they are in; queued events stay in the
	// inbox. An invocation still running after ShutdownTimeout is left: its
	// event was not consumed (unless its commit makes it), so it runs again
	// at the next start, exactly once either way.
	stopWork()
	drained := make(chan struct{})
	go func() { g.disp.wait(); close(drained) }()
	select {
	case <-drained:
	case <-time.After(g.opts.ShutdownTimeout):
		g.log.Warn("invocations still running at stop: not waited for; their events stay in the inbox and run again at the next start",
			"shutdown_timeout", g.opts.ShutdownTimeout)
	}
	// Committed publishes not yet sent stay in the publish outbox and go
	// out after the restart.
	stopPub()
	<-pubDone
	g.log.Info("gateway stopped", "backlog", g.disp.backlog())
	return cause
}

// resume queues every unconsumed inbox entry, in sequence order. The
// workers run meanwhile, and the chained entries they commit get sequences
// from InboxNext on: those wait in the chain queue (see pushChained), so
// that each entry is queued once and after the older ones of its lane.
func (g *Gateway) resume(ctx context.Context) (int, error) {
	var after uint64
	// Read under boundMu: a WriteState that committed before it is below
	// the bound (resumed), one that checks after it knows the bound.
	g.boundMu.Lock()
	bound := g.opts.Store.InboxNext()
	g.resumeBound, g.boundRead = bound, true
	g.boundMu.Unlock()
	total := 0
	attempts, err := g.loadAttempts(ctx)
	if err != nil {
		return 0, err
	}
	for {
		entries, err := g.opts.Store.InboxPending(ctx, after, 256)
		if err != nil {
			return total, err
		}
		if len(entries) == 0 {
			g.forgetStaleAttempts(ctx, attempts)
			return total, nil
		}
		for i := range entries {
			e := entries[i]
			if e.Seq >= bound {
				g.forgetStaleAttempts(ctx, attempts)
				return total, nil
			}
			j := &job{entry: e, size: int64(len(e.Event))}
			if a, ok := attempts[e.Seq]; ok {
				// Failed before the restart: the count goes on, and the
				// backoff it was waiting out is kept. (The consuming commit
				// deletes the record, also one that did not decode.)
				j.recorded = true
				if a.N > 0 {
					// At most max_backoff from now: due is a wall time from
					// before the restart, and a Pi without a clock may come
					// back in 1970 (the lane would wait 56 years).
					wait := min(time.UnixMilli(a.Due).Sub(g.opts.Now()), g.opts.Retry.MaxBackoff)
					j.attempts, j.notBefore = a.N, time.Now().Add(wait)
				}
				delete(attempts, e.Seq)
			}
			if err := g.disp.admit(ctx, j); err != nil {
				return total, err
			}
			g.disp.push(laneKey(e.Function, e.Key), j)
			after = e.Seq
			total++
		}
	}
}

// loadAttempts reads the recorded attempts of the inbox entries that
// failed before the restart (AttemptsStateFunction), by sequence number.
// A record that does not decode is left out (its entry starts counting
// again).
func (g *Gateway) loadAttempts(ctx context.Context) (map[uint64]attemptRecord, error) {
	out := map[uint64]attemptRecord{}
	cursor := ""
	for {
		kvs, next, err := g.opts.Store.ListState(ctx, AttemptsStateFunction, "", store.MaxQueryLimit, cursor)
		if err != nil {
			return nil, fmt.Errorf("read recorded attempts: %w", err)
		}
		for _, kv := range kvs {
			seq, perr := strconv.ParseUint(kv.Key, 10, 64)
			var a attemptRecord
			if perr == nil && json.Unmarshal(kv.Value, &a) == nil {
				out[seq] = a
			} else {
				out[seq] = attemptRecord{N: -1} // deleted as stale
			}
		}
		if next == "" {
			return out, nil
		}
		cursor = next
	}
}

// forgetStaleAttempts deletes the attempt records left in attempts (their
// entries are no longer in the inbox: consumed by a commit that raced the
// record, or records that do not decode). Failures are logged: a stale
// record is a few bytes, and the next start tries again.
func (g *Gateway) forgetStaleAttempts(ctx context.Context, attempts map[uint64]attemptRecord) {
	var del []store.StateChange
	flush := func() {
		if len(del) == 0 {
			return
		}
		if _, err := g.opts.Store.Commit(ctx, &store.Commit{State: del}); err != nil && ctx.Err() == nil {
			g.log.Warn("stale attempt records not deleted", "err", err)
		}
		del = del[:0]
	}
	for seq := range attempts {
		del = append(del, store.StateChange{Function: AttemptsStateFunction, Op: store.StateDelete, Key: attemptsKey(seq)})
		if len(del) == 256 {
			flush()
		}
	}
	flush()
}

func laneKey(function, key string) string { return function + "\x00" + key }

// handle is the ingest handler: it returns nil once the message's work is
// durable in the inbox (the ingest acknowledges it then).
func (g *Gateway) handle(ctx context.Context, m *mqtt.Message) error {
	if g.stopping.Load() {
		return ErrStopped
	}
	g.stats.received.Add(1)
	// A message that can never be processed is refused (dead-lettered and
	// acknowledged) whether or not a function matches it.
	var refuse error
	switch {
	case !utf8.ValidString(m.Topic) || m.Topic == "":
		refuse = fmt.Errorf("%w: %q", ErrInvalidTopic, m.Topic)
	case len(m.Payload) > g.opts.MaxPayload:
		size := max(len(m.Payload), m.Clipped) // external mode cuts it as it reads
		refuse = fmt.Errorf("%w: %d bytes, limit %d", ErrPayloadTooLarge, size, g.opts.MaxPayload)
	}
	var entries []store.InboxEntry
	if refuse == nil {
		entries = g.entries(m)
		if len(entries) == 0 {
			g.stats.unmatched.Add(1)
			return nil
		}
	}
	var fp []byte
	if m.QoS > 0 {
		fp = fingerprint(m)
		key := fpKey(fp)
		// The original may still be on its way into the inbox: a sender
		// whose connection dropped while intake was blocked (backpressure)
		// resends on its new connection. One copy at a time: the claim
		// waits for the one in flight.
		if err := g.inflight.claim(ctx, key); err != nil {
			return err
		}
		defer g.inflight.done(key)
		if m.Duplicate && g.opts.Store.Redelivered(ctx, m.ClientID, m.PacketID, fp) {
			// A redelivery of a message already made durable, or already
			// refused (its PUBACK was lost with the connection or when
			// moongate stopped): acknowledge it, do not run or refuse it
			// again.
			g.stats.redelivered.Add(1)
			return nil
		}
	}
	if refuse != nil {
		return g.rejectAtIntake(ctx, m, fp, refuse)
	}
	if fp != nil {
		entries[0].Fingerprint, entries[0].Sender, entries[0].PacketID = fp, m.ClientID, m.PacketID
	}
	err := g.enqueue(ctx, entries)
	if err != nil && refusedForGood(err) {
		// An event the store can never take (over its value limit with the
		// topic): a redelivery would fail the same way.
		return g.rejectAtIntake(ctx, m, fp, err)
	}
	return err
}

// entries returns m's inbox entries, one per function its topic matches.
func (g *Gateway) entries(m *mqtt.Message) []store.InboxEntry {
	ft := g.funcs.Load()
	var entries []store.InboxEntry
	var id string
	ts := m.Received.UnixMilli()
	if m.Received.IsZero() {
		ts = g.opts.Now().UnixMilli()
	}
	g.match.Match(m.Topic, func(function string, captures map[string]string) {
		f := ft.byName[function]
		if f == nil {
			return
		}
		if id == "" {
			id = g.newEventID()
		}
		ev := luavm.Event{ID: id, Topic: m.Topic, Payload: m.Payload, Captures: captures, TS: ts, QoS: m.QoS, Trigger: "mqtt"}
		entries = append(entries, store.InboxEntry{Function: function, Key: f.orderKey(m.Topic, captures), Event: encodeEvent(&ev)})
	})
	return entries
}

// inflightSet tracks the QoS 1 messages being made durable, by
// fingerprint, so that copies of one message (a redelivery and its
// original, or two redeliveries) go through intake one at a time. The
// common path (no copy in flight) allocates nothing: a channel is made
// only when a copy has to wait.
type inflightSet struct {
	mu sync.Mutex
	m  map[fpKey]chan struct{} // nil value: held, nobody waiting
}

// fpKey is a message fingerprint as a map key.
type fpKey = [store.FingerprintSize]byte

// claim takes the key, waiting while another copy holds it. Checking and
// taking are one step: of several waiters woken together, one takes it and
// the others wait again (each then sees the first one's work durable).
func (s *inflightSet) claim(ctx context.Context, key fpKey) error {
	for {
		s.mu.Lock()
		if s.m == nil {
			s.m = make(map[fpKey]chan struct{})
		}
		ch, held := s.m[key]
		if !held {
			s.m[key] = nil
			s.mu.Unlock()
			return nil
		}
		if ch == nil {
			ch = make(chan struct{})
			s.m[key] = ch
		}
		s.mu.Unlock()
		select {
		case <-ch:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// done releases a claimed key and wakes its waiters.
func (s *inflightSet) done(key fpKey) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if ch, ok := s.m[key]; ok {
		if ch != nil {
			close(ch)
		}
		delete(s.m, key)
	}
}

// fingerprint identifies a QoS 1 message for redelivery detection: the
// sender, the packet id (kept by a redelivery, different for messages in
// flight together), topic and payload.
func fingerprint(m *mqtt.Message) []byte {
	h := sha256.New()
	var pid [2]byte
	binary.BigEndian.PutUint16(pid[:], m.PacketID)
	h.Write([]byte(m.ClientID))
	h.Write([]byte{0})
	h.Write(pid[:])
	h.Write([]byte(m.Topic))
	h.Write([]byte{0})
	h.Write(m.Payload)
	return h.Sum(nil)[:store.FingerprintSize]
}

// enqueue makes entries durable and queues them for the workers.
func (g *Gateway) enqueue(ctx context.Context, entries []store.InboxEntry) error {
	jobs := make([]*job, len(entries))
	for i := range entries {
		jobs[i] = &job{entry: entries[i], size: int64(len(entries[i].Event))}
	}
	if err := g.disp.admit(ctx, jobs...); err != nil {
		return err
	}
	// Once submitted, the write is not abandoned: a store call given up on
	// may still be applied, and an event made durable but refused here would
	// come back from the device and run twice.
	seqs, err := g.opts.Store.Enqueue(context.WithoutCancel(ctx), entries)
	if err != nil {
		g.disp.release(jobs...)
		return fmt.Errorf("gateway: enqueue: %w", err)
	}
	g.stats.enqueued.Add(uint64(len(entries)))
	for i, j := range jobs {
		j.entry.Seq = seqs[i]
	}
	for _, j := range jobs {
		g.disp.push(laneKey(j.entry.Function, j.entry.Key), j)
	}
	return nil
}

// IntakeDeadLetters is the function name under which messages refused at
// intake (before any function ran) are kept as dead letters. It is not a
// valid function name, so it cannot clash with one.
const IntakeDeadLetters = "_intake"

// rejectAtIntake records a message that cannot be processed as a dead letter
// (so the operator sees it and nothing is lost silently) and acknowledges it:
// redelivering it would fail the same way forever. fp, the fingerprint of a
// QoS 1 or 2 message (nil for QoS 0), goes with the dead letter so that a
// redelivery of the message is recognised rather than refused again.
func (g *Gateway) rejectAtIntake(ctx context.Context, m *mqtt.Message, fp []byte, reason error) error {
	g.stats.rejected.Add(1)
	payload := m.Payload
	if len(payload) > g.opts.MaxPayload {
		payload = payload[:g.opts.MaxPayload] // keep the head for diagnosis, bounded
	}
	ev := luavm.Event{ID: g.newEventID(), Topic: m.Topic, Payload: payload, TS: g.opts.Now().UnixMilli(), QoS: m.QoS, Trigger: "mqtt"}
	_, err := g.opts.Store.Commit(context.WithoutCancel(ctx), &store.Commit{DeadLetter: &store.DeadLetter{
		Function: IntakeDeadLetters, Key: m.Topic, Event: encodeEvent(&ev), Error: reason.Error(), TS: ev.TS,
		Fingerprint: fp, Sender: m.ClientID, PacketID: m.PacketID,
	}})
	if err != nil {
		return fmt.Errorf("gateway: dead-letter rejected message: %w", err)
	}
	g.stats.dead.Add(1)
	g.log.Debug("message rejected", "topic", m.Topic, "err", reason)
	return nil
}

func (g *Gateway) kickPublisher() {
	select {
	case g.pubNotify <- struct{}{}:
	default:
	}
}
