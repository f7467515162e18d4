package gateway

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/moongate-edge/moongate/luavm"
	"github.com/moongate-edge/moongate/mqtt"
	"github.com/moongate-edge/moongate/store"
)

// process runs one inbox entry through its function and commits the
// outcome. It is called by one worker at a time per lane.
func (g *Gateway) process(ctx context.Context, j *job) (outcome, time.Duration) {
	if ctx.Err() != nil {
		return stop, 0
	}
	// The invocation and its commit are not cut short by a stop: the
	// function's own timeout bounds them.
	ictx := context.WithoutCancel(ctx)
	e := &j.entry
	ev, hops, budget, err := decodeEventChain(e.Event)
	if err != nil {
		return g.deadLetter(ictx, j, nil, err)
	}
	if hops > g.opts.MaxHops {
		return g.deadLetter(ictx, j, nil, fmt.Errorf("%w: %d hops, limit %d", ErrHopLimit, hops, g.opts.MaxHops))
	}
	ft := g.funcs.Load()
	f := ft.byName[e.Function]
	if f == nil {
		return g.deadLetter(ictx, j, nil, ErrNoFunction)
	}
	if f.LoadErr != nil {
		return g.deadLetter(ictx, j, nil, fmt.Errorf("%w: %w", ErrNotLoaded, f.LoadErr))
	}
	res, err := g.invoke(ctx, ictx, e.Function, ev)
	if errors.Is(err, errStopping) || (errors.Is(err, luavm.ErrClosed) && ctx.Err() != nil) {
		return stop, 0
	}
	g.disp.giveTurn(j) // the commit does not need it
	if errors.Is(err, luavm.ErrBusy) {
		// Every instance busy (calls over the API take them too): nothing
		// ran, so it is not a failed attempt; the event waits its turn.
		if ctx.Err() != nil {
			return stop, 0
		}
		return retry, g.backoff(1)
	}
	if err != nil {
		g.stats.failed.Add(1)
		j.attempts++
		// A breached limit or a crash of the VM would happen again: no retry.
		if luavm.IsLimit(err) || errors.Is(err, luavm.ErrPanic) || errors.Is(err, luavm.ErrNotFound) || j.attempts >= g.opts.Retry.MaxAttempts {
			return g.deadLetter(ictx, j, res, err)
		}
		// The attempt ran: it is metered and keeps its logs, also when the
		// gateway is stopping (keepAttempt commits without ctx), and the
		// count and the next attempt's time are kept for a restart.
		wait := g.backoff(j.attempts)
		g.keepAttempt(ictx, j, ev, res, wait)
		if ctx.Err() != nil {
			return stop, 0
		}
		g.log.Debug("invocation failed, will retry", "function", e.Function, "seq", e.Seq, "attempt", j.attempts, "err", err)
		return retry, wait
	}
	f = g.ranAs(f, res)
	// The functions listening to its outputs as deployed now: the
	// invocation may have waited seconds for an instance while a listener
	// was deployed or removed.
	ft = g.funcs.Load()
	c := g.buildCommit(f, ev, e, res)
	c.State = append(c.State, g.forgetAttempts(j)...)
	release, err := g.stageBlobs(ictx, c, res)
	if err != nil {
		release()
		if blobPermanent(err) {
			return g.deadLetter(ictx, j, res, err)
		}
		g.log.Warn("staging blobs failed, will retry", "function", e.Function, "seq", e.Seq, "err", err)
		g.meterUncommitted(ictx, e.Function, ev, res)
		if ctx.Err() != nil {
			return stop, 0
		}
		return retry, g.backoff(max(j.attempts, 3))
	}
	if err := g.chainCommit(ft, c, hops, budget); err != nil {
		release()
		g.stats.failed.Add(1)
		return g.deadLetter(ictx, j, res, err)
	}
	cr, err := g.opts.Store.Commit(ictx, c)
	release()
	switch {
	case err == nil:
	case errors.Is(err, store.ErrAlreadyConsumed):
		g.stats.dups.Add(1)
		return done, 0
	case errors.Is(err, store.ErrChainOverflow):
		g.stats.failed.Add(1)
		return g.deadLetter(ictx, j, res, chainRefusal(err))
	case refusedForGood(err):
		// Retrying would fail the same way and hold the lane (and the
		// backlog's room) forever: the event goes to the dead letters.
		g.stats.failed.Add(1)
		return g.deadLetter(ictx, j, res, fmt.Errorf("%w: %w", ErrOutputsRefused, err))
	default:
		// The store refused (full disk, quota): nothing was applied; try
		// again later, the event stays in the inbox.
		g.log.Warn("commit failed, will retry", "function", e.Function, "seq", e.Seq, "err", err)
		g.meterUncommitted(ictx, e.Function, ev, res)
		if ctx.Err() != nil {
			return stop, 0
		}
		return retry, g.backoff(max(j.attempts, 3))
	}
	g.stats.processed.Add(1)
	g.signalCommit()
	if len(cr.Publishes) > 0 {
		g.kickPublisher()
	}
	// cr.Inbox, the chained entries, were handed to the dispatcher by
	// the store's committer (Run: SetChained), in order.
	return done, 0
}

// refusedForGood reports whether a store error means the same write can
// never succeed (as opposed to a full disk or quota, which clear up).
func refusedForGood(err error) bool { return store.IsPermanent(err) }

// errStopping is invoke's answer when the gateway stops before the event
// ran: it stays in the inbox.
var errStopping = errors.New("gateway: stopping")

// invoke runs an event's function. The job holds a turn of its function
// (its max_concurrency, taken by the dispatcher: a function at its limit
// parks its lanes instead of holding workers) and needs one of the
// gateway's turns (workers) and an instance. It never waits for an
// instance holding a gateway turn (a client hammering one HTTP function
// stalled every other function's events): it takes a turn, then an
// instance if one is free at once (TryInvoke). If none is (calls over the
// API hold them), it gives the turn back and waits for an instance in the
// function's queue, in turn with those calls (InvokeGated, up to
// queue_timeout), then waits for a turn holding it: the holders of turns
// are all running, so that wait is short, and giving the instance back
// instead lost the event's place for as long as both loads lasted (the
// runtime re-checks the version once the turn is given). A stop ends both
// waits (the event stays in the inbox); once it runs, nothing cancels it.
// ctx is the gateway's, ictx the invocation's.
func (g *Gateway) invoke(ctx, ictx context.Context, name string, ev *luavm.Event) (*luavm.Result, error) {
	for {
		if ctx.Err() != nil {
			return nil, errStopping // (a select with a free turn could pick it)
		}
		select {
		case g.invoking <- struct{}{}:
		case <-ctx.Done():
			// Stopping while waiting for a turn: the event stays in the
			// inbox (only an invocation already running finishes).
			return nil, errStopping
		}
		res, err := g.opts.Runtime.TryInvoke(ictx, name, ev, g.state)
		<-g.invoking
		if !errors.Is(err, luavm.ErrBusy) {
			return res, err
		}
		noTurn := false
		// The wait for an instance ends at a stop (the event stays in the
		// inbox); once the gate gave a turn the call runs to its end.
		wctx, cancelWait := context.WithCancel(ictx)
		var mu sync.Mutex
		started := false
		stopWait := context.AfterFunc(ctx, func() {
			mu.Lock()
			if !started {
				cancelWait()
			}
			mu.Unlock()
		})
		res, err = g.opts.Runtime.InvokeGated(wctx, name, ev, g.state, func(context.Context) (func(), error) {
			mu.Lock()
			defer mu.Unlock()
			if wctx.Err() != nil || ctx.Err() != nil {
				return nil, fmt.Errorf("%w: stopping", luavm.ErrBusy)
			}
			select {
			case g.invoking <- struct{}{}:
				started = true
				return func() {
					<-g.invoking
					mu.Lock()
					started = false
					if ctx.Err() != nil {
						cancelWait() // the stop came while it held the turn
					}
					mu.Unlock()
				}, nil
			case <-ctx.Done():
				noTurn = true
				return nil, fmt.Errorf("%w: no gateway turn free", luavm.ErrBusy)
			}
		})
		stopWait()
		cancelWait()
		if !noTurn {
			return res, err // ran, or busy for queue_timeout: retried later
		}
	}
}

func (g *Gateway) backoff(attempt int) time.Duration {
	d := g.opts.Retry.InitialBackoff
	for i := 1; i < attempt && d < g.opts.Retry.MaxBackoff; i++ {
		if d > g.opts.Retry.MaxBackoff/2 {
			return g.opts.Retry.MaxBackoff // doubling could overflow
		}
		d *= 2
	}
	return min(d, g.opts.Retry.MaxBackoff)
}

// buildCommit turns an invocation's result into one atomic commit.
func (g *Gateway) buildCommit(f *Function, ev *luavm.Event, e *store.InboxEntry, res *luavm.Result) *store.Commit {
	now := g.opts.Now().UnixMilli()
	device := ev.Captures["device"]
	c := &store.Commit{InboxSeq: e.Seq}
	rec := func(stream string, data []byte) store.Record {
		targets := f.Sync
		if g.opts.RouteTargets != nil && len(targets) > 0 {
			targets = g.opts.RouteTargets(stream, targets)
		}
		return store.Record{Stream: stream, Function: f.Name, Device: device, EventID: ev.ID,
			EventTS: ev.TS, ProcessedTS: now, Data: data, Targets: targets}
	}
	switch res.Kind {
	case luavm.ResultJSON:
		c.Records = append(c.Records, rec(f.Stream, res.Value))
	case luavm.ResultString:
		// A string result is stored as a JSON string, encoded as luavm
		// checked it against max_result_bytes (encoding/json escapes < >
		// & and writes a byte that is not UTF-8 as six).
		c.Records = append(c.Records, rec(f.Stream, luavm.JSONString(string(res.Value))))
	}
	for i := range res.Effects {
		ef := &res.Effects[i]
		switch ef.Kind {
		case luavm.EffectEmit:
			c.Records = append(c.Records, rec(ef.Stream, ef.Record))
		case luavm.EffectPublish:
			c.Publishes = append(c.Publishes, store.Publish{Topic: ef.Topic, Payload: ef.Payload, QoS: ef.QoS, Retain: ef.Retain})
		}
	}
	for _, op := range res.State {
		sc := store.StateChange{Function: f.Name, Key: op.Key, Value: op.Value, Delta: op.Delta}
		switch op.Op {
		case luavm.StateSet:
			sc.Op = store.StateSet
		case luavm.StateDelete:
			sc.Op = store.StateDelete
		case luavm.StateIncr:
			sc.Op = store.StateIncr
		}
		c.State = append(c.State, sc)
	}
	c.Logs = g.logRecords(f.Name, ev, res)
	c.Usage = usageOf(f.Name, now, res, false)
	return c
}

func (g *Gateway) logRecords(function string, ev *luavm.Event, res *luavm.Result) []store.LogRecord {
	if res == nil || len(res.Logs) == 0 {
		return nil
	}
	out := make([]store.LogRecord, len(res.Logs))
	for i, l := range res.Logs {
		out[i] = store.LogRecord{Function: function, InvocationID: invocationID(ev, res), Level: levelName(l.Level),
			Msg: l.Msg, Fields: l.Fields, TS: l.TimeMS}
	}
	return out
}

func levelName(l slog.Level) string {
	switch {
	case l >= slog.LevelError:
		return "error"
	case l >= slog.LevelWarn:
		return "warn"
	case l >= slog.LevelInfo:
		return "info"
	default:
		return "debug"
	}
}

func usageOf(function string, now int64, res *luavm.Result, failed bool) *store.Usage {
	u := &store.Usage{Function: function, TS: now, Invocations: 1}
	if failed {
		u.Errors = 1
	}
	if res != nil {
		u.Steps = res.Cost.Steps
		u.WallMicros = res.Cost.Wall.Microseconds()
		u.BytesIn = res.Cost.BytesIn
		u.BytesOut = res.Cost.BytesOut
	}
	return u
}

// keepAttempt commits the log lines and the cost of a failed attempt
// that will be retried after wait: every attempt is metered and keeps its
// logs, as any invocation does (the last one's go with its dead letter or
// its outputs). In the same write it records j's attempt count and when
// the next is due (AttemptsStateFunction), so that a restart neither
// starts the count again nor skips the backoff. Best effort: when the
// store refuses, that is logged and the retry goes on.
func (g *Gateway) keepAttempt(ctx context.Context, j *job, ev *luavm.Event, res *luavm.Result, wait time.Duration) {
	function := j.entry.Function
	now := g.opts.Now()
	rec, _ := json.Marshal(attemptRecord{N: j.attempts, Due: now.Add(wait).UnixMilli()})
	c := &store.Commit{Logs: g.logRecords(function, ev, res), Usage: usageOf(function, now.UnixMilli(), res, true),
		State: []store.StateChange{{Function: AttemptsStateFunction, Op: store.StateSet, Key: attemptsKey(j.entry.Seq), Value: rec}}}
	_, err := g.opts.Store.Commit(ctx, c)
	if err != nil && refusedForGood(err) {
		// The count refused (the state quota of _attempts full): the logs
		// and usage at least, then the usage alone (logs too large).
		c.State = nil
		if _, err = g.opts.Store.Commit(ctx, c); err != nil && refusedForGood(err) && len(c.Logs) > 0 {
			c.Logs = nil
			_, err = g.opts.Store.Commit(ctx, c)
		}
		if err == nil {
			g.log.Warn("count of a failed attempt not kept: a restart may retry it more", "function", function)
			g.signalCommit()
			return
		}
	}
	if err != nil {
		g.log.Warn("logs, usage and count of a failed attempt not kept", "function", function, "err", err)
		return
	}
	j.recorded = true
	g.signalCommit()
}

// AttemptsStateFunction is the state namespace (store state of this
// "function") where the gateway keeps the failed attempts of the inbox
// entries it will retry, under the entry's sequence number: {"n": count,
// "due": Unix ms of the next attempt}. The commit that consumes the entry
// deletes it. It is not a valid function name, so it cannot clash with one.
const AttemptsStateFunction = "_attempts"

// attemptRecord is the value kept under AttemptsStateFunction.
type attemptRecord struct {
	N   int   `json:"n"`
	Due int64 `json:"due"`
}

func attemptsKey(seq uint64) string { return strconv.FormatUint(seq, 10) }

// forgetAttempts is the state change that deletes j's attempts record, for
// the commit that consumes its entry (none when it has none).
func (g *Gateway) forgetAttempts(j *job) []store.StateChange {
	if !j.recorded {
		return nil
	}
	return []store.StateChange{{Function: AttemptsStateFunction, Op: store.StateDelete, Key: attemptsKey(j.entry.Seq)}}
}

// deadLetterHead is how much of an event a dead letter keeps when the
// whole event cannot be stored with it.
const deadLetterHead = 16 << 10

// deadLetter consumes the entry into the dead letters, with the error.
func (g *Gateway) deadLetter(ctx context.Context, j *job, res *luavm.Result, cause error) (outcome, time.Duration) {
	e := &j.entry
	now := g.opts.Now().UnixMilli()
	c := &store.Commit{
		InboxSeq: e.Seq,
		DeadLetter: &store.DeadLetter{Function: e.Function, Key: e.Key, Event: e.Event, Error: cause.Error(),
			Attempts: max(j.attempts, 1), TS: now},
		State: g.forgetAttempts(j),
	}
	var ev *luavm.Event
	if res != nil {
		// Metered only when it ran (an event of no function, of a version
		// that does not load, over the hop limit or undecodable did not).
		c.Usage = usageOf(e.Function, now, res, true)
		if d, err := decodeEvent(e.Event); err == nil {
			ev = d
			c.Logs = g.logRecords(e.Function, ev, res)
		}
	}
	_, err := g.opts.Store.Commit(ctx, c)
	if err != nil && refusedForGood(err) && len(c.Logs) > 0 {
		// The invocation's logs made it too large: the event matters more.
		c.Logs = nil
		_, err = g.opts.Store.Commit(ctx, c)
	}
	if err != nil && refusedForGood(err) {
		// Keep what fits: the head of the event (the inbox took the whole
		// event, so this is not expected). The reason says so; the head
		// does not decode, so it is for diagnosis, not for replay.
		head := e.Event[:min(len(e.Event), deadLetterHead)]
		dl := *c.DeadLetter
		dl.Event = head
		dl.Error = fmt.Sprintf("%s (dead letter of the whole event refused: %v; kept the first %d of %d bytes)", dl.Error, err, len(head), len(e.Event))
		c.DeadLetter, c.Logs = &dl, nil
		_, err = g.opts.Store.Commit(ctx, c)
	}
	switch {
	case err == nil:
		g.stats.dead.Add(1)
		g.signalCommit()
		g.log.Debug("event dead-lettered", "function", e.Function, "seq", e.Seq, "err", cause)
		return done, 0
	case errors.Is(err, store.ErrAlreadyConsumed):
		g.stats.dups.Add(1)
		return done, 0
	default:
		g.log.Warn("dead-letter commit failed, will retry", "function", e.Function, "seq", e.Seq, "err", err)
		if ev != nil {
			g.meterUncommitted(ctx, e.Function, ev, res)
		}
		return retry, g.backoff(3)
	}
}

// meterUncommitted keeps, best effort, the logs and usage (as a failed
// invocation) of a run whose outputs the store refused for now: its event
// runs again later, and every run is metered. The usage alone when the
// logs do not fit.
func (g *Gateway) meterUncommitted(ctx context.Context, function string, ev *luavm.Event, res *luavm.Result) {
	if res == nil {
		return
	}
	c := &store.Commit{Logs: g.logRecords(function, ev, res), Usage: usageOf(function, g.opts.Now().UnixMilli(), res, true)}
	_, err := g.opts.Store.Commit(ctx, c)
	if err != nil && len(c.Logs) > 0 {
		c.Logs = nil
		_, err = g.opts.Store.Commit(ctx, c)
	}
	if err != nil {
		g.log.Warn("logs and usage of a run whose outputs were refused not kept", "function", function, "err", err)
		return
	}
	g.signalCommit()
}

// publisher carries out committed local publishes from the publish outbox,
// oldest first, and acknowledges them in the store once sent. The
// acknowledgement of a batch (a store commit, which waits for its sync) is
// written while the next batch is read and published; when it fails, the
// publisher starts again from the oldest unacknowledged publish (publishes
// are at-least-once).
func (g *Gateway) publisher(ctx context.Context) {
	var after uint64
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	var ackFailed atomic.Bool
	acked := make(chan struct{})
	type ack struct {
		seqs []uint64
		sent int // how many of seqs were published (the rest: dead-lettered)
	}
	acks := make(chan ack, 1)
	go func() {
		defer close(acked)
		for a := range acks {
			if err := g.opts.Store.AckPublishes(context.WithoutCancel(ctx), a.seqs...); err != nil {
				g.log.Warn("ack publish outbox", "err", err)
				ackFailed.Store(true)
				continue
			}
			g.stats.published.Add(uint64(a.sent))
		}
	}()
	defer func() { close(acks); <-acked }()
	var failing failureLog
	for {
		for {
			if ackFailed.Swap(false) {
				after = 0
			}
			pubs, err := g.opts.Store.PendingPublishes(ctx, after, 256)
			if err != nil || len(pubs) == 0 {
				if err != nil && ctx.Err() == nil {
					g.log.Warn("read publish outbox", "err", err)
				}
				break
			}
			n, err := g.publishAll(ctx, pubs)
			end := n // acknowledged: published, or dead-lettered (below)
			if err == nil || n >= len(pubs) || undeliverable(err) {
				// Not when this try sent some and then failed again (a
				// flapping link): the failure goes on.
				failing.recovered(g.log, "local publishes go out again")
			}
			switch {
			case err == nil || n >= len(pubs):
			case undeliverable(err):
				// It would fail the same way forever and hold every
				// publish behind it: it goes to the dead letters.
				if g.deadLetterPublish(ctx, &pubs[n], err) {
					end = n + 1
				}
			case ctx.Err() == nil && !g.stopping.Load():
				// Every commit with a publish and every second try again:
				// while the broker is away that is a line each time.
				g.stats.pubRetries.Add(1)
				failing.fail(g.log, time.Now(), "local publish failed, will retry", "topic", pubs[n].Topic, "err", err)
			}
			seqs := make([]uint64, 0, end)
			for _, p := range pubs[:end] {
				seqs = append(seqs, p.Seq)
			}
			if len(seqs) > 0 {
				after = seqs[len(seqs)-1]
				acks <- ack{seqs: seqs, sent: n}
			}
			if end == n && n < len(pubs) {
				break
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-g.pubNotify:
		case <-tick.C:
		}
	}
}

// PublishDeadLetters is the function name under which local publishes that
// can never be carried out (an invalid topic or QoS) are kept as dead
// letters. It is not a valid function name, so it cannot clash with one.
const PublishDeadLetters = "_publish"

// undeliverable reports whether a publish error is the message's own fault
// (it fails the same way on every broker connection).
func undeliverable(err error) bool {
	return errors.Is(err, mqtt.ErrInvalidTopic) || errors.Is(err, mqtt.ErrInvalidQoS) || errors.Is(err, mqtt.ErrPublishTooLarge)
}

// deadLetterPublish keeps an undeliverable publish as a dead letter and
// takes it off the publish outbox in the same atomic write (a separate
// acknowledgement that failed would dead-letter it again when the
// publisher starts over). It reports whether it did.
func (g *Gateway) deadLetterPublish(ctx context.Context, p *store.Publish, cause error) bool {
	ctx = context.WithoutCancel(ctx)
	ev := luavm.Event{ID: g.newEventID(), Topic: p.Topic, Payload: p.Payload, TS: g.opts.Now().UnixMilli(), QoS: p.QoS, Trigger: "publish"}
	dl := &store.DeadLetter{Function: PublishDeadLetters, Key: p.Topic, Event: encodeEvent(&ev), Error: cause.Error(), TS: ev.TS}
	_, err := g.opts.Store.Commit(ctx, &store.Commit{DeadLetter: dl, AckPublishes: []uint64{p.Seq}})
	if err != nil && refusedForGood(err) && len(p.Payload) > deadLetterHead {
		// Larger than the dead letters can take (their whole quota): the
		// head of the payload, for diagnosis. (Retried as it was, it held
		// up every publish behind it for ever.)
		ev.Payload = p.Payload[:deadLetterHead]
		dl.Event = encodeEvent(&ev)
		dl.Error = fmt.Sprintf("%s (dead letter of the whole publish refused: %v; kept the first %d of %d payload bytes)", cause, err, deadLetterHead, len(p.Payload))
		_, err = g.opts.Store.Commit(ctx, &store.Commit{DeadLetter: dl, AckPublishes: []uint64{p.Seq}})
	}
	if err != nil && refusedForGood(err) {
		// Not even that: the publish is dropped, said loudly, rather than
		// block the outbox.
		if _, aerr := g.opts.Store.Commit(ctx, &store.Commit{AckPublishes: []uint64{p.Seq}}); aerr == nil {
			g.stats.dead.Add(1)
			g.log.Error("local publish cannot be carried out and its dead letter was refused: dropped", "topic", p.Topic, "bytes", len(p.Payload), "err", cause, "dead_letter_err", err)
			return true
		}
	}
	if err != nil {
		g.log.Warn("dead-letter undeliverable publish failed, will retry", "topic", p.Topic, "err", err)
		return false
	}
	g.stats.dead.Add(1)
	g.log.Error("local publish cannot be carried out: dead-lettered", "topic", p.Topic, "err", cause)
	return true
}

// batchPublisher is an Ingest that sends a run of messages without waiting
// for each acknowledgement in turn (mqtt.External: one broker round trip per
// QoS 1 message otherwise).
type batchPublisher interface {
	PublishAll(ctx context.Context, msgs []mqtt.Outgoing) (int, error)
}

// publishAll publishes pubs in order and returns how many of the first ones
// were published, with the error that stopped it (n < len(pubs)).
func (g *Gateway) publishAll(ctx context.Context, pubs []store.Publish) (int, error) {
	if bp, ok := g.opts.Ingest.(batchPublisher); ok {
		msgs := make([]mqtt.Outgoing, len(pubs))
		for i, p := range pubs {
			msgs[i] = mqtt.Outgoing{Topic: p.Topic, Payload: p.Payload, QoS: p.QoS, Retain: p.Retain}
		}
		return bp.PublishAll(ctx, msgs)
	}
	for i, p := range pubs {
		if err := g.opts.Ingest.Publish(ctx, p.Topic, p.Payload, p.QoS, p.Retain); err != nil {
			return i, err
		}
	}
	return len(pubs), nil
}

// invocationID names one invocation in the logs: the runtime's id, or the
// event id when the runtime gave none.
func invocationID(ev *luavm.Event, res *luavm.Result) string {
	if res != nil && res.InvocationID != "" {
		return res.InvocationID
	}
	return ev.ID
}

// failureLogEvery is how often a failure that goes on is logged again.
const failureLogEvery = time.Minute

// failureLog logs a failure that repeats (each retry) once when it starts,
// then at most every failureLogEvery with the number of failures since,
// and once when it ends. The zero value is ready; not safe for concurrent
// use.
type failureLog struct {
	failures int // since the last line
	total    int // since the failure began (0: not failing)
	logged   time.Time
}

func (f *failureLog) fail(log *slog.Logger, now time.Time, msg string, args ...any) {
	f.failures++
	f.total++
	if f.total > 1 && now.Sub(f.logged) < failureLogEvery {
		return
	}
	if f.total > 1 {
		args = append(args, "failures_since_last_logged", f.failures)
	}
	log.Warn(msg, args...)
	f.failures, f.logged = 0, now
}

func (f *failureLog) recovered(log *slog.Logger, msg string) {
	if f.total == 0 {
		return
	}
	log.Info(msg, "failures", f.total)
	*f = failureLog{}
}
