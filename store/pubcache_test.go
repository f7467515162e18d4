package store

import (
	"bytes"
	"context"
	"fmt"
	"math/rand/v2"
	"slices"
	"sync"
	"testing"
)

func TestPubCacheBounds(t *testing.T) {
	var c pubCache
	if _, ok := c.read(1, 10); ok {
		t.Fatal("zero cache claims to cover")
	}
	c.reset(5)
	if ps, ok := c.read(5, 10); !ok || len(ps) != 0 {
		t.Fatalf("empty cache: %v %v", ps, ok)
	}
	if _, ok := c.read(4, 10); ok {
		t.Fatal("covers below its start")
	}
	var add []Publish
	for seq := uint64(5); seq < 5+uint64(pubCacheEntries)+10; seq++ {
		add = append(add, Publish{Seq: seq, Topic: "t", Payload: []byte{1}})
	}
	c.apply(add, nil, 5)
	// Over the entry bound: the oldest ten are left to Badger.
	if _, ok := c.read(14, 1); ok {
		t.Fatal("covers an evicted entry")
	}
	ps, ok := c.read(15, 3)
	if !ok || len(ps) != 3 || ps[0].Seq != 15 || ps[2].Seq != 17 {
		t.Fatalf("read(15, 3) = %v %v", ps, ok)
	}
	// Acknowledged entries are skipped; a head past them moves the start.
	c.apply(nil, []uint64{16}, 5)
	if ps, _ := c.read(15, 2); len(ps) != 2 || ps[1].Seq != 17 {
		t.Fatalf("after ack: %v", ps)
	}
	c.apply(nil, []uint64{15}, 17)
	if _, ok := c.read(16, 1); ok {
		t.Fatal("covers below the head after the front went")
	}
	// Entries below the head (dropped by quota) are let go.
	live := c.live
	c.apply(nil, []uint64{99999}, 20)
	if c.live != live-3 || c.start != 20 {
		t.Fatalf("after the head passed 17-19: live %d (was %d), start %d", c.live, live, c.start)
	}
	// The byte bound.
	c.reset(100)
	big := bytes.Repeat([]byte{'x'}, pubCacheBytes/4)
	c.apply([]Publish{{Seq: 100, Payload: big}, {Seq: 101, Payload: big}, {Seq: 102, Payload: big}, {Seq: 103, Payload: big}, {Seq: 104, Payload: big}}, nil, 100)
	if c.bytes > pubCacheBytes {
		t.Fatalf("%d bytes cached, bound %d", c.bytes, pubCacheBytes)
	}
	if _, ok := c.read(100, 1); ok {
		t.Fatal("covers the entry evicted for size")
	}
	if ps, ok := c.read(104, 10); !ok || len(ps) != 1 {
		t.Fatalf("newest entry: %v %v", ps, ok)
	}
}

// PendingPublishes answers from the cache exactly what Badger holds, through
// random commits, acknowledgements (in and out of order, repeated), drops by
// quota and reopens.
func TestPendingPublishesMatchesDisk(t *testing.T) {
	for _, bounds := range [][2]int{{pubCacheEntries, pubCacheBytes}, {64, 16 << 10}, {1000, 1 << 20}} {
		t.Run(fmt.Sprintf("cache=%d,%d", bounds[0], bounds[1]), func(t *testing.T) {
			defer func(e, b int) { pubCacheEntries, pubCacheBytes = e, b }(pubCacheEntries, pubCacheBytes)
			pubCacheEntries, pubCacheBytes = bounds[0], bounds[1]
			testPendingPublishesMatchesDisk(t)
		})
	}
}

func testPendingPublishesMatchesDisk(t *testing.T) {
	ctx := context.Background()
	rng := rand.New(rand.NewPCG(1, 2))
	s := openTest(t, Options{Quotas: map[string]Quota{SpacePublishes: {MaxBytes: 200 << 10, Policy: DropOldest}}})
	var live []uint64
	fromDisk := func(after uint64, limit int) []Publish {
		ps, err := pending(ctx, s, pPublish, s.counters().Publish.Head, after, limit, decodePublish)
		if err != nil {
			t.Fatal(err)
		}
		return ps
	}
	for step := range 400 {
		switch r := rng.IntN(10); {
		case r < 5:
			var c Commit
			for range 1 + rng.IntN(40) {
				size := rng.IntN(200)
				if rng.IntN(20) == 0 {
					size = 8 << 10
				}
				c.Publishes = append(c.Publishes, Publish{Topic: fmt.Sprint("t/", step), Payload: bytes.Repeat([]byte{byte(step)}, size), QoS: byte(step % 2), Retain: step%3 == 0})
			}
			res, err := s.Commit(ctx, &c)
			if err != nil {
				t.Fatal(err)
			}
			for _, p := range res.Publishes {
				live = append(live, p.Seq)
			}
		case r < 9 && len(live) > 0:
			n := 1 + rng.IntN(min(len(live), 64))
			var acks []uint64
			if rng.IntN(3) == 0 {
				for range n {
					acks = append(acks, live[rng.IntN(len(live))])
				}
			} else {
				acks = slices.Clone(live[:n])
			}
			if err := s.AckPublishes(ctx, acks...); err != nil {
				t.Fatal(err)
			}
			live = slices.DeleteFunc(live, func(q uint64) bool { return slices.Contains(acks, q) })
		case r == 9:
			s = reopen(t, s)
		}
		head := s.counters().Publish.Head
		live = slices.DeleteFunc(live, func(q uint64) bool { return q < head }) // dropped by quota
		after := uint64(0)
		if len(live) > 0 && rng.IntN(2) == 0 {
			after = live[rng.IntN(len(live))]
		}
		limit := 1 + rng.IntN(300)
		got, err := s.PendingPublishes(ctx, after, limit)
		if err != nil {
			t.Fatal(err)
		}
		want := fromDisk(after, limit)
		if len(got) != len(want) {
			t.Fatalf("step %d: %d pending from the store, %d on disk (after %d, limit %d)", step, len(got), len(want), after, limit)
		}
		for i := range got {
			if got[i].Seq != want[i].Seq || got[i].Topic != want[i].Topic || !bytes.Equal(got[i].Payload, want[i].Payload) ||
				got[i].QoS != want[i].QoS || got[i].Retain != want[i].Retain {
				t.Fatalf("step %d: pending[%d] = %+v, on disk %+v", step, i, got[i], want[i])
			}
		}
	}
	if s.pubs.start == 0 {
		t.Fatal("the cache stopped covering")
	}
}

func TestPendingPublishesClosed(t *testing.T) {
	ctx := context.Background()
	s := openTest(t, Options{})
	if _, err := s.Commit(ctx, &Commit{Publishes: []Publish{{Topic: "t", Payload: []byte("p")}}}); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := s.PendingPublishes(ctx, 0, 10); err != ErrClosed {
		t.Fatalf("closed store: %v", err)
	}
}

// TestPubCacheAckInSameBatch: a publish acknowledged in the group-commit
// batch that wrote it is gone. The cache applied the batch's removals
// before its additions, so it kept listing the publish (the publisher
// would send it again and again until the head passed it).
func TestPubCacheAckInSameBatch(t *testing.T) {
	ctx := context.Background()
	s := openTest(t, Options{})
	// An older publish stays pending, so the head does not pass the new one.
	if _, err := s.Commit(ctx, &Commit{Publishes: []Publish{{Topic: "t/old", Payload: []byte("old")}}}); err != nil {
		t.Fatal(err)
	}
	next := s.counters().Publish.Next
	var wg sync.WaitGroup
	holdBatch(t, s, 2, func() {
		wg.Add(2)
		go func() {
			defer wg.Done()
			if _, err := s.Commit(ctx, &Commit{Publishes: []Publish{{Topic: "t/new", Payload: []byte("new")}}}); err != nil {
				t.Error(err)
			}
		}()
		waitQueued(t, s, 1)
		go func() {
			defer wg.Done()
			if err := s.AckPublishes(ctx, next); err != nil {
				t.Error(err)
			}
		}()
	})
	wg.Wait()
	onDisk, err := pending(ctx, s, pPublish, s.counters().Publish.Head, 0, 100, decodePublish)
	if err != nil {
		t.Fatal(err)
	}
	got, err := s.PendingPublishes(ctx, 0, 100)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 1 || len(onDisk) != 1 || got[0].Topic != "t/old" {
		t.Fatalf("PendingPublishes lists %+v, Badger holds %+v", got, onDisk)
	}
}
