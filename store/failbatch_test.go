package store

import (
	"bytes"
	"context"
	"errors"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// A batch split into two transactions whose second part fails: the writers
// the first part made durable are told so (not "commit failed"). Before, an
// Enqueue committed that way was reported failed, its fingerprint never
// reached the dedupe window, and the message, sent again by its device,
// ran twice.
func TestFailedBatchKeepsItsCommittedPart(t *testing.T) {
	ctx := context.Background()
	s := openTest(t, Options{RetentionInterval: time.Hour})
	started, block := make(chan struct{}), make(chan struct{})
	hold := make(chan error, 1)
	go func() {
		hold <- s.submit(ctx, &request{est: 64, fn: func(*batch) error { close(started); <-block; return nil }})
	}()
	<-started // the committer is held: the next requests form one batch
	// Small transactions: the failing request does not fit with the
	// Enqueue, so the Enqueue's part is committed first.
	s.maxTxnSize = 2048
	fp := bytes.Repeat([]byte{7}, FingerprintSize)
	enq := make(chan error, 1)
	go func() {
		_, err := s.Enqueue(ctx, []InboxEntry{{Function: "f", Key: "k", Event: []byte("e"), Fingerprint: fp}})
		enq <- err
	}()
	waitQueued(t, s, 1)
	boom := make(chan error, 1)
	go func() {
		boom <- s.submit(ctx, &request{est: s.maxTxnSize / 2, fn: func(*batch) error { return fatal(errors.New("boom")) }})
	}()
	waitQueued(t, s, 2)
	close(block)
	if err := <-hold; err != nil {
		t.Fatal(err)
	}
	if err := <-enq; err != nil {
		t.Fatalf("Enqueue made durable before the failure: %v", err)
	}
	if err := <-boom; err == nil {
		t.Fatal("the failing request succeeded")
	}
	if !s.Redelivered(ctx, "", 0, fp) {
		t.Error("the committed message's fingerprint is not in the dedupe window")
	}
	if es, err := s.InboxPending(ctx, 0, 10); err != nil || len(es) != 1 {
		t.Fatalf("inbox: %d entries, %v", len(es), err)
	}
	// The store goes on.
	if _, err := s.Enqueue(ctx, []InboxEntry{{Function: "f", Key: "k", Event: []byte("e2")}}); err != nil {
		t.Fatal(err)
	}
}

// When the state cannot be reloaded after a failed batch, the store
// refuses every write (ErrCorrupt: restart) rather than go on from memory
// that may hold the failed requests' changes (inbox entries marked
// consumed that are not); reads still work, and a reopen recovers.
func TestFailedReloadRefusesWrites(t *testing.T) {
	ctx := context.Background()
	s := openTest(t, Options{RetentionInterval: time.Hour})
	seqs, err := s.Enqueue(ctx, []InboxEntry{{Function: "f", Key: "k", Event: []byte("e")}})
	if err != nil {
		t.Fatal(err)
	}
	recoverFault = func() error { return errors.New("injected read error") }
	t.Cleanup(func() { recoverFault = nil })
	if err := s.submit(ctx, &request{est: 64, fn: func(*batch) error { return fatal(errors.New("boom")) }}); err == nil {
		t.Fatal("the failing request succeeded")
	}
	recoverFault = nil
	if _, err := s.Commit(ctx, &Commit{InboxSeq: seqs[0]}); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("commit after a failed reload: %v, want ErrCorrupt", err)
	}
	if _, err := s.Enqueue(ctx, []InboxEntry{{Function: "f", Event: []byte("x")}}); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("enqueue after a failed reload: %v, want ErrCorrupt", err)
	}
	if es, err := s.InboxPending(ctx, 0, 10); err != nil || len(es) != 1 {
		t.Fatalf("reads: %d entries, %v", len(es), err)
	}
	s = reopen(t, s)
	if _, err := s.Commit(ctx, &Commit{InboxSeq: seqs[0]}); err != nil {
		t.Fatalf("commit after reopening: %v", err)
	}
}

// TestHealth: the store says why it does not take writes: a failed group
// commit (until one succeeds), a disk below its reserve, a state it could
// not reload (until reopened).
func TestHealth(t *testing.T) {
	ctx := context.Background()
	var free atomic.Uint64
	free.Store(1 << 40)
	s := openTest(t, Options{RetentionInterval: time.Hour, DiskCheckInterval: time.Nanosecond,
		FreeSpace: func(string) (uint64, error) { return free.Load(), nil }})
	if err := s.Health(); err != nil {
		t.Fatalf("fresh store: %v", err)
	}
	if err := s.submit(ctx, &request{est: 64, fn: func(*batch) error { return fatal(errors.New("input/output error")) }}); err == nil {
		t.Fatal("the failing request succeeded")
	}
	if err := s.Health(); err == nil || !strings.Contains(err.Error(), "input/output error") {
		t.Fatalf("after a failed commit: %v", err)
	}
	if _, err := s.Enqueue(ctx, []InboxEntry{{Function: "f", Event: []byte("e")}}); err != nil {
		t.Fatal(err)
	}
	if err := s.Health(); err != nil {
		t.Fatalf("after a commit that succeeded: %v", err)
	}
	free.Store(1 << 20) // below the reserve
	if _, err := s.Enqueue(ctx, []InboxEntry{{Function: "f", Event: []byte("e")}}); !errors.Is(err, ErrStoreFull) {
		t.Fatalf("enqueue below the reserve: %v", err)
	}
	if err := s.Health(); !errors.Is(err, ErrStoreFull) {
		t.Fatalf("below the reserve: %v", err)
	}
	free.Store(1 << 40)
	recoverFault = func() error { return errors.New("injected read error") }
	t.Cleanup(func() { recoverFault = nil })
	_ = s.submit(ctx, &request{est: 64, fn: func(*batch) error { return fatal(errors.New("boom")) }})
	recoverFault = nil
	if err := s.Health(); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("after a failed reload: %v, want ErrCorrupt", err)
	}
}
