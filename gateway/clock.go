package gateway

import (
	"context"
	"time"
)

// clockCheckInterval is how often the daemon reads whether the system
// clock is synchronized.
const clockCheckInterval = 30 * time.Second

// clockWatch keeps the store's clock-synced flag (stamped into every
// record committed, store.Record.ClockSynced) equal to what probe says: a
// Pi without a real-time clock boots with a wrong time until NTP sets it,
// and its records of that time say so. A probe that fails (no such status
// on this system) leaves the flag as it is: false.
type clockWatch struct {
	d      *Daemon
	probe  func() (bool, error)
	known  bool // a reading was applied
	synced bool // the last one
}

// read applies the probe's answer; false when it cannot be known.
func (c *clockWatch) read() bool {
	synced, err := c.probe()
	if err != nil {
		c.d.log.Warn("clock synchronization status unknown; records are stamped clock_synced=false", "err", err)
		return false
	}
	if c.known && synced == c.synced {
		return true
	}
	c.d.store.SetClockSynced(synced)
	if synced {
		c.d.log.Info("system clock synchronized: records are stamped clock_synced=true")
	} else {
		c.d.log.Warn("system clock not synchronized (no NTP yet?): records are stamped clock_synced=false")
	}
	c.known, c.synced = true, synced
	return true
}

// run reads the probe every clockCheckInterval until ctx ends.
func (c *clockWatch) run(ctx context.Context) { every(ctx, clockCheckInterval, c.read) }

// every calls f every interval until ctx ends or f returns false.
func every(ctx context.Context, interval time.Duration, f func() bool) {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			if !f() {
				return
			}
		}
	}
}
