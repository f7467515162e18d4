package gateway

import (
	"testing"
	"time"
)

// docs/functions.md: "When the clock is set back (NTP correcting a clock
// that ran fast), a tick that fired already does not fire again." The
// 12:01 tick fires; NTP sets the clock back 20 s; the function is then
// redeployed (same schedule). The new loop planned from "now" (the hand-
// over time, 12:01, is after now and was dropped) and fires 12:01 again.
func TestCronTickNotRefiredAfterClockStepBackAndRedeploy(t *testing.T) {
	st, c, g := cronFired1201(t)

	c.set(time.Date(2026, 11, 28, 12, 0, 40, 0, time.UTC)) // NTP: the clock ran 20 s fast
	redeployTk(t, g, "v2")
	w := c.next() // the new loop's first wait
	c.set(time.Date(2026, 11, 28, 12, 1, 0, 100e6, time.UTC))
	w.c <- c.clock()
	c.next()
	// Let the loop's enqueued event (if any) commit.
	waitFor(t, 5*time.Second, "the backlog drained", func() bool { return st.InboxLen() == 0 && g.Stats().Backlog == 0 })
	if n := len(allRecords(t, st, "tk")); n != 1 {
		t.Fatalf("the 12:01 tick fired %d times (the clock was set back, then the function redeployed)", n)
	}
}
