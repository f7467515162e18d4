package gateway

import (
	"context"
	"time"

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

// timerLoop enqueues a timer event at each tick of s. Ticks missed while the
// gateway was down are not replayed. Timer events are ordinary inbox
// entries (lane "timer" of the function): durable, in order, bounded by the
// same admission as MQTT events.
func (g *Gateway) timerLoop(ctx context.Context, function string, s Schedule) {
	runSchedule(ctx, s, g.opts.Now, realAfter, func(tick time.Time) {
		ev := luavm.Event{ID: g.newEventID(), Trigger: "timer", TS: g.opts.Now().UnixMilli()}
		entry := store.InboxEntry{Function: function, Key: "timer", Event: encodeEvent(&ev)}
		if err := g.enqueue(ctx, []store.InboxEntry{entry}); err != nil && ctx.Err() == nil {
			g.log.Warn("timer event not enqueued", "function", function, "err", err)
		}
	}, func(tick, now time.Time) {
		g.log.Warn("timer tick skipped: the wall clock jumped past it", "function", function, "tick", tick, "now", now)
	})
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
// clock now, waiting with after.
//
// Waits are at most maxTimerWait and the next tick is computed again from
// the wall clock after each, so a clock step is noticed. A tick fires only
// once now has reached it (not merely when the monotonic timer expired),
// at most maxTimerLate after it (later ones are passed to skipped), and
// only if it is after the last tick fired: a backward step of the clock
// never fires a tick twice. With the real clock, now carries a monotonic
// reading, so an "@every" schedule (t + interval) is measured on the
// monotonic clock and is not affected by steps at all.
func runSchedule(ctx context.Context, s Schedule, now func() time.Time, after afterFunc, fire func(tick time.Time), skipped func(tick, now time.Time)) {
	var last time.Time // the last tick fired
	next := s.Next(now())
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
