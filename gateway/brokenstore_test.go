package gateway

import (
	"errors"
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	"github.com/moongate-edge/moongate/store"
)

// A store that broke (ErrCorrupt: a failed commit's state could not be
// reloaded, or an interval sync failed) stops the daemon by itself, with
// that error, so that its supervisor restarts it; Stopping is closed then
// (cmd/moongate's serve bounds the stop from there, as for a signal).
func TestDaemonStopsOnBrokenStore(t *testing.T) {
	var broken atomic.Bool
	p := startInProcessWith(t, testConfig(t.TempDir(), t.TempDir(), ""), nil, func(d *Daemon) {
		d.storeCheck = 10 * time.Millisecond
		health := d.store.Health
		d.storeHealth = func() error {
			if broken.Load() {
				return fmt.Errorf("%w: state not reloaded (test)", store.ErrCorrupt)
			}
			return health()
		}
	})
	select {
	case <-p.d.Stopping():
		t.Fatal("Stopping closed while the daemon runs")
	default:
	}
	broken.Store(true)
	select {
	case err := <-p.done:
		if !errors.Is(err, store.ErrCorrupt) {
			t.Fatalf("Run returned %v, want the store's ErrCorrupt", err)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("the daemon did not stop 20 s after its store broke")
	}
	select {
	case <-p.d.Stopping():
	default:
		t.Fatal("Stopping not closed after the daemon stopped by itself")
	}
	p.cancel()
	p.cancel = nil // stopped already
}

// Stopping is closed when the daemon is asked to stop.
func TestDaemonStoppingOnCancel(t *testing.T) {
	p := startInProcess(t, testConfig(t.TempDir(), t.TempDir(), ""))
	p.stop(t)
	select {
	case <-p.d.Stopping():
	default:
		t.Fatal("Stopping not closed after Run returned")
	}
}
