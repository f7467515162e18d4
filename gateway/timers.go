package gateway

import (
	"context"
	"time"

	"github.com/moongate-edge/moongate/luavm"
	"github.com/moongate-edge/moongate/store"
)

// startTimers starts one timer loop per function with schedules.
func (g *Gateway) startTimers() {
	for _, f := range g.funcs.Load().byName {
		g.startTimer(f)
	}
}

// startTimer (re)starts f's timer loop; a function without schedules has none.
func (g *Gateway) startTimer(f *Function) {
	g.timersMu.Lock()
	defer g.timersMu.Unlock()
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
	for {
		now := g.opts.Now()
		next := s.Next(now)
		if next.IsZero() {
			return
		}
		t := time.NewTimer(next.Sub(now))
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C:
		}
		ev := luavm.Event{ID: g.newEventID(), Trigger: "timer", TS: g.opts.Now().UnixMilli()}
		entry := store.InboxEntry{Function: function, Key: "timer", Event: encodeEvent(&ev)}
		if err := g.enqueue(ctx, []store.InboxEntry{entry}); err != nil && ctx.Err() == nil {
			g.log.Warn("timer event not enqueued", "function", function, "err", err)
		}
	}
}

// Schedule is when a timer trigger fires (trigger.Schedule satisfies it).
type Schedule interface {
	Next(time.Time) time.Time
}
