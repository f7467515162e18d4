package store

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"
)

// Aggregate's bucket cap: a range that holds too many buckets is refused
// before anything is read, and a scan stops at the first bucket past it.
func TestAggregateMaxBuckets(t *testing.T) {
	ctx := context.Background()
	s := openTest(t, Options{Dir: t.TempDir(), Durability: DurabilityNone})

	// Up front: nothing stored, yet a day of 1ms buckets is refused.
	day := int64(24 * 3600 * 1000)
	_, err := s.Aggregate(ctx, AggQuery{Query: Query{From: day, To: 2 * day}, Field: "x", Bucket: time.Millisecond, MaxBuckets: 100000})
	if !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), "86400000 buckets") {
		t.Fatalf("range of 86400000 buckets: %v, want ErrInvalid", err)
	}
	// Within the cap: 1000..2000 touches 10 buckets of 100ms, 1005..2005 11.
	for _, q := range []Query{{From: 1000, To: 2000}, {From: 1005, To: 2005}} {
		if _, err := s.Aggregate(ctx, AggQuery{Query: q, Field: "x", Bucket: 100 * time.Millisecond, MaxBuckets: 11}); err != nil {
			t.Fatalf("%+v in 11 buckets: %v", q, err)
		}
	}
	if _, err := s.Aggregate(ctx, AggQuery{Query: Query{From: 1005, To: 2005}, Field: "x", Bucket: 100 * time.Millisecond, MaxBuckets: 10}); !errors.Is(err, ErrInvalid) {
		t.Fatalf("11 buckets, cap 10: %v", err)
	}

	// While scanning: 3000 records, each in its own 1ms bucket.
	const n = 3000
	for i := 0; i < n; i += 500 {
		var recs []Record
		for j := i; j < i+500; j++ {
			recs = append(recs, Record{Stream: "s", Function: "f", Device: "d", EventTS: day + int64(j), Data: []byte(fmt.Sprintf(`{"x":%d}`, j))})
		}
		if _, err := s.Commit(ctx, &Commit{Records: recs}); err != nil {
			t.Fatal(err)
		}
	}
	for _, q := range []Query{{Stream: "s"}, {From: day}, {To: day + n, Desc: true}} {
		_, err := s.Aggregate(ctx, AggQuery{Query: q, Field: "x", Bucket: time.Millisecond, MaxBuckets: 100})
		if !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), "more than 100 buckets") {
			t.Fatalf("%+v: %v, want ErrInvalid for more than 100 buckets", q, err)
		}
	}
	// Within the cap: exactly 100 buckets, or few wide ones.
	bs, err := s.Aggregate(ctx, AggQuery{Query: Query{From: day, To: day + 100}, Field: "x", Bucket: time.Millisecond, MaxBuckets: 100})
	if err != nil || len(bs) != 100 {
		t.Fatalf("100 buckets: %d, %v", len(bs), err)
	}
	bs, err = s.Aggregate(ctx, AggQuery{Query: Query{Stream: "s"}, Field: "x", Bucket: time.Second, MaxBuckets: 100})
	if err != nil || len(bs) != 3 || bs[0].Count+bs[1].Count+bs[2].Count != n {
		t.Fatalf("1s buckets: %+v, %v", bs, err)
	}
	// No cap: every bucket.
	bs, err = s.Aggregate(ctx, AggQuery{Query: Query{Stream: "s"}, Field: "x", Bucket: time.Millisecond})
	if err != nil || len(bs) != n {
		t.Fatalf("no cap: %d buckets, %v", len(bs), err)
	}
}
