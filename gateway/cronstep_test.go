package gateway

import (
	"testing"
	"time"

	"github.com/moongate-edge/moongate/store"
)

// docs/functions.md: "When the clock is set back (NTP correcting a clock
// that ran fast), a tick that fired already does not fire again." The
// 12:01 tick fires; NTP sets the clock back 20 s; the function is then
// redeployed (same schedule). The new loop planned from "now" (the hand-
// over time, 12:01, is after now and was dropped) and fires 12:01 again.
func TestCronTickNotRefiredAfterClockStepBackAndRedeploy(t *testing.T) {
	st := quietStore(t, store.Options{})
	c := newCronClock(t, time.Date(2026, 11, 28, 12, 0, 30, 0, time.UTC))
	g := timerGateway(t, st, "* * * * *", c.clock, c.after)
	w := c.next() // waits for 12:01
	c.set(time.Date(2026, 11, 28, 12, 1, 0, 100e6, time.UTC))
	w.c <- c.clock()
	c.next() // fired 12:01, waits for 12:02
	waitFor(t, 5*time.Second, "the 12:01 tick's record", func() bool { return len(allRecords(t, st, "tk")) == 1 })

	c.set(time.Date(2026, 11, 28, 12, 0, 40, 0, time.UTC)) // NTP: the clock ran 20 s fast
	redeployTk(t, g, "v2")
	w = c.next() // the new loop's first wait
	c.set(time.Date(2026, 11, 28, 12, 1, 0, 100e6, time.UTC))
	w.c <- c.clock()
	c.next()
	// Let the loop's enqueued event (if any) commit.
	waitFor(t, 5*time.Second, "the backlog drained", func() bool { return st.InboxLen() == 0 && g.Stats().Backlog == 0 })
	if n := len(allRecords(t, st, "tk")); n != 1 {
		t.Fatalf("the 12:01 tick fired %d times (the clock was set back, then the function redeployed)", n)
	}
}
