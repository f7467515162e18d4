package sync

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/moongate-edge/moongate/store"
)

// A backlog of records whose size makes each batch full by bytes (the next
// record does not fit in max_bytes) but below 3/4 of max_bytes must not wait
// max_delay before every batch: there is nothing more that could join it.
func TestByteFullBatchDoesNotWaitMaxDelay(t *testing.T) {
	st := openStore(t, "", store.DurabilityNone)
	up := newHTTPUpstream(t)
	// 20 records of about 600 stored bytes: two never fit in 1 KiB.
	c := &store.Commit{}
	for i := 0; i < 20; i++ {
		c.Records = append(c.Records, store.Record{Stream: "s", Function: "f", Device: "d1", EventID: fmt.Sprintf("e%d", i),
			EventTS: time.Now().UnixMilli(), Data: []byte(fmt.Sprintf(`{"n":%d,"pad":"%s"}`, i, strings.Repeat("x", 500))), Targets: []string{"up"}})
	}
	if _, err := st.Commit(context.Background(), c); err != nil {
		t.Fatal(err)
	}
	cfg := fastTarget("up", "http")
	cfg.HTTP = HTTPConfig{URL: up.URL}
	cfg.MaxBytes = 1 << 10
	cfg.MaxDelay = time.Second // documented: a *partial* batch waits this long for more
	start := time.Now()
	startManager(t, st, cfg)
	waitFor(t, 30*time.Second, "20 records", func() bool { return up.col.distinct() == 20 })
	took := time.Since(start)
	t.Logf("20 records in %d requests took %s", up.requests.Load(), took)
	if took > 5*time.Second {
		t.Fatalf("a backlog of 20 records took %s: each batch full by bytes waited max_delay (1s)", took)
	}
}
