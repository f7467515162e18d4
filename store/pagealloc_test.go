package store

import (
	"context"
	"fmt"
	"runtime"
	"strings"
	"testing"
)

// TestListPagesAllocateAboutAPage: a list whose page ends at MaxPageBytes
// (1 MiB) must not read far more than a page into memory. With the
// default limit of 100, the iterators prefetch the values of 100 entries
// at once (a goroutine each), so one request over large entries holds
// ~limit x entry size.
func TestListPagesAllocateAboutAPage(t *testing.T) {
	ctx := context.Background()
	s := openTest(t, Options{GCInterval: -1, Quotas: map[string]Quota{
		SpaceDeadLetters: {MaxBytes: 1 << 30}, SpaceState: {MaxBytes: 1 << 30, Policy: RejectNew},
		SpaceOutbox: {MaxBytes: 1 << 30}, SpaceRecords: {MaxBytes: 1 << 30},
	}})
	const n, size = 60, 700 << 10
	big := `"` + strings.Repeat("x", size) + `"`
	for i := range n {
		c := &Commit{
			Records:    []Record{{Stream: "s", Function: "f", Data: []byte(big), Targets: []string{"cloud"}}},
			State:      []StateChange{{Function: "f", Op: StateSet, Key: fmt.Sprint("k", i), Value: []byte(big)}},
			DeadLetter: &DeadLetter{Function: "f", Event: []byte(big), Error: "boom"},
		}
		if _, err := s.Commit(ctx, c); err != nil {
			t.Fatal(err)
		}
	}
	alloc := func(name string, f func() int) {
		runtime.GC()
		var a, b runtime.MemStats
		runtime.ReadMemStats(&a)
		got := f()
		runtime.ReadMemStats(&b)
		mib := float64(b.TotalAlloc-a.TotalAlloc) / (1 << 20)
		t.Logf("%s: %d entries returned, %.1f MiB allocated", name, got, mib)
		if mib > 16 {
			t.Errorf("%s: a page of %d entries (%.1f MiB) allocated %.1f MiB", name, got, float64(got*size)/(1<<20), mib)
		}
	}
	alloc("ListDeadLetters", func() int {
		dls, err := s.ListDeadLetters(ctx, "", 0, 0) // the API's default: GET /v1/deadletters
		if err != nil {
			t.Fatal(err)
		}
		return len(dls)
	})
	alloc("ListState", func() int {
		kvs, _, err := s.ListState(ctx, "f", "", 0, "") // GET /v1/functions/f/state
		if err != nil {
			t.Fatal(err)
		}
		return len(kvs)
	})
	alloc("OutboxRead max_bytes 1MiB", func() int {
		es, err := s.OutboxRead(ctx, "cloud", 0, 100, 1<<20) // a sync target with max_records 100
		if err != nil {
			t.Fatal(err)
		}
		return len(es)
	})
}
