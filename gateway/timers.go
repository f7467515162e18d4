package gateway

import (
	"context"
	"fmt"
	"strconv"
	"sync"
	"time"

	"github.com/moongate-edge/moongate/gateway/trigger"
	"github.com/moongate-edge/moongate/luavm"
	"github.com/moongate-edge/moongate/store"
)

// timerRun is the running timer loops of one function.
type timerRun struct {
	cancel context.CancelFunc
	loops  sync.WaitGroup
	// from is, per schedule (trigger.ScheduleKey), the time after which
	// the loop has enqueued no tick: where it started planning, moved to
	// each tick it enqueued. A redeployed version with the same schedule
	// takes over from there (since).
	mu   sync.Mutex
	from map[string]time.Time
	// fired is, per cron schedule, the last tick enqueued by this loop or
	// the loops it replaced (handed over from run to run): after the
	// clock was set back, no tick up to it fires again, however many
	// redeploys come in between.
	fired map[string]time.Time
}

// lastFired is the last tick enqueued for the schedule with key by r's
// loops or the ones before them (zero: none, or r nil). Call it after
// stop.
func (r *timerRun) lastFired(key string) time.Time {
	if r == nil {
		return time.Time{}
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.fired[key]
}

// since is the time from which a loop replacing r's for the schedule with
// key fires cron ticks: r enqueued none after it. Zero when r is nil or
// had no such schedule (a new or changed schedule plans from now: a tick
// due before it existed is not fired). Call it after stop.
func (r *timerRun) since(key string) time.Time {
	if r == nil {
		return time.Time{}
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.from[key]
}

// enqueued records that the loop of the schedule with key enqueued tick.
func (r *timerRun) enqueued(key string, tick time.Time) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if tick.After(r.from[key]) {
		r.from[key] = tick
	}
	if tick.After(r.fired[key]) {
		r.fired[key] = tick
	}
}

// stop cancels the loops and waits until none of them can still record a
// tick (a tick being committed finishes first).
func (r *timerRun) stop() {
	if r != nil {
		r.cancel()
		r.loops.Wait()
	}
}

// startTimers starts one timer loop per function with schedules, after
// deleting the recorded "@every" ticks whose interval a function no longer
// has (changed while the gateway was down). It holds deployMu, as
// SetFunctions does: a deployment cannot replace or remove a function
// between the read of the table and the start of its timer.
func (g *Gateway) startTimers() {
	g.deployMu.Lock()
	defer g.deployMu.Unlock()
	g.timersMu.Lock()
	g.timersOn = true
	g.timersMu.Unlock()
	for _, f := range g.funcs.Load().byName {
		g.pruneTicks(f.Name, f.Schedules)
		g.startTimer(f, nil).stop()
	}
}

// startTimer (re)starts f's timer loops; a function without schedules has
// none. f must be the deployed version of its name: a version that was
// replaced or removed meanwhile gets no timer (and the current version's
// timer is left alone). A cron schedule that stopped (the loops of the
// version f replaces, stopped, or nil) also had fires the ticks stopped
// did not enqueue (since); the others plan from now. It returns the loops it
// replaced, cancelled: the caller stops them (waits) outside timersMu.
func (g *Gateway) startTimer(f *Function, stopped *timerRun) *timerRun {
	g.timersMu.Lock()
	defer g.timersMu.Unlock()
	if g.funcs.Load().byName[f.Name] != f || f.LoadErr != nil {
		return nil
	}
	prev := g.timers[f.Name]
	if prev != nil {
		prev.cancel()
		delete(g.timers, f.Name)
	}
	if len(f.Schedules) == 0 || !g.timersOn || g.stopping.Load() {
		return prev
	}
	ctx, cancel := context.WithCancel(g.runCtx)
	r := &timerRun{cancel: cancel, from: map[string]time.Time{}, fired: map[string]time.Time{}}
	now := g.opts.Now()
	g.timers[f.Name] = r
	for _, s := range f.Schedules {
		key := trigger.ScheduleKey(s)
		since := stopped.since(key)
		if since.IsZero() || since.After(now) {
			since = now
		}
		// A cron schedule's last tick fired goes on to the new loops: the
		// clock may have been set back since (then since is now, and
		// without it the new loop would fire that tick again). An "@every"
		// timer resumes from its recorded tick instead.
		var fired time.Time
		if _, every := s.(trigger.Every); !every {
			fired = stopped.lastFired(key)
		}
		// Under r.mu: the loops of the schedules before this one run
		// already and record their ticks (enqueued).
		r.mu.Lock()
		r.from[key] = since
		if !fired.IsZero() {
			r.fired[key] = fired
		}
		r.mu.Unlock()
		r.loops.Go(func() { g.timerLoop(ctx, r, key, f.Name, s, since, fired) })
	}
	return prev
}

// stopTimer cancels the timer loops of name and returns them (see
// startTimer).
func (g *Gateway) stopTimer(name string) *timerRun {
	g.timersMu.Lock()
	defer g.timersMu.Unlock()
	r := g.timers[name]
	if r != nil {
		r.cancel()
		delete(g.timers, name)
	}
	return r
}

// stopTimers stops every timer loop and waits for them: none commits a
// tick after it returns.
func (g *Gateway) stopTimers() {
	g.timersMu.Lock()
	runs := make([]*timerRun, 0, len(g.timers))
	for name, r := range g.timers {
		r.cancel()
		delete(g.timers, name)
		runs = append(runs, r)
	}
	g.timersMu.Unlock()
	for _, r := range runs {
		r.stop()
	}
}

// pruneTicks deletes the recorded ticks of function's "@every" timers
// whose interval is not among schedules (all of them for a removed
// function), so state of removed functions and changed intervals does not
// pile up. A timer whose interval stays keeps its phase. Failures are
// logged: a leftover record is a few bytes, and a later prune removes it.
// The caller has stopped the function's previous loops, so none of them
// can record a tick after the prune.
func (g *Gateway) pruneTicks(function string, schedules []Schedule) {
	ctx := g.pruneCtx()
	keep := make(map[string]bool, len(schedules))
	for _, s := range schedules {
		if every, ok := s.(trigger.Every); ok {
			keep[tickKey(function, every)] = true
		}
	}
	kvs, _, err := g.opts.Store.ListState(ctx, TimerStateFunction, function+"/", store.MaxQueryLimit, "")
	var del []store.StateChange
	for _, kv := range kvs {
		if !keep[kv.Key] {
			del = append(del, store.StateChange{Function: TimerStateFunction, Op: store.StateDelete, Key: kv.Key})
		}
	}
	if err == nil && len(del) > 0 {
		_, err = g.opts.Store.Commit(ctx, &store.Commit{State: del})
	}
	if err != nil && ctx.Err() == nil {
		g.log.Warn("timer: recorded ticks not pruned", "function", function, "err", err)
	}
}

// pruneCtx is the context of a prune of recorded ticks: the gateway's run
// (a deployment before Run or after its end prunes nothing).
func (g *Gateway) pruneCtx() context.Context {
	g.timersMu.Lock()
	defer g.timersMu.Unlock()
	if g.runCtx == nil {
		ctx, cancel := context.WithCancel(context.Background())
		cancel()
		return ctx
	}
	return g.runCtx
}

// TimerStateFunction is the state namespace (store state of this
// "function") where the gateway keeps the last tick of every "@every"
// timer, under the key "<function>/@every <interval>", as Unix
// milliseconds. It is not a valid function name, so it cannot clash with
// one.
const TimerStateFunction = "_timer"

// tickKey is the key of the recorded tick of function's "@every" timer.
func tickKey(function string, every trigger.Every) string {
	return function + "/" + every.String()
}

// timerLoop enqueues a timer event at each tick of s. Timer events are
// ordinary inbox entries (lane "timer" of the function): durable, in order,
// bounded by the same admission as MQTT events. Cron ticks missed while the
// gateway was down are not replayed. An "@every" timer keeps its phase
// across restarts and redeployments: each tick is recorded in the same
// write as its event, the next one is due an interval after it, and a tick
// that fell due while the gateway was down fires once at start. A cron
// timer that replaces the loops of a previous version (since not zero)
// fires the ticks after since: one due during the redeploy is not lost.
func (g *Gateway) timerLoop(ctx context.Context, r *timerRun, schedKey, function string, s Schedule, since, fired time.Time) {
	every, keep := s.(trigger.Every)
	key := tickKey(function, every)
	fire := func(tick time.Time) {
		now := g.opts.Now()
		ev := luavm.Event{ID: g.newEventID(), Trigger: "timer", TS: now.UnixMilli()}
		entry := store.InboxEntry{Function: function, Key: "timer", Event: encodeEvent(&ev)}
		var err error
		if keep {
			// A tick planned on the monotonic clock (it carries a reading)
			// whose wall time is far from the wall clock now: the wall clock
			// stepped since (a Pi booted without its time, then NTP). It
			// fired at the right moment, but recorded with that wall time a
			// restart would take it for a tick missed long ago. The phase
			// starts again from now. (A tick resumed from the record has no
			// monotonic reading and keeps its phase.)
			if wall := now.Round(0); tick != tick.Round(0) && wall.Sub(tick.Round(0)).Abs() > maxTimerLate {
				tick = wall
			}
			err = g.enqueueTick(ctx, entry, key, tick)
		} else {
			err = g.enqueue(ctx, []store.InboxEntry{entry})
		}
		if err != nil {
			if ctx.Err() == nil {
				g.log.Warn("timer event not enqueued", "function", function, "err", err)
			}
			return
		}
		r.enqueued(schedKey, tick)
	}
	var first time.Time
	if !keep {
		first = s.Next(since)
	}
	if keep {
		v, ok, err := g.opts.Store.GetState(ctx, TimerStateFunction, key)
		var last time.Time
		if ok && err == nil {
			if ms, perr := strconv.ParseInt(string(v), 10, 64); perr == nil {
				last = time.UnixMilli(ms)
			}
		}
		switch now := g.opts.Now(); {
		case err != nil:
			if ctx.Err() == nil {
				g.log.Warn("timer: last tick not read; counting from now", "function", function, "err", err)
			}
		case last.IsZero():
			// Never ticked: record the start of the first interval, so that
			// a restart (or redeploy) before the first tick keeps it (a
			// timer whose gateway restarts more often than its interval
			// would otherwise never fire).
			if err := g.recordTick(ctx, key, now); err != nil && ctx.Err() == nil {
				g.log.Warn("timer: start not recorded", "function", function, "err", err)
			}
			first = every.Next(now)
		default:
			first = resumeEvery(last, now, every)
			if !first.After(now) {
				// Fell due while the gateway was down: the latest tick due
				// fires, once (the ones before it are not replayed), and is
				// recorded, so that another restart does not fire again; the
				// next is an interval after it.
				tick := latestDue(last, now, every)
				fire(tick)
				first = every.Next(tick)
			}
		}
	}
	after := g.timerAfter
	if after == nil {
		after = realAfter
	}
	runSchedule(ctx, s, first, fired, g.opts.Now, after, fire, func(tick, now time.Time) {
		if keep {
			// An interval timer does not lose its tick to a clock step (a
			// tick due while the gateway was down, resumed on a clock NTP
			// then set forward): it fires once, now, and its phase starts
			// again from there.
			g.log.Info("timer tick fired late: the wall clock jumped past it", "function", function, "tick", tick, "now", now)
			fire(now)
			return
		}
		g.log.Warn("timer tick skipped: the wall clock jumped past it", "function", function, "tick", tick, "now", now)
	})
}

// resumeEvery is the first tick of an "@every" timer whose last recorded
// tick was last: an interval after it, but never more than an interval
// from now (a last tick in the future means the wall clock is behind it).
func resumeEvery(last, now time.Time, every trigger.Every) time.Time {
	next := every.Next(last)
	if limit := every.Next(now); next.After(limit) {
		return limit
	}
	return next
}

// latestDue is the latest tick of an "@every" timer whose last tick was
// last that is due at now: last plus a whole number of intervals.
func latestDue(last, now time.Time, every trigger.Every) time.Time {
	d := every.Next(last).Sub(last)
	if !now.After(last) {
		return last
	}
	return last.Add(now.Sub(last) / d * d)
}

// recordTick records tick as the last tick of an "@every" timer without an
// event (the start of its first interval).
func (g *Gateway) recordTick(ctx context.Context, key string, tick time.Time) error {
	_, err := g.opts.Store.Commit(context.WithoutCancel(ctx), &store.Commit{
		State: []store.StateChange{{Function: TimerStateFunction, Op: store.StateSet, Key: key,
			Value: strconv.AppendInt(nil, tick.UnixMilli(), 10)}},
	})
	return err
}

// enqueueTick is enqueue for one "@every" timer event: the event and the
// record of its tick (TimerStateFunction) are one atomic write.
func (g *Gateway) enqueueTick(ctx context.Context, entry store.InboxEntry, key string, tick time.Time) error {
	j := &job{entry: entry, size: int64(len(entry.Event))}
	if err := g.disp.admit(ctx, j); err != nil {
		return err
	}
	res, err := g.opts.Store.Commit(context.WithoutCancel(ctx), &store.Commit{
		State: []store.StateChange{{Function: TimerStateFunction, Op: store.StateSet, Key: key,
			Value: strconv.AppendInt(nil, tick.UnixMilli(), 10)}},
		Chain:       func(store.Change) []store.InboxEntry { return []store.InboxEntry{entry} },
		ChainMax:    1,
		ChainQueued: true, // its job is admitted above and pushed below
	})
	if err != nil || len(res.Inbox) != 1 {
		g.disp.release(j)
		if err == nil {
			err = fmt.Errorf("%w: timer commit returned %d inbox entries", store.ErrCorrupt, len(res.Inbox))
		}
		return fmt.Errorf("gateway: enqueue timer event: %w", err)
	}
	if len(g.ownEntries(res.Inbox)) == 0 {
		// Committed before Run's resume bound was read (a deploy while
		// starting): the resume queues it.
		g.disp.release(j)
		return nil
	}
	g.stats.enqueued.Add(1)
	j.entry = res.Inbox[0]
	g.disp.push(laneKey(j.entry.Function, j.entry.Key), j)
	return nil
}

// maxTimerWait bounds each wait of a timer loop: the wall clock is read
// again at least this often, so a step of the clock (NTP after booting with
// a stale clock, a manual change) is noticed within it.
const maxTimerWait = time.Minute

// maxTimerLate is how late a tick may still fire. A tick found further in
// the past (the wall clock stepped forward over it) is skipped rather than
// fired at a time that matches no schedule.
const maxTimerLate = maxTimerWait

// afterFunc waits for d: it returns a channel that delivers once d has
// passed, and a function that releases the wait early.
type afterFunc func(d time.Duration) (<-chan time.Time, func())

func realAfter(d time.Duration) (<-chan time.Time, func()) {
	t := time.NewTimer(d)
	return t.C, func() { t.Stop() }
}

// runSchedule calls fire at each tick of s until ctx is done, on the wall
// clock now, waiting with after. The first tick is first, or when zero the
// schedule's next tick from now; fired (zero: none) is the last tick the
// loops this one replaces fired: no tick up to it fires again (the clock
// may have been set back since).
//
// Waits are at most maxTimerWait and the next tick is computed again from
// the wall clock after each, so a clock step is noticed. A tick fires only
// once now has reached it (not merely when the monotonic timer expired),
// at most maxTimerLate after it (later ones are passed to skipped), and
// only if it is after the last tick fired: a backward step of the clock
// never fires a tick twice. With the real clock, now carries a monotonic
// reading, so an "@every" schedule (t + interval) is measured on the
// monotonic clock and is not affected by steps at all.
func runSchedule(ctx context.Context, s Schedule, first, fired time.Time, now func() time.Time, after afterFunc, fire func(tick time.Time), skipped func(tick, now time.Time)) {
	last := fired // the last tick fired (by the loops this one replaces, at first)
	next := first
	if next.IsZero() {
		next = s.Next(now())
	}
	for {
		if next.IsZero() {
			return
		}
		t := now()
		if !t.Before(next) {
			fired := false
			if t.Sub(next) <= maxTimerLate && (last.IsZero() || next.After(last)) {
				fire(next)
				last, fired = next, true
				// fire may have waited (intake full): ticks due while it
				// did are missed, not reported as a clock jump.
				t = now()
			} else if skipped != nil && (last.IsZero() || next.After(last)) {
				skipped(next, t)
			}
			if n := s.Next(next); fired && n.After(t) {
				// From the tick, not from when its commit ended: no drift.
				// A schedule that counts on the monotonic clock ("@every")
				// keeps counting on it, also from a tick resumed from its
				// record (wall time only): a step of the wall clock then
				// does not hold it back.
				if m := s.Next(t); m != m.Round(0) {
					n = t.Add(n.Sub(t))
				}
				next = n
			} else {
				next = s.Next(t)
			}
		} else if n := s.Next(t); !n.IsZero() && n.Before(next) {
			// The clock stepped back: the tick due first is earlier.
			next = n
		}
		if !last.IsZero() && !next.IsZero() && !next.After(last) {
			next = s.Next(last) // fired already, before the clock stepped back
		}
		if next.IsZero() {
			return
		}
		t = now()
		if !t.Before(next) {
			continue
		}
		c, stop := after(min(next.Sub(t), maxTimerWait))
		select {
		case <-ctx.Done():
			stop()
			return
		case <-c:
		}
	}
}

// Schedule is when a timer trigger fires (trigger.Schedule satisfies it).
type Schedule interface {
	Next(time.Time) time.Time
}
