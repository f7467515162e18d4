package store

import (
	"bytes"
	"context"
	"testing"
	"time"
)

// A commit whose Chain returns entries just under the value threshold
// (kept inline in the LSM tree) is estimated as if each were a value-log
// pointer: the estimate is ~30x short, the transaction overflows Badger's
// limit, and the whole group commit fails with ErrTxnTooBig (not a
// permanent ErrTooLarge), marking the store unhealthy and failing every
// writer batched with it.
// TestChainEstimateCoversInlineEntries: chained entries were all sized as
// value-log pointers (33 bytes), but one under the value threshold is
// inline (~1 KiB): 700 of them overflowed Badger's transaction ("Txn is too
// big", not permanent: retried for ever, and Health reported a failing
// disk). They are sized from what they carry now (at most what is left of
// half a transaction), and the committer refuses more than was reserved
// (ErrTooLarge, permanent).
func TestChainEstimateCoversInlineEntries(t *testing.T) {
	ctx := context.Background()
	s := openTest(t, Options{RetentionInterval: time.Hour})
	seqs := enqueue(t, s, "src", 1)
	const n = 700
	ev := bytes.Repeat([]byte("x"), int(s.valueThreshold)-100) // inline: under the threshold
	c := &Commit{
		InboxSeq: seqs[0],
		Records:  []Record{{Stream: "s", Function: "src", Data: []byte(`{}`)}},
		ChainMax: n,
		Chain: func(ch Change) []InboxEntry {
			if ch.Record == nil {
				return nil
			}
			out := make([]InboxEntry, n)
			for i := range out {
				out[i] = InboxEntry{Function: "follower", Key: "k", Event: ev}
			}
			return out
		},
	}
	_, err := s.Commit(ctx, c)
	if err != nil && !IsPermanent(err) {
		t.Errorf("Commit: %v (IsPermanent false: the gateway retries it for ever)", err)
	}
	if h := s.Health(); h != nil {
		t.Errorf("Health after one oversized commit: %v", h)
	}
}

// TestChainEstimateDoesNotFailBatchedEnqueue: the same short estimate made
// an ordinary Enqueue batched with such a commit fail: the pre-flush check
// believed both fit in one transaction.
func TestChainEstimateDoesNotFailBatchedEnqueue(t *testing.T) {
	ctx := context.Background()
	s := openTest(t, Options{RetentionInterval: time.Hour})
	seqs := enqueue(t, s, "src", 1)
	started, block := make(chan struct{}), make(chan struct{})
	hold := make(chan error, 1)
	go func() {
		hold <- s.submit(ctx, &request{est: 64, fn: func(*batch) error { close(started); <-block; return nil }})
	}()
	<-started
	// An Enqueue of about 270 KB (fits alone, estimated right).
	big := bytes.Repeat([]byte("e"), int(s.valueThreshold)-100)
	var es []InboxEntry
	for i := 0; i < 280; i++ {
		es = append(es, InboxEntry{Function: "f", Key: "k", Event: big})
	}
	enq := make(chan error, 1)
	go func() { _, err := s.Enqueue(ctx, es); enq <- err }()
	waitQueued(t, s, 1)
	const n = 420 // about 400 KB of chained entries, estimated at about 14 KB
	c := &Commit{
		InboxSeq: seqs[0],
		Records:  []Record{{Stream: "s", Function: "src", Data: []byte(`{}`)}},
		ChainMax: n,
		Chain: func(ch Change) []InboxEntry {
			if ch.Record == nil {
				return nil
			}
			out := make([]InboxEntry, n)
			for i := range out {
				out[i] = InboxEntry{Function: "follower", Key: "k", Event: big}
			}
			return out
		},
	}
	com := make(chan error, 1)
	go func() { _, err := s.Commit(ctx, c); com <- err }()
	waitQueued(t, s, 2)
	close(block)
	if err := <-hold; err != nil {
		t.Fatal(err)
	}
	if err := <-enq; err != nil {
		t.Errorf("Enqueue batched with the chaining commit: %v", err)
	}
	// Over half a transaction (the most one write may take): refused
	// cleanly, for good, without failing the batch.
	if err := <-com; err != nil && !IsPermanent(err) {
		t.Errorf("chaining commit: %v (not permanent)", err)
	}
}
