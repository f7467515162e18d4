package store

import (
	"context"
	"sync"
	"testing"
)

// TestSetChainedInOrder: the committer hands the chained entries of every
// commit to the func of SetChained in sequence order, whatever the order
// in which concurrent callers get their results back; entries of a commit
// with ChainQueued are not handed over; nil stops the calls.
func TestSetChainedInOrder(t *testing.T) {
	ctx := context.Background()
	s := openTest(t, Options{})
	var mu sync.Mutex
	var seqs []uint64
	s.SetChained(func(es []InboxEntry) {
		mu.Lock()
		defer mu.Unlock()
		for _, e := range es {
			seqs = append(seqs, e.Seq)
		}
	})
	chain := func(Change) []InboxEntry { return []InboxEntry{{Function: "down", Key: "k", Event: []byte(`{}`)}} }
	var wg sync.WaitGroup
	const writers, each = 8, 50
	for range writers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range each {
				if _, err := s.Commit(ctx, &Commit{Records: []Record{{Stream: "s", Data: []byte(`1`)}}, Chain: chain, ChainMax: 1}); err != nil {
					t.Error(err)
					return
				}
			}
		}()
	}
	wg.Wait()
	res, err := s.Commit(ctx, &Commit{Records: []Record{{Stream: "s", Data: []byte(`1`)}}, Chain: chain, ChainMax: 1, ChainQueued: true})
	if err != nil || len(res.Inbox) != 1 {
		t.Fatalf("ChainQueued commit: %+v %v", res, err)
	}
	s.SetChained(nil)
	if _, err := s.Commit(ctx, &Commit{Records: []Record{{Stream: "s", Data: []byte(`1`)}}, Chain: chain, ChainMax: 1}); err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(seqs) != writers*each {
		t.Fatalf("%d entries handed over, want %d (not the ChainQueued one, nor after SetChained(nil))", len(seqs), writers*each)
	}
	for i := 1; i < len(seqs); i++ {
		if seqs[i] <= seqs[i-1] {
			t.Fatalf("entry %d handed over after %d", seqs[i], seqs[i-1])
		}
	}
}
