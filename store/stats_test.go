package store

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// The committer's time counters: what the writers waited is within their
// calls, Badger's commit within the committer's busy time, and each batch's
// commit within the wait of the writes it carried.
func TestStatsCommitTimes(t *testing.T) {
	s := openTest(t, Options{GatewayID: "gw", Durability: DurabilityAlways})
	before := s.Stats()
	start := time.Now()
	var called atomic.Int64 // summed duration of the Enqueue calls
	var wg sync.WaitGroup
	for w := 0; w < 8; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < 25; i++ {
				t0 := time.Now()
				if _, err := s.Enqueue(context.Background(), []InboxEntry{{Function: "f", Key: fmt.Sprint(w), Event: []byte(`{}`)}}); err != nil {
					t.Error(err)
					return
				}
				called.Add(int64(time.Since(t0)))
			}
		}()
	}
	wg.Wait()
	elapsed := time.Since(start)
	after := s.Stats()
	writes := after.Writes - before.Writes
	busy := after.CommitBusy - before.CommitBusy
	txn := after.TxnCommitTime - before.TxnCommitTime
	wait := after.WriteWait - before.WriteWait
	t.Logf("%d writes in %d batches: committer busy %v of %v, in Badger's commit %v, writes waited %v (calls took %v)",
		writes, after.Batches-before.Batches, busy, elapsed, txn, wait, time.Duration(called.Load()))
	if writes != 200 {
		t.Fatalf("%d writes committed, want 200", writes)
	}
	if busy <= 0 || busy > elapsed {
		t.Errorf("committer busy %v, want in (0, %v]", busy, elapsed)
	}
	if txn <= 0 || txn > busy {
		t.Errorf("time in Badger's commit %v, want in (0, %v]", txn, busy)
	}
	if wait < txn || wait > time.Duration(called.Load()) {
		t.Errorf("writes waited %v, want between the commits' %v and the calls' %v", wait, txn, time.Duration(called.Load()))
	}
}
