package gateway

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/moongate-edge/moongate/luavm"
	"github.com/moongate-edge/moongate/store"
)

// cronClock is the fake clock and fake waits of the cron hand-over tests.
type cronClock struct {
	t     *testing.T
	mu    sync.Mutex
	now   time.Time
	waits chan fakeWait
}

func newCronClock(t *testing.T, start time.Time) *cronClock {
	return &cronClock{t: t, now: start, waits: make(chan fakeWait, 10)}
}

func (c *cronClock) clock() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.now }
func (c *cronClock) set(t time.Time)  { c.mu.Lock(); c.now = t; c.mu.Unlock() }
func (c *cronClock) after(d time.Duration) (<-chan time.Time, func()) {
	w := fakeWait{d: d, c: make(chan time.Time, 1)}
	c.waits <- w
	return w.c, func() {}
}
func (c *cronClock) next() fakeWait {
	c.t.Helper()
	select {
	case w := <-c.waits:
		return w
	case <-time.After(10 * time.Second):
		c.t.Fatal("the timer loop asked for no wait")
		return fakeWait{}
	}
}

func redeployTk(t *testing.T, g *Gateway, fp string) {
	t.Helper()
	v := &Function{Name: "tk", Fingerprint: fp, Schedules: g.Lookup("tk").Schedules,
		Spec: luavm.Spec{Source: []byte(`function handle(e) return {trigger = e.trigger, v = "` + fp + `"} end`)}}
	if err := g.SetFunctions(context.Background(), []*Function{v}); err != nil {
		t.Fatal(err)
	}
}

// The 12:01 tick fires; NTP sets the clock back 20 s; the function is
// redeployed twice (same schedule). The first redeploy's loop knows 12:01
// fired (fired), but records its hand-over time as "now" (12:00:40): the
// second redeploy plans from there and fires 12:01 again.
func TestCronTickNotRefiredAfterClockStepBackAndTwoRedeploys(t *testing.T) {
	st, c, g := cronFired1201(t)

	c.set(time.Date(2026, 11, 28, 12, 0, 40, 0, time.UTC)) // NTP: the clock ran 20 s fast
	redeployTk(t, g, "v2")
	c.next() // v2's first wait
	c.set(time.Date(2026, 11, 28, 12, 0, 45, 0, time.UTC))
	redeployTk(t, g, "v3")
	w := c.next() // v3's first wait
	c.set(time.Date(2026, 11, 28, 12, 1, 0, 100e6, time.UTC))
	w.c <- c.clock()
	c.next()
	waitFor(t, 5*time.Second, "the backlog drained", func() bool { return st.InboxLen() == 0 && g.Stats().Backlog == 0 })
	if n := len(allRecords(t, st, "tk")); n != 1 {
		t.Fatalf("the 12:01 tick fired %d times (the clock was set back, then the function redeployed twice)", n)
	}
}

// The function is deployed at 12:00:30 on a clock 40 s fast (really
// 11:59:50), its loop plans 12:01; NTP sets the clock back to 11:59:50 and
// the function is redeployed (same schedule). The 12:00 tick never fired
// (the loop without the redeploy fires it), but the hand-over time of the
// stopped loop (where it started planning, 12:00:30) is taken for a fired
// tick: the new loop skips 12:00.
func TestCronTickBeforeHandOverStartNotSkippedAfterClockStepBack(t *testing.T) {
	st := quietStore(t, store.Options{})
	c := newCronClock(t, time.Date(2026, 11, 28, 12, 0, 30, 0, time.UTC))
	g := timerGateway(t, st, "* * * * *", c.clock, c.after)
	c.next() // waits for 12:01

	c.set(time.Date(2026, 11, 28, 11, 59, 50, 0, time.UTC)) // NTP: the clock ran 40 s fast
	redeployTk(t, g, "v2")
	w := c.next() // v2's first wait
	c.set(time.Date(2026, 11, 28, 12, 0, 0, 100e6, time.UTC))
	w.c <- c.clock()
	c.next()
	waitFor(t, 5*time.Second, "the backlog drained", func() bool { return st.InboxLen() == 0 && g.Stats().Backlog == 0 })
	if n := len(allRecords(t, st, "tk")); n != 1 {
		t.Fatalf("the 12:00 tick fired %d times, want once (it never fired before the clock was set back)", n)
	}
}

// "@every 10s" ticks at 12:00:10; NTP sets the clock back an hour; the
// function is redeployed (same schedule). resumeEvery starts the new loop
// an interval from now ("a last tick in the future means the wall clock
// is behind it"), but the hand-over tick (12:00:10) is taken as the last
// fired one: the timer is silent for the hour the clock was set back.
func TestEveryNotSilentAfterClockStepBackAndRedeploy(t *testing.T) {
	st := quietStore(t, store.Options{})
	c := newCronClock(t, time.Date(2026, 11, 28, 12, 0, 0, 0, time.UTC))
	g := timerGateway(t, st, "@every 10s", c.clock, c.after)
	w := c.next() // waits for 12:00:10
	c.set(time.Date(2026, 11, 28, 12, 0, 10, 0, time.UTC))
	w.c <- c.clock()
	c.next()
	waitFor(t, 5*time.Second, "the 12:00:10 tick's record", func() bool { return len(allRecords(t, st, "tk")) == 1 })

	c.set(time.Date(2026, 11, 28, 11, 0, 15, 0, time.UTC)) // NTP: the clock ran an hour fast
	redeployTk(t, g, "v2")
	w = c.next() // v2's first wait
	c.set(time.Date(2026, 11, 28, 11, 0, 25, 100e6, time.UTC))
	w.c <- c.clock()
	c.next()
	waitFor(t, 5*time.Second, "the backlog drained", func() bool { return st.InboxLen() == 0 && g.Stats().Backlog == 0 })
	if n := len(allRecords(t, st, "tk")); n != 2 {
		t.Fatalf("%d ticks, want 2: the timer did not tick an interval after the redeploy (clock set back an hour)", n)
	}
}

// cronFired1201 starts a "* * * * *" timer at 12:00:30 on a fake clock and
// lets its 12:01 tick fire and commit.
func cronFired1201(t *testing.T) (*store.Store, *cronClock, *Gateway) {
	t.Helper()
	st := quietStore(t, store.Options{})
	c := newCronClock(t, time.Date(2026, 11, 28, 12, 0, 30, 0, time.UTC))
	g := timerGateway(t, st, "* * * * *", c.clock, c.after)
	w := c.next() // waits for 12:01
	c.set(time.Date(2026, 11, 28, 12, 1, 0, 100e6, time.UTC))
	w.c <- c.clock()
	c.next() // fired 12:01, waits for 12:02
	waitFor(t, 5*time.Second, "the 12:01 tick's record", func() bool { return len(allRecords(t, st, "tk")) == 1 })
	return st, c, g
}
