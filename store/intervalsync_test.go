package store

import (
	"context"
	"errors"
	"testing"
	"time"
)

// TestIntervalSyncAfterFailedBatchDoesNotStrandRecords: with
// DurabilityInterval, a batch whose first part was flushed before a later
// request failed marked the store dirty before recover replaced the
// counters: a sync in between noted the old outbox positions durable and
// cleared the flag, and the committed record was never handed out while
// nothing else was written.
func TestIntervalSyncAfterFailedBatchDoesNotStrandRecords(t *testing.T) {
	ctx := context.Background()
	s := openTest(t, Options{Durability: DurabilityInterval, SyncInterval: 2 * time.Millisecond, RetentionInterval: time.Hour})
	seqs := enqueue(t, s, "f", 1)

	started, block := make(chan struct{}), make(chan struct{})
	hold := make(chan error, 1)
	go func() {
		hold <- s.submit(ctx, &request{est: 64, fn: func(*batch) error { close(started); <-block; return nil }})
	}()
	<-started
	com := make(chan error, 1)
	go func() {
		_, err := s.Commit(ctx, &Commit{InboxSeq: seqs[0], Records: []Record{{Stream: "st", Function: "f", Data: []byte(`{}`), Targets: []string{"up"}}}})
		com <- err
	}()
	waitQueued(t, s, 1)
	s.maxTxnSize = 2048 // the next request does not fit with the commit: the commit is flushed first
	boom := make(chan error, 1)
	go func() {
		boom <- s.submit(ctx, &request{est: s.maxTxnSize / 2, fn: func(*batch) error { return fatal(errors.New("boom")) }})
	}()
	waitQueued(t, s, 2)
	// While the committer reloads after the failure, let one interval sync run.
	recoverFault = func() error {
		before := s.syncs.Load()
		deadline := time.Now().Add(5 * time.Second)
		for s.syncs.Load() == before && time.Now().Before(deadline) {
			time.Sleep(time.Millisecond)
		}
		return nil
	}
	t.Cleanup(func() { recoverFault = nil })
	close(block)
	<-hold
	if err := <-com; err != nil {
		t.Fatalf("commit (flushed before the failure): %v", err)
	}
	if err := <-boom; err == nil {
		t.Fatal("failing request succeeded")
	}
	recoverFault = nil
	// Nothing else is written: the record must still go out after a sync.
	deadline := time.Now().Add(2 * time.Second)
	for {
		es, err := s.OutboxRead(ctx, "up", 0, 10, 0)
		if err != nil {
			t.Fatal(err)
		}
		if len(es) == 1 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("OutboxRead: %d entries 2 s (1000 sync intervals) after the commit; stats %+v, syncs %d", len(es), s.OutboxStats("up"), s.syncs.Load())
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// TestIntervalSyncDoesNotStrandRecords: the same on the success path: the
// dirty flag was set before the batch's counters were published.
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
