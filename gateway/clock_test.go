package gateway

import (
	"sync/atomic"
	"testing"
	"time"
)

// TestRecordsStampedClockSynced: records carry whether the system clock was
// synchronized when they were committed (the daemon reads it at start and
// every 30 s); before, nothing set it and every record said false.
func TestRecordsStampedClockSynced(t *testing.T) {
	dataDir, fnDir := t.TempDir(), t.TempDir()
	writeFunction(t, fnDir, "ver", `function handle(e, ctx) return {n = 1} end`, referenceManifest)
	var synced atomic.Bool
	synced.Store(true)
	p := startInProcessWith(t, testConfig(dataDir, fnDir, ""), nil, func(d *Daemon) {
		d.ClockProbe = func() (bool, error) { return synced.Load(), nil }
	})
	dev := connect(t, "tcp://"+p.d.MQTTAddr().String(), "dv", true)
	publish(t, dev, "devices/dv/telemetry", 1, []byte(`{}`))
	st := p.d.Store()
	waitFor(t, 10*time.Second, "the record", func() bool { return len(allRecords(t, st, "ver")) == 1 })
	if r := allRecords(t, st, "ver")[0]; !r.ClockSynced {
		t.Fatalf("record committed with a synchronized clock: ClockSynced %v", r.ClockSynced)
	}
}

// TestKernelClockSynced: the kernel's NTP status can be read here (its
// value depends on the machine: an unsynchronized VM says false).
func TestKernelClockSynced(t *testing.T) {
	ok, err := kernelClockSynced()
	if err != nil {
		t.Fatalf("adjtimex: %v", err)
	}
	t.Logf("kernel says the clock is synchronized: %v", ok)
}
