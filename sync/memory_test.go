package sync

import (
	"context"
	"fmt"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/moongate-edge/moongate/store"
)

// liveHeap is the heap in use after a full collection.
func liveHeap() uint64 {
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return ms.HeapAlloc
}

// TestSlowUpstreamMemoryBounded: a 64 MB backlog drained to an upstream
// that takes 50 ms per request. The sync manager holds one batch (and its
// encoding) at a time, so the live heap stays far below the backlog. The
// bound (12 MiB of growth) includes the store's block cache (4 MiB in the
// low-memory profile), which fills as the backlog is read.
func TestSlowUpstreamMemoryBounded(t *testing.T) {
	if testing.Short() {
		t.Skip("memory measurement (slow)")
	}
	st := openStore(t, "", store.DurabilityNone)
	pad := strings.Repeat("m", 4000)
	const n = 16000
	for i := 0; i < n; {
		c := &store.Commit{}
		for j := 0; j < 25 && i < n; j, i = j+1, i+1 {
			c.Records = append(c.Records, store.Record{Stream: "telemetry", Data: []byte(fmt.Sprintf(`{"n":%d,"pad":%q}`, i, pad)), Targets: []string{"cloud"}})
		}
		if _, err := st.Commit(context.Background(), c); err != nil {
			t.Fatal(err)
		}
	}
	backlog := st.OutboxStats("cloud").Bytes
	up := newHTTPUpstream(t)
	up.slow.Store(int64(50 * time.Millisecond))
	up.setMode("slow")
	up.discard.Store(true)
	base := liveHeap()
	tc := fastTarget("cloud", "http")
	tc.HTTP.URL = up.URL
	tc.MaxRecords = 500
	tc.MaxBytes = 256 << 10
	m, _ := startManager(t, st, tc)
	var peak uint64
	deadline := time.Now().Add(3 * time.Second)
	for time.Now().Before(deadline) {
		peak = max(peak, liveHeap())
		time.Sleep(50 * time.Millisecond)
	}
	s := statusOf(m, "cloud")
	if s.Delivered == 0 || s.Backlog == 0 {
		t.Fatalf("the test needs a slow drain in progress: %+v", s)
	}
	growth := int64(peak) - int64(base)
	t.Logf("backlog %d bytes (%d records); live heap before %d KiB, peak while draining %d KiB (growth %d KiB); delivered %d in 3s",
		backlog, n, base>>10, peak>>10, growth>>10, s.Delivered)
	if limit := int64(12 << 20); growth > limit || backlog < 4*limit {
		t.Fatalf("heap grew by %d bytes, limit %d, backlog %d", growth, limit, backlog)
	}
}
