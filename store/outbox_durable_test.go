package store

import (
	"context"
	"testing"
	"time"
)

// TestOutboxReadDurableOnly: with DurabilityInterval, OutboxRead hands out
// only entries already synced: a record a power loss could take back is
// not sent upstream (its id would be reused by the next record, which an
// upstream deduplicating by id, JetStream's Nats-Msg-Id, would drop).
func TestOutboxReadDurableOnly(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	s := openTest(t, Options{Dir: dir, Durability: DurabilityInterval, SyncInterval: time.Hour})
	if _, err := s.Commit(ctx, &Commit{Records: []Record{{Stream: "s", Data: []byte(`{}`), Targets: []string{"up"}}}}); err != nil {
		t.Fatal(err)
	}
	if es, err := s.OutboxRead(ctx, "up", 0, 10, 0); err != nil || len(es) != 0 {
		t.Fatalf("before any sync: %d entries, %v; want none", len(es), err)
	}
	if st := s.OutboxStats("up"); st.Backlog != 1 {
		t.Fatalf("backlog %d, want 1 (the entry is there, only not handed out)", st.Backlog)
	}
	if err := s.Close(); err != nil { // syncs
		t.Fatal(err)
	}
	s = openTest(t, Options{Dir: dir, Durability: DurabilityInterval, SyncInterval: 10 * time.Millisecond})
	if es, err := s.OutboxRead(ctx, "up", 0, 10, 0); err != nil || len(es) != 1 {
		t.Fatalf("after a sync: %d entries, %v; want 1", len(es), err)
	}
	// A running store hands out a new entry once its interval sync ran.
	if _, err := s.Commit(ctx, &Commit{Records: []Record{{Stream: "s", Data: []byte(`{}`), Targets: []string{"up"}}}}); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		es, err := s.OutboxRead(ctx, "up", 0, 10, 0)
		if err != nil {
			t.Fatal(err)
		}
		if len(es) == 2 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d entries handed out 10 s after the commit, want 2", len(es))
		}
		time.Sleep(5 * time.Millisecond) // the next interval sync
	}
}
