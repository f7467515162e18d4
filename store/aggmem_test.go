package store

import (
	"context"
	"fmt"
	"runtime"
	"testing"
	"time"

	badger "github.com/dgraph-io/badger/v4"
)

// TestAggregateBoundsChunksOfManyCombinations: an aggregate (walkIndex
// with no limit) fills every (stream, function, device) combination's
// first chunk with 64 keys before it hands out the first record, so its
// live memory is 64 keys per combination whatever it returns.
func TestAggregateBoundsChunksOfManyCombinations(t *testing.T) {
	ctx := context.Background()
	s := openTest(t, Options{Durability: DurabilityNone, GCInterval: -1, RetentionInterval: -1,
		Quotas: map[string]Quota{SpaceRecords: {MaxBytes: 1 << 30}}})
	const devices, per = 2000, 64
	start := time.Now()
	for i := 0; i < per; i++ {
		c := &Commit{}
		for d := 0; d < devices; d++ {
			c.Records = append(c.Records, Record{Stream: "telemetry", Function: "ingest", Device: fmt.Sprintf("sensor-%08d", d),
				EventTS: 1_700_000_000_000 + int64(i)*1000, Data: []byte(`{"t":1}`)})
			if len(c.Records) == 500 {
				if _, err := s.Commit(ctx, c); err != nil {
					t.Fatal(err)
				}
				c = &Commit{}
			}
		}
		if len(c.Records) > 0 {
			if _, err := s.Commit(ctx, c); err != nil {
				t.Fatal(err)
			}
		}
	}
	t.Logf("%d records in %v", devices*per, time.Since(start))
	live := func() uint64 {
		runtime.GC()
		var m runtime.MemStats
		runtime.ReadMemStats(&m)
		return m.HeapAlloc
	}
	base := live()
	var first uint64
	q := Query{Stream: "telemetry"}
	err := s.view(ctx, func(txn *badger.Txn) error {
		return s.walkIndex(ctx, txn, &q, 0, func(_, _ uint64, _ *Record) (bool, error) {
			first = live()
			return false, nil
		})
	})
	if err != nil {
		t.Fatal(err)
	}
	grew := float64(int64(first)-int64(base)) / (1 << 20)
	t.Logf("live heap at the first record of an aggregate over %d combinations: +%.1f MiB", devices, grew)
	if grew > 4 {
		t.Errorf("an aggregate over %d combinations holds %.1f MiB before its first record", devices, grew)
	}
}
