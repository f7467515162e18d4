package gateway

import (
	"context"
	"fmt"
	"strconv"
	"time"

	"github.com/moongate-edge/moongate/gateway/trigger"
	"github.com/moongate-edge/moongate/luavm"
	"github.com/moongate-edge/moongate/store"
)

// startTimers starts one timer loop per function with schedules. It holds
// deployMu, as SetFunctions does: a deployment cannot replace or remove a
// function between the read of the table and the start of its timer.
func (g *Gateway) startTimers() {
	g.deployMu.Lock()
	defer g.deployMu.Unlock()
	for _, f := range g.funcs.Load().byName {
		g.startTimer(f)
	}
}

// startTimer (re)starts f's timer loop; a function without schedules has
// none. f must be the deployed version of its name: a version that was
// replaced or removed meanwhile gets no timer (and the current version's
// timer is left alone).
func (g *Gateway) startTimer(f *Function) {
	g.timersMu.Lock()
	defer g.timersMu.Unlock()
	if g.funcs.Load().byName[f.Name] != f {
		return
	}
	if cancel := g.timers[f.Name]; cancel != nil {
		cancel()
		delete(g.timers, f.Name)
	}
	if len(f.Schedules) == 0 || g.runCtx == nil || g.stopping.Load() {
		return
	}
	ctx, cancel := context.WithCancel(g.runCtx)
	g.timers[f.Name] = cancel
	for _, s := range f.Schedules {
		go g.timerLoop(ctx, f.Name, s)
	}
}

func (g *Gateway) stopTimer(name string) {
	g.timersMu.Lock()
	defer g.timersMu.Unlock()
	if cancel := g.timers[name]; cancel != nil {
		cancel()
		delete(g.timers, name)
	}
}

func (g *Gateway) stopTimers() {
	g.timersMu.Lock()
	defer g.timersMu.Unlock()
	for name, cancel := range g.timers {
		cancel()
		delete(g.timers, name)
	}
}

// TimerStateFunction is the state namespace (store state of this
// "function") where the gateway keeps the last tick of every "@every"
// timer, under the key "<function>/@every <interval>", as Unix
// milliseconds. It is not a valid function name, so it cannot clash with
// one.
const TimerStateFunction = "_timer"

// timerLoop enqueues a timer event at each tick of s. Timer events are
// ordinary inbox entries (lane "timer" of the function): durable, in order,
// bounded by the same admission as MQTT events. Cron ticks missed while the
// gateway was down are not replayed. An "@every" timer keeps its phase
// across restarts and redeployments: each tick is recorded in the same
// write as its event, the next one is due an interval after it, and a tick
// that fell due while the gateway was down fires once at start.
func (g *Gateway) timerLoop(ctx context.Context, function string, s Schedule) {
	every, keep := s.(trigger.Every)
	key := function + "/" + every.String()
	fire := func(tick time.Time) {
		ev := luavm.Event{ID: g.newEventID(), Trigger: "timer", TS: g.opts.Now().UnixMilli()}
		entry := store.InboxEntry{Function: function, Key: "timer", Event: encodeEvent(&ev)}
		var err error
		if keep {
			err = g.enqueueTick(ctx, entry, key, tick)
		} else {
			err = g.enqueue(ctx, []store.InboxEntry{entry})
		}
		if err != nil && ctx.Err() == nil {
			g.log.Warn("timer event not enqueued", "function", function, "err", err)
		}
	}
	var first time.Time
	if keep {
		v, ok, err := g.opts.Store.GetState(ctx, TimerStateFunction, key)
		switch {
		case err != nil:
			if ctx.Err() == nil {
				g.log.Warn("timer: last tick not read; counting from now", "function", function, "err", err)
			}
		case ok:
			if ms, perr := strconv.ParseInt(string(v), 10, 64); perr == nil {
				first = resumeEvery(time.UnixMilli(ms), g.opts.Now(), every)
			}
		}
		if !first.IsZero() && !first.After(g.opts.Now()) {
			fire(first) // fell due while the gateway was down: once
			first = time.Time{}
		}
	}
	runSchedule(ctx, s, first, g.opts.Now, realAfter, fire, func(tick, now time.Time) {
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

// enqueueTick is enqueue for one "@every" timer event: the event and the
// record of its tick (TimerStateFunction) are one atomic write.
func (g *Gateway) enqueueTick(ctx context.Context, entry store.InboxEntry, key string, tick time.Time) error {
	size := int64(len(entry.Event))
	if err := g.disp.admit(ctx, 1, size); err != nil {
		return err
	}
	res, err := g.opts.Store.Commit(context.WithoutCancel(ctx), &store.Commit{
		State: []store.StateChange{{Function: TimerStateFunction, Op: store.StateSet, Key: key,
			Value: strconv.AppendInt(nil, tick.UnixMilli(), 10)}},
		Chain:    func(store.Change) []store.InboxEntry { return []store.InboxEntry{entry} },
		ChainMax: 1,
	})
	if err != nil || len(res.Inbox) != 1 {
		g.disp.release(1, size)
		if err == nil {
			err = fmt.Errorf("%w: timer commit returned %d inbox entries", store.ErrCorrupt, len(res.Inbox))
		}
		return fmt.Errorf("gateway: enqueue timer event: %w", err)
	}
	g.stats.enqueued.Add(1)
	e := res.Inbox[0]
	g.disp.push(laneKey(e.Function, e.Key), &job{entry: e, size: int64(len(e.Event))})
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
// schedule's next tick from now.
//
// Waits are at most maxTimerWait and the next tick is computed again from
// the wall clock after each, so a clock step is noticed. A tick fires only
// once now has reached it (not merely when the monotonic timer expired),
// at most maxTimerLate after it (later ones are passed to skipped), and
// only if it is after the last tick fired: a backward step of the clock
// never fires a tick twice. With the real clock, now carries a monotonic
// reading, so an "@every" schedule (t + interval) is measured on the
// monotonic clock and is not affected by steps at all.
func runSchedule(ctx context.Context, s Schedule, first time.Time, now func() time.Time, after afterFunc, fire func(tick time.Time), skipped func(tick, now time.Time)) {
	var last time.Time // the last tick fired
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
			if t.Sub(next) <= maxTimerLate && (last.IsZero() || next.After(last)) {
				fire(next)
				last = next
				// fire may have waited (intake full): ticks due while it
				// did are missed, not reported as a clock jump.
				t = now()
			} else if skipped != nil && (last.IsZero() || next.After(last)) {
				skipped(next, t)
			}
			next = s.Next(t)
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
