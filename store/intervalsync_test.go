package store

import (
	"context"
	"testing"
	"time"
)

// TestIntervalSyncDoesNotStrandRecords: with DurabilityInterval the dirty
// flag was set before the batch's counters were published: a sync in
// between noted the old outbox positions durable and cleared the flag, and
// a committed record was not handed out while nothing else was written.
// (The failed-batch path had the same order, before recover.)
func TestIntervalSyncDoesNotStrandRecords(t *testing.T) {
	ctx := context.Background()
	s := openTest(t, Options{Durability: DurabilityInterval, SyncInterval: time.Microsecond, RetentionInterval: time.Hour, GCInterval: -1})
	end := time.Now().Add(5 * time.Second)
	for i := 0; time.Now().Before(end); i++ {
		seqs := enqueue(t, s, "f", 1)
		res, err := s.Commit(ctx, &Commit{InboxSeq: seqs[0], Records: []Record{{Stream: "st", Function: "f", Data: []byte(`{}`), Targets: []string{"up"}}}})
		if err != nil {
			t.Fatal(err)
		}
		_ = res
		deadline := time.Now().Add(time.Second)
		for {
			es, err := s.OutboxRead(ctx, "up", uint64(i), 10, 0)
			if err != nil {
				t.Fatal(err)
			}
			if len(es) == 1 {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("iteration %d: record not handed out 1 s after its commit (no other write): %+v", i, s.OutboxStats("up"))
			}
			time.Sleep(100 * time.Microsecond)
		}
	}
}
