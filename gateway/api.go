package gateway

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/moongate-edge/moongate/luavm"
	"github.com/moongate-edge/moongate/store"
)

// This file holds what the management API (gateway/apiserver) needs of the
// gateway beyond the event pipeline: synchronous invocation, dead-letter
// replay and a signal after each commit.

// Lookup returns the deployed function name, or nil (also when it failed
// to load: Function.LoadErr).
func (g *Gateway) Lookup(name string) *Function {
	if f := g.funcs.Load().byName[name]; f != nil && f.LoadErr == nil {
		return f
	}
	return nil
}

// InvokeResult is the outcome of Gateway.Invoke.
type InvokeResult struct {
	Result    *luavm.Result // never nil when Invoke returns a nil error
	Err       error         // the invocation's own failure (Lua error, breached limit), or nil
	Committed bool          // the outputs were committed
	EventID   string
}

// Invoke runs the deployed function name once on ev, synchronously, outside
// the ordered lanes of MQTT events. When commit is false nothing is written
// (a dry run). When commit is true the outputs are committed atomically and
// durably before Invoke returns, as for an MQTT event: records (the return
// value goes to the function's stream, except for HTTP-triggered events
// whose return value is the HTTP response), state changes, local
// publishes, logs and usage; a failed invocation commits its logs and usage
// only, and one refused busy (luavm.ErrBusy: it did not run) nothing. ev.ID
// is assigned when empty, ev.TS when 0.
//
// accept, when not nil, is asked about a successful invocation's result
// before anything is committed: when it refuses (the result cannot be
// used, e.g. an HTTP function's return value that is no response), the
// invocation counts as failed with that error (InvokeResult.Err) and only
// its logs and usage are committed, so a caller that answers "failed" has
// not applied the function's effects.
//
// At most Options.Workers direct invocations run at once, apart from the
// events' invocations: a call that holds an instance of its function
// waits for a turn as long as the function's queue_timeout (or ctx)
// allows, then fails with luavm.ErrBusy in InvokeResult.Err without
// running, as when no instance became free in time.
//
// The returned error is for failures of the call itself (ErrNoFunction,
// ErrStopped, a store error on commit); a failure of the function is
// InvokeResult.Err. Safe for concurrent use.
func (g *Gateway) Invoke(ctx context.Context, name string, ev *luavm.Event, commit bool, accept func(*luavm.Result) error) (*InvokeResult, error) {
	if g.stopping.Load() {
		return nil, ErrStopped
	}
	f := g.Lookup(name)
	if f == nil {
		return nil, fmt.Errorf("%w: %q", ErrNoFunction, name)
	}
	if ev.ID == "" {
		ev.ID = g.newEventID()
	}
	if ev.TS == 0 {
		ev.TS = g.opts.Now().UnixMilli()
	}
	// The turn is taken once the call holds an instance of its function:
	// a call waiting for a busy function holds none meanwhile.
	res, ierr := g.opts.Runtime.InvokeGated(ctx, name, ev, g.state, func(ctx context.Context) (func(), error) {
		if err := g.directTurn(ctx, f); err != nil {
			return nil, err
		}
		return func() { <-g.direct }, nil
	})
	if ierr == nil && accept != nil {
		ierr = accept(res)
	}
	out := &InvokeResult{Result: res, Err: ierr, EventID: ev.ID}
	if res == nil {
		out.Result = &luavm.Result{Function: name}
	}
	if !commit || errors.Is(ierr, luavm.ErrBusy) {
		// Refused busy, nothing ran: nothing to meter or keep (as for an
		// event refused busy).
		return out, nil
	}
	var c *store.Commit
	now := g.opts.Now().UnixMilli()
	if ierr != nil {
		g.stats.failed.Add(1)
		c = &store.Commit{Logs: g.logRecords(name, ev, res), Usage: usageOf(name, now, res, true)}
	} else {
		f = g.ranAs(f, res)
		r := *res
		if ev.Trigger == "http" {
			r.Kind = luavm.ResultNone // the response, not a record
		}
		c = g.buildCommit(f, ev, &store.InboxEntry{}, &r)
		release, err := g.stageBlobs(ctx, c, &r)
		defer release()
		if err != nil {
			if blobPermanent(err) {
				return g.outputsRefused(ctx, out, name, ev, res, err)
			}
			g.meterUncommitted(context.WithoutCancel(ctx), name, ev, res)
			return nil, fmt.Errorf("gateway: invocation of %s: %w", name, err)
		}
		// What an invocation commits triggers downstream functions like
		// any other output (it is the origin of its chain: hop 0).
		if err := g.chainCommit(g.funcs.Load(), c, 0, -1); err != nil {
			return g.outputsRefused(ctx, out, name, ev, res, err)
		}
	}
	// Once submitted, the commit is not abandoned (see enqueue).
	cr, err := g.opts.Store.Commit(context.WithoutCancel(ctx), c)
	if err != nil && ierr == nil && refusedForGood(err) {
		return g.outputsRefused(ctx, out, name, ev, res, chainRefusal(err))
	}
	if err != nil {
		g.meterUncommitted(context.WithoutCancel(ctx), name, ev, res)
		return nil, fmt.Errorf("gateway: commit invocation of %s: %w", name, err)
	}
	g.signalCommit()
	out.Committed = true
	if ierr == nil {
		g.stats.processed.Add(1)
	}
	if len(cr.Publishes) > 0 {
		g.kickPublisher()
	}
	// Its chained entries were queued by the store's committer (Run: SetChained).
	return out, nil
}

// outputsRefused ends a direct invocation whose outputs the store refuses
// for good (a bucket that does not exist, a state quota, a value over a
// limit, a chain budget): as for an event's invocation, the function ran
// and failed with ErrOutputsRefused (its caller answers "failed", 502 for
// an HTTP function, not "no such thing" or "slow down"), and its logs and
// usage are committed (out.Committed, as for a failed invocation).
func (g *Gateway) outputsRefused(ctx context.Context, out *InvokeResult, name string, ev *luavm.Event, res *luavm.Result, cause error) (*InvokeResult, error) {
	out.Err = fmt.Errorf("%w: %w", ErrOutputsRefused, cause)
	g.stats.failed.Add(1)
	// Shown like a failed invocation's: none of its outputs applied.
	r := *res
	r.Kind, r.Value, r.Effects, r.State = luavm.ResultNone, nil, nil, nil
	out.Result = &r
	c := &store.Commit{Logs: g.logRecords(name, ev, res), Usage: usageOf(name, g.opts.Now().UnixMilli(), res, true)}
	if _, err := g.opts.Store.Commit(context.WithoutCancel(ctx), c); err != nil {
		return nil, fmt.Errorf("gateway: commit invocation of %s: %w", name, err)
	}
	g.signalCommit()
	out.Committed = true
	return out, nil
}

// directTurn waits for one of the turns of direct invocations (see
// Gateway.direct) at most as long as f's queue timeout: ErrBusy past it,
// ctx's error if it ends first.
func (g *Gateway) directTurn(ctx context.Context, f *Function) error {
	select {
	case g.direct <- struct{}{}:
		return nil
	default:
	}
	wait := f.Spec.QueueTimeout
	if wait <= 0 {
		wait = luavm.DefaultQueueTimeout
	}
	t := time.NewTimer(wait)
	defer t.Stop()
	select {
	case g.direct <- struct{}{}:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("%w: waiting for a turn: %w", luavm.ErrBusy, ctx.Err())
	case <-t.C:
		return fmt.Errorf("%w: %d direct invocations running (pipeline.workers) and none ended within %s", luavm.ErrBusy, cap(g.direct), wait)
	}
}

// WriteState commits one change of a function's state (an operator's,
// through the API) durably, like a change the function makes itself: the
// functions with a state trigger on it run (their events are written in the
// same atomic commit). Safe for concurrent use.
func (g *Gateway) WriteState(ctx context.Context, ch store.StateChange) error {
	c := &store.Commit{State: []store.StateChange{ch}}
	if err := g.chainCommit(g.funcs.Load(), c, 0, -1); err != nil {
		return err
	}
	// Once submitted, the commit is not abandoned (see enqueue): one given
	// up on may still be applied, and its chained entries would then wait
	// in the inbox, unqueued, until the next start.
	if _, err := g.opts.Store.Commit(context.WithoutCancel(ctx), c); err != nil {
		return chainRefusal(err)
	}
	g.signalCommit()
	// Its chained entries were queued by the store's committer (Run: SetChained).
	return nil
}

// ownEntries returns the chained inbox entries the gateway queues itself
// (the store hands them over, Run: SetChained; a timer tick queues its
// own): those from Run's resume bound on (while resuming too: they wait in
// the chain queue for the resume to end). Entries below the bound are queued
// by the resume (queued by the committer as well, they would run twice,
// once as a duplicate); before the bound is read, every entry is below it.
// A stopping gateway leaves them all to the next start. The workers' own
// commits come after the bound was read: the filter keeps all of theirs
// (but while stopping).
func (g *Gateway) ownEntries(entries []store.InboxEntry) []store.InboxEntry {
	if len(entries) == 0 {
		return nil
	}
	g.boundMu.Lock()
	bound, read := g.resumeBound, g.boundRead
	g.boundMu.Unlock()
	if !read || g.stopping.Load() {
		return nil
	}
	mine := entries[:0:0]
	for _, e := range entries {
		if e.Seq >= bound {
			mine = append(mine, e)
		}
	}
	return mine
}

// Requeue puts the event of a dead letter of function back into the inbox,
// durably, to run through the function's current version; it returns when
// the entry is durable. When deadLetter is not 0, that dead letter is
// deleted in the same atomic write (store.ErrNotFound when it is already
// gone, and nothing is queued), so a crash cannot leave the event both
// queued and a dead letter. The function must be deployed (ErrNoFunction)
// and the event decodable (ErrBadEvent); the gateway must be running
// (ErrStopped before Run queued its backlog and after it stopped; an
// external broker still down does not matter). Safe for concurrent use.
func (g *Gateway) Requeue(ctx context.Context, function, key string, event []byte, deadLetter uint64) error {
	if g.stopping.Load() {
		return ErrStopped
	}
	if !g.resumed.Load() {
		return fmt.Errorf("%w: not started yet (queuing the inbox backlog)", ErrStopped)
	}
	if g.Lookup(function) == nil {
		return fmt.Errorf("%w: %q", ErrNoFunction, function)
	}
	ev, hops, budget, err := decodeEventChain(event)
	if err != nil {
		return fmt.Errorf("%w: %w", ErrBadEvent, err)
	}
	// A replay is the operator's decision to run the event again: it gets
	// the whole chain budget of an origin (a dead letter of ErrChainBudget
	// would otherwise fail the same way), and keeps its hop count (a
	// trigger cycle still ends at MaxHops), except past the hop limit: a
	// dead letter of ErrHopLimit would be dead-lettered again at once, so
	// it starts again as an origin (a cycle not fixed meanwhile is cut
	// again MaxHops later).
	switch {
	case hops > g.opts.MaxHops:
		event = encodeEvent(ev) // an origin: hop 0, the whole budget
	case budget >= 0 && budget != g.opts.MaxChainEvents:
		event = encodeChained(ev, hops, g.opts.MaxChainEvents)
	}
	return g.enqueue(ctx, []store.InboxEntry{{Function: function, Key: key, Event: event, DeadLetter: deadLetter}})
}

// DecodeEvent decodes an event as kept in the inbox and the dead letters
// (store.InboxEntry.Event, store.DeadLetter.Event). Errors wrap ErrBadEvent.
func DecodeEvent(b []byte) (*luavm.Event, error) {
	ev, err := decodeEvent(b)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrBadEvent, err)
	}
	return ev, nil
}

// commitSignal is closed and replaced after each commit of the gateway.
type commitSignal struct {
	mu sync.Mutex
	ch chan struct{}
}

// Committed returns a channel that is closed after the gateway's next
// commit (an invocation, a dead letter). Log followers wait on it instead
// of polling. Safe for concurrent use.
func (g *Gateway) Committed() <-chan struct{} {
	g.commits.mu.Lock()
	defer g.commits.mu.Unlock()
	if g.commits.ch == nil {
		g.commits.ch = make(chan struct{})
	}
	return g.commits.ch
}

func (g *Gateway) signalCommit() {
	g.commits.mu.Lock()
	if g.commits.ch != nil {
		close(g.commits.ch)
		g.commits.ch = nil
	}
	g.commits.mu.Unlock()
}
