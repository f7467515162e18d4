package gateway

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/moongate-edge/moongate/gateway/trigger"
	"github.com/moongate-edge/moongate/luavm"
	"github.com/moongate-edge/moongate/store"
)

// TestCronTickDueDuringRedeployFires: a cron tick that falls due while
// its function is being redeployed (the old loop stopped before the tick,
// the new one started after it) fires, once. The new loop planned from
// "now", past the tick: the old version did not fire it and the new one
// skipped it, although it was only 200 ms late (docs: "A tick at most a
// minute late still fires").
func TestCronTickDueDuringRedeployFires(t *testing.T) {
	st := quietStore(t, store.Options{})
	var mu sync.Mutex
	now := time.Date(2026, 11, 28, 12, 0, 30, 0, time.UTC)
	clock := func() time.Time { mu.Lock(); defer mu.Unlock(); return now }
	waits := make(chan time.Duration, 10)
	calls := 0
	after := func(d time.Duration) (<-chan time.Time, func()) {
		mu.Lock()
		calls++
		first := calls == 1
		mu.Unlock()
		waits <- d
		return make(chan time.Time), func() {
			if first {
				// The old loop is stopped by the redeploy: the redeploy
				// (store write of the prune, pre-warm, ...) ends just after
				// 12:01:00.
				mu.Lock()
				now = time.Date(2026, 11, 28, 12, 1, 0, 200e6, time.UTC)
				mu.Unlock()
			}
		}
	}
	g := timerGateway(t, st, "* * * * *", clock, after)
	select {
	case d := <-waits:
		if d != 30*time.Second {
			t.Fatalf("first wait %v, want 30s (to the 12:01 tick)", d)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the timer loop did not start")
	}
	s := g.Lookup("tk").Schedules
	v2 := &Function{Name: "tk", Fingerprint: "v2", Schedules: s,
		Spec: luavm.Spec{Source: []byte(`function handle(e) return {trigger = e.trigger, v = 2} end`)}}
	if err := g.SetFunctions(context.Background(), []*Function{v2}); err != nil {
		t.Fatal(err)
	}
	select {
	case d := <-waits:
		// Fired the 12:01 tick (before it waits), then waits for 12:02.
		if d != 59800*time.Millisecond {
			t.Errorf("the new loop's first wait: %v, want 59.8s (to 12:02)", d)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the new timer loop did not start")
	}
	// The event is in the inbox before the loop waits; its record follows.
	waitFor(t, 5*time.Second, "the 12:01 tick, due 200 ms before the redeployed loop started", func() bool {
		return len(allRecords(t, st, "tk")) > 0
	})
	if n := len(allRecords(t, st, "tk")); n != 1 {
		t.Fatalf("%d records, want one: the 12:01 tick once", n)
	}
}

// TestCronTickDueJustBeforeRedeployFires: the 12:01 tick is due, but the
// old loop's timer has not been delivered yet (its goroutine not run, or
// select picked ctx.Done over the ready timer) when a redeploy stops it
// 1 ms after 12:01. The hand-over took the stop time, so the new loop
// started from 12:02 and neither version fired 12:01; it now takes over
// from the last tick the old loop enqueued, or from its start.
func TestCronTickDueJustBeforeRedeployFires(t *testing.T) {
	st := quietStore(t, store.Options{})
	var mu sync.Mutex
	now := time.Date(2026, 11, 28, 12, 0, 30, 0, time.UTC)
	clock := func() time.Time { mu.Lock(); defer mu.Unlock(); return now }
	waits := make(chan time.Duration, 10)
	after := func(d time.Duration) (<-chan time.Time, func()) {
		waits <- d
		return make(chan time.Time), func() {}
	}
	g := timerGateway(t, st, "* * * * *", clock, after)
	select {
	case <-waits: // the old loop waits for 12:01
	case <-time.After(10 * time.Second):
		t.Fatal("the timer loop did not start")
	}
	// 12:01 is reached; the old loop's timer is not delivered yet.
	mu.Lock()
	now = time.Date(2026, 11, 28, 12, 1, 0, 1e6, time.UTC)
	mu.Unlock()
	s := g.Lookup("tk").Schedules
	v2 := &Function{Name: "tk", Fingerprint: "v2", Schedules: s,
		Spec: luavm.Spec{Source: []byte(`function handle(e) return {trigger = e.trigger, v = 2} end`)}}
	if err := g.SetFunctions(context.Background(), []*Function{v2}); err != nil {
		t.Fatal(err)
	}
	select {
	case <-waits: // the new loop waits
	case <-time.After(10 * time.Second):
		t.Fatal("the new timer loop did not start")
	}
	waitFor(t, 5*time.Second, "the 12:01 tick", func() bool { return len(allRecords(t, st, "tk")) > 0 })
	if n := len(allRecords(t, st, "tk")); n != 1 {
		t.Fatalf("%d records, want one: the 12:01 tick, due 1 ms before the redeploy, fired by neither version", n)
	}
}

// TestCronScheduleChangeDoesNotFireTickBeforeDeploy: the hand-over of a
// redeploy fired the new version's ticks after the old loop's start: a
// changed schedule ("0 * * * *" -> "45 12 * * *" at 12:45:20) fired 12:45,
// due 20 s before the version existed (a fresh deploy does not). Only a
// schedule the old version also had takes over its unfired ticks.
func TestCronScheduleChangeDoesNotFireTickBeforeDeploy(t *testing.T) {
	st := quietStore(t, store.Options{})
	var mu sync.Mutex
	now := time.Date(2026, 11, 28, 12, 30, 0, 0, time.UTC)
	clock := func() time.Time { mu.Lock(); defer mu.Unlock(); return now }
	waits := make(chan time.Duration, 10)
	after := func(d time.Duration) (<-chan time.Time, func()) {
		waits <- d
		return make(chan time.Time), func() {}
	}
	g := timerGateway(t, st, "0 * * * *", clock, after)
	select {
	case <-waits: // v1 waits for 13:00
	case <-time.After(10 * time.Second):
		t.Fatal("the timer loop did not start")
	}
	mu.Lock()
	now = time.Date(2026, 11, 28, 12, 45, 20, 0, time.UTC)
	mu.Unlock()
	s, err := trigger.ParseSchedule("45 12 * * *")
	if err != nil {
		t.Fatal(err)
	}
	v2 := &Function{Name: "tk", Fingerprint: "v2", Schedules: []Schedule{s},
		Spec: luavm.Spec{Source: []byte(`function handle(e) return {trigger = e.trigger, v = 2} end`)}}
	if err := g.SetFunctions(context.Background(), []*Function{v2}); err != nil {
		t.Fatal(err)
	}
	select {
	case <-waits: // v2's loop waits: its first tick was fired or skipped before
	case <-time.After(10 * time.Second):
		t.Fatal("the new timer loop did not start")
	}
	if n := g.Stats().Enqueued; n != 0 {
		t.Fatalf("%d timer events enqueued: v2 fired its 12:45 tick, due 20 s before it was deployed (v1 had no tick then)", n)
	}
}
