package gateway

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/moongate-edge/moongate/luavm"
	"github.com/moongate-edge/moongate/store"
)

// docs/functions.md: "When the clock is set back (NTP correcting a clock
// that ran fast), a tick that fired already does not fire again." The
// 12:01 tick fires; NTP sets the clock back 20 s; the function is then
// redeployed (same schedule). The new loop planned from "now" (the hand-
// over time, 12:01, is after now and was dropped) and fires 12:01 again.
func TestCronTickNotRefiredAfterClockStepBackAndRedeploy(t *testing.T) {
	st := quietStore(t, store.Options{})
	var mu sync.Mutex
	now := time.Date(2026, 11, 28, 12, 0, 30, 0, time.UTC)
	clock := func() time.Time { mu.Lock(); defer mu.Unlock(); return now }
	set := func(t time.Time) { mu.Lock(); now = t; mu.Unlock() }
	waits := make(chan fakeWait, 10)
	after := func(d time.Duration) (<-chan time.Time, func()) {
		w := fakeWait{d: d, c: make(chan time.Time, 1)}
		waits <- w
		return w.c, func() {}
	}
	next := func() fakeWait {
		t.Helper()
		select {
		case w := <-waits:
			return w
		case <-time.After(10 * time.Second):
			t.Fatal("the timer loop asked for no wait")
			return fakeWait{}
		}
	}
	g := timerGateway(t, st, "* * * * *", clock, after)
	w := next() // waits for 12:01
	set(time.Date(2026, 11, 28, 12, 1, 0, 100e6, time.UTC))
	w.c <- clock()
	next() // fired 12:01, waits for 12:02
	waitFor(t, 5*time.Second, "the 12:01 tick's record", func() bool { return len(allRecords(t, st, "tk")) == 1 })

	set(time.Date(2026, 11, 28, 12, 0, 40, 0, time.UTC)) // NTP: the clock ran 20 s fast
	v2 := &Function{Name: "tk", Fingerprint: "v2", Schedules: g.Lookup("tk").Schedules,
		Spec: luavm.Spec{Source: []byte(`function handle(e) return {trigger = e.trigger, v = 2} end`)}}
	if err := g.SetFunctions(context.Background(), []*Function{v2}); err != nil {
		t.Fatal(err)
	}
	w = next() // the new loop's first wait
	set(time.Date(2026, 11, 28, 12, 1, 0, 100e6, time.UTC))
	w.c <- clock()
	next()
	// Let the loop's enqueued event (if any) commit.
	waitFor(t, 5*time.Second, "the backlog drained", func() bool { return st.InboxLen() == 0 && g.Stats().Backlog == 0 })
	if n := len(allRecords(t, st, "tk")); n != 1 {
		t.Fatalf("the 12:01 tick fired %d times (the clock was set back, then the function redeployed)", n)
	}
}
