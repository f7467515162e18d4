package store

import (
	"context"
	"errors"
	"sync"
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

// A failed interval sync breaks the store (ErrCorrupt: the daemon
// restarts) instead of being retried: after a failed sync the kernel may
// have dropped the pages it could not write, and a retry that succeeds
// would note outbox positions durable whose records a power loss would
// take back (here: the retry, made to succeed, handed the record out).
func TestIntervalFailedSyncBreaksStore(t *testing.T) {
	ctx := context.Background()
	s := openTest(t, Options{Durability: DurabilityInterval, SyncInterval: time.Millisecond, RetentionInterval: time.Hour, GCInterval: -1})
	failed := make(chan struct{})
	var once sync.Once
	syncHook = func(err error) error {
		fail := false
		once.Do(func() { fail = true; close(failed) })
		if fail {
			return errors.New("EIO from the disk")
		}
		return err
	}
	defer func() { syncHook = nil }()
	seqs := enqueue(t, s, "f", 1)
	if _, err := s.Commit(ctx, &Commit{InboxSeq: seqs[0], Records: []Record{{Stream: "st", Function: "f", Data: []byte(`{}`), Targets: []string{"up"}}}}); err != nil {
		t.Fatal(err)
	}
	<-failed
	for deadline := time.Now().Add(5 * time.Second); !errors.Is(s.Health(), ErrCorrupt); time.Sleep(time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("Health 5 s after a failed sync: %v, want ErrCorrupt", s.Health())
		}
	}
	// Whatever the sync loop would still do, the record is not handed out:
	// nothing noted it durable.
	if _, err := s.Enqueue(ctx, []InboxEntry{{Function: "f", Event: []byte(`{}`)}}); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("Enqueue after a failed sync: %v, want ErrCorrupt", err)
	}
	if es, err := s.OutboxRead(ctx, "up", 0, 10, 0); err != nil || len(es) != 0 {
		t.Fatalf("OutboxRead after a failed sync: %d entries, %v; want none", len(es), err)
	}
}
