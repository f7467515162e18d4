package store

import (
	"context"
	"errors"
	"strconv"
	"testing"
	"time"
)

func TestReadCacheBound(t *testing.T) {
	c := newReadCache(4 << 10)
	for i := range 1000 {
		c.put([]byte("s\x00f\x00k"+strconv.Itoa(i)), []byte(strconv.Itoa(i)), true)
		if c.bytes > c.max {
			t.Fatalf("after %d puts: %d bytes cached, bound %d", i+1, c.bytes, c.max)
		}
	}
	var sum int64
	for k, v := range c.m {
		sum += int64(len(k) + len(v.val) + cacheEntryOverhead)
	}
	if sum != c.bytes {
		t.Fatalf("accounted %d bytes, entries hold %d", c.bytes, sum)
	}
	// The newest entry survives the eviction it caused.
	if v, ok := c.get([]byte("s\x00f\x00k999")); !ok || string(v.val) != "999" {
		t.Fatalf("newest entry: %q %v", v.val, ok)
	}
	// A value too big to keep replaces a cached one by nothing.
	k := []byte("s\x00f\x00k999")
	c.put(k, make([]byte, maxCachedValue+1), true)
	if _, ok := c.get(k); ok {
		t.Fatal("an oversized value is cached")
	}
	c.reset()
	if len(c.m) != 0 || c.bytes != 0 {
		t.Fatalf("after reset: %d entries, %d bytes", len(c.m), c.bytes)
	}
}

// A batch that fails after an earlier request of it wrote state must not
// leave that write in the committer's read cache: the next increment reads
// what is on disk.
func TestReadCacheFailedBatch(t *testing.T) {
	s := openTest(t, Options{Dir: t.TempDir(), GCInterval: -1})
	ctx := context.Background()
	if err := s.PutState(ctx, "f", "n", []byte("1")); err != nil {
		t.Fatal(err)
	}
	// Warm the cache with the durable value.
	if _, err := s.Commit(ctx, &Commit{State: []StateChange{{Function: "f", Op: StateIncr, Key: "n", Delta: 1}}}); err != nil {
		t.Fatal(err)
	}
	// Hold the committer so that the next two requests form one batch.
	hold, held := make(chan struct{}), make(chan struct{})
	blocked := make(chan error, 1)
	go func() {
		blocked <- s.submit(ctx, &request{fn: func(*batch) error { close(held); <-hold; return nil }})
	}()
	<-held
	errA, errB := make(chan error, 1), make(chan error, 1)
	go func() {
		errA <- s.submit(ctx, &request{est: 64, fn: func(b *batch) error {
			b.set(stateKey("f", "n"), []byte("100"))
			return nil
		}})
	}()
	waitQueued(t, s, 1)
	boom := errors.New("boom")
	go func() { errB <- s.submit(ctx, &request{fn: func(*batch) error { return fatal(boom) }}) }()
	waitQueued(t, s, 2)
	close(hold)
	if err := <-blocked; err != nil {
		t.Fatal(err)
	}
	if err := <-errA; err == nil {
		t.Fatal("a request of the failed batch succeeded")
	}
	if err := <-errB; !errors.Is(err, boom) {
		t.Fatalf("failing request: %v", err)
	}
	if _, err := s.Commit(ctx, &Commit{State: []StateChange{{Function: "f", Op: StateIncr, Key: "n", Delta: 1}}}); err != nil {
		t.Fatal(err)
	}
	v, _, err := s.GetState(ctx, "f", "n")
	if err != nil {
		t.Fatal(err)
	}
	if string(v) != "3" {
		t.Fatalf("state after the failed batch and an increment = %s, want 3", v)
	}
}

// waitQueued waits until n requests wait for the committer.
func waitQueued(t *testing.T, s *Store, n int) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for len(s.reqCh) < n {
		if time.Now().After(deadline) {
			t.Fatalf("%d requests queued, want %d", len(s.reqCh), n)
		}
		time.Sleep(time.Millisecond)
	}
}
