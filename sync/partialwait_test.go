package sync

import (
	"context"
	"fmt"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/moongate-edge/moongate/store"
)

// countingStore counts the stored bytes OutboxRead hands out.
type countingStore struct {
	*store.Store
	reads, bytes atomic.Int64
}

func (c *countingStore) OutboxRead(ctx context.Context, target string, after uint64, limit, maxBytes int) ([]store.OutboxEntry, error) {
	ents, err := c.Store.OutboxRead(ctx, target, after, limit, maxBytes)
	c.reads.Add(1)
	for i := range ents {
		c.bytes.Add(int64(ents[i].Size))
	}
	return ents, err
}

// While a partial batch waits for max_delay, the worker must not read and
// decode the whole waiting batch from the store again at every poll (every
// 20 ms): with a 400 KB partial batch and max_delay 2s that is 100 reads,
// 40 MB decoded, for 400 KB sent.
func TestPartialBatchNotReReadEveryPoll(t *testing.T) {
	st := &countingStore{Store: openStore(t, "", store.DurabilityNone)}
	up := newHTTPUpstream(t)
	c := &store.Commit{}
	for i := 0; i < 40; i++ {
		c.Records = append(c.Records, store.Record{Stream: "s", Function: "f", EventID: fmt.Sprintf("e%d", i),
			Data: []byte(fmt.Sprintf(`{"n":%d,"pad":"%s"}`, i, strings.Repeat("x", 10<<10))), Targets: []string{"up"}})
	}
	if _, err := st.Commit(context.Background(), c); err != nil {
		t.Fatal(err)
	}
	backlog := st.OutboxStats("up").Bytes
	cfg := fastTarget("up", "http")
	cfg.HTTP = HTTPConfig{URL: up.URL}
	cfg.MaxDelay = 2 * time.Second // 400 KB < 3/4 of max_bytes (1 MiB): a partial batch
	cfg.MaxRecords = 500
	m, err := New(Options{Store: st, GatewayID: "gw", Logger: quietLogger(), Targets: []TargetConfig{cfg}}) // default 20ms poll
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); _ = m.Run(ctx) }()
	defer func() { cancel(); <-done }()
	waitFor(t, 10*time.Second, "40 records", func() bool { return up.col.distinct() == 40 })
	t.Logf("backlog %d bytes; OutboxRead calls %d, bytes read %d", backlog, st.reads.Load(), st.bytes.Load())
	if got := st.bytes.Load(); got > 5*backlog {
		t.Fatalf("read %d bytes (%d reads) from the store to send a %d-byte partial batch", got, st.reads.Load(), backlog)
	}
}
