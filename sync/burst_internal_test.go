package sync

import (
	"io"
	"log/slog"
	"testing"
)

// A bandwidth_limit over 2 GiB/s overflowed the limiter's burst on 32-bit
// ARM (int): negative, every wait failed and the worker ended silently.
// Run it with GOARCH=386 (or arm) to see the 32-bit case.
func TestBandwidthBurstFitsInt(t *testing.T) {
	m := &Manager{log: slog.New(slog.NewTextHandler(io.Discard, nil)), opts: Options{Store: openStore(t, "", 0)}}
	w := newWorker(m, TargetConfig{Name: "up", Type: "http", MaxBytes: 1 << 20, BandwidthLimit: 4 << 30}, nil)
	if b := w.limiter.Burst(); b < 1<<20 {
		t.Fatalf("limiter burst %d for bandwidth_limit 4GiB: below one batch", b)
	}
}
