package store

import (
	"context"
	"errors"
	"math"
	"strings"
	"sync"
	"testing"
)

func TestSizeWindow(t *testing.T) {
	var w sizeWindow
	if _, ok := w.get(1); ok {
		t.Fatal("zero window holds an entry")
	}
	for seq := uint64(10); seq < 20; seq++ {
		w.put(seq, int(seq)*3)
	}
	if n, ok := w.get(15); !ok || n != 45 {
		t.Fatalf("get(15) = %d %v", n, ok)
	}
	if _, ok := w.get(9); ok {
		t.Fatal("get below the window")
	}
	if _, ok := w.get(20); ok {
		t.Fatal("get past the window")
	}
	// A gap starts again.
	w.put(30, 7)
	if _, ok := w.get(15); ok {
		t.Fatal("entry kept across a gap")
	}
	if n, ok := w.get(30); !ok || n != 7 {
		t.Fatalf("get(30) = %d %v", n, ok)
	}
	// Full: the older half is forgotten, the newest entries stay.
	w.reset()
	last := uint64(100 + sizeWindowLen + 10)
	for seq := uint64(100); seq <= last; seq++ {
		w.put(seq, int(seq%1000))
	}
	if len(w.sizes) > sizeWindowLen {
		t.Fatalf("window grew to %d", len(w.sizes))
	}
	if n, ok := w.get(last); !ok || n != int64(last%1000) {
		t.Fatalf("newest entry = %d %v", n, ok)
	}
	if _, ok := w.get(100); ok {
		t.Fatal("oldest entry kept past the bound")
	}
	// forget drops consumed entries; the others stay readable.
	w.forget(last - 5)
	if _, ok := w.get(last - 6); ok {
		t.Fatal("entry below the head kept")
	}
	if n, ok := w.get(last - 5); !ok || n != int64((last-5)%1000) {
		t.Fatalf("entry at the head = %d %v", n, ok)
	}
	w.forget(last + 1)
	if _, ok := w.get(last); ok || len(w.sizes) != 0 {
		t.Fatal("forget past the end kept entries")
	}
}

// A consumed entry is accounted with the same size whether it comes from the
// committer's window or, after a reopen, from disk; and an entry committed
// concurrently several times is consumed once.
func TestInboxAccountingWithoutReadBack(t *testing.T) {
	ctx := context.Background()
	var es []InboxEntry
	for i := range 40 {
		// Distinct sizes, all under the value threshold (sizes read back
		// from the value log are estimates).
		es = append(es, InboxEntry{Function: "f", Key: "k", Event: []byte(strings.Repeat("x", 1+i*23))})
	}
	// After committing the first half: window path, and read path.
	var bytes [2]int64
	var stores [2]*Store
	for i := range stores {
		s := openTest(t, Options{})
		seqs, err := s.Enqueue(ctx, es)
		if err != nil {
			t.Fatal(err)
		}
		if i == 1 {
			s = reopen(t, s)
		}
		for _, q := range seqs[:20] {
			if _, err := s.Commit(ctx, &Commit{InboxSeq: q}); err != nil {
				t.Fatal(err)
			}
		}
		bytes[i], stores[i] = s.counters().Inbox.Bytes, s
	}
	if bytes[0] != bytes[1] || bytes[0] <= 0 {
		t.Fatalf("inbox bytes left: %d from the window, %d from disk", bytes[0], bytes[1])
	}
	s := stores[0]
	var wg sync.WaitGroup
	var mu sync.Mutex
	won := map[uint64]int{}
	for range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for q := uint64(21); q <= 40; q++ {
				_, err := s.Commit(ctx, &Commit{InboxSeq: q})
				switch {
				case err == nil:
					mu.Lock()
					won[q]++
					mu.Unlock()
				case !errors.Is(err, ErrAlreadyConsumed):
					t.Error(err)
				}
			}
		}()
	}
	wg.Wait()
	for q := uint64(21); q <= 40; q++ {
		if won[q] != 1 {
			t.Fatalf("entry %d consumed %d times", q, won[q])
		}
	}
	if c := s.counters().Inbox; c.Count != 0 || c.Bytes != 0 || c.Head != c.Next {
		t.Fatalf("inbox after consuming everything = %+v", c)
	}
}

func TestSizeWindowRemoved(t *testing.T) {
	var w sizeWindow
	for seq := uint64(1); seq <= 4; seq++ {
		w.put(seq, 10)
	}
	w.removed(2)
	w.removed(99) // outside: ignored
	if n, ok := w.get(2); !ok || n != sizeRemoved {
		t.Fatalf("get(2) after removed = %d %v", n, ok)
	}
	if n, ok := w.get(3); !ok || n != 10 {
		t.Fatalf("get(3) = %d %v", n, ok)
	}
	// A size that would read as the mark is clamped below it.
	if huge := uint64(sizeRemoved) + 7; huge <= math.MaxInt {
		w.put(5, int(huge))
		if n, _ := w.get(5); n == sizeRemoved {
			t.Fatal("a huge size reads as removed")
		}
	}
}

// Acknowledged local publishes are accounted with the same sizes whether
// they come from the committer's window or, after a reopen, from disk; an
// acknowledgement repeated (in one call, in concurrent calls) removes the
// entry once.
func TestPublishAccountingWithoutReadBack(t *testing.T) {
	ctx := context.Background()
	var bytes [2]int64
	var stores [2]*Store
	var seqs []uint64
	for i := range stores {
		s := openTest(t, Options{})
		seqs = seqs[:0]
		for j := range 40 {
			res, err := s.Commit(ctx, &Commit{Publishes: []Publish{{Topic: "t", Payload: []byte(strings.Repeat("p", 1+j*23)), QoS: 1}}})
			if err != nil {
				t.Fatal(err)
			}
			seqs = append(seqs, res.Publishes[0].Seq)
		}
		if i == 1 {
			s = reopen(t, s)
		}
		// Out of order, with a repeat.
		if err := s.AckPublishes(ctx, seqs[3], seqs[0], seqs[3]); err != nil {
			t.Fatal(err)
		}
		if err := s.AckPublishes(ctx, seqs[1:20]...); err != nil {
			t.Fatal(err)
		}
		bytes[i], stores[i] = s.counters().Publish.Bytes, s
		if c := s.counters().Publish; c.Count != 20 || c.Head != seqs[20] {
			t.Fatalf("store %d: publishes after acking 20 = %+v", i, c)
		}
	}
	if bytes[0] != bytes[1] || bytes[0] <= 0 {
		t.Fatalf("publish bytes left: %d from the window, %d from disk", bytes[0], bytes[1])
	}
	s := stores[0]
	var wg sync.WaitGroup
	for range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for _, q := range seqs[20:] {
				if err := s.AckPublishes(ctx, q); err != nil {
					t.Error(err)
				}
			}
		}()
	}
	wg.Wait()
	if c := s.counters().Publish; c.Count != 0 || c.Bytes != 0 || c.Head != c.Next {
		t.Fatalf("publishes after acking everything = %+v", c)
	}
	if ps, err := s.PendingPublishes(ctx, 0, 100); err != nil || len(ps) != 0 {
		t.Fatalf("pending after acking everything: %d %v", len(ps), err)
	}
}

// Commit.AckPublishes takes publishes off the outbox in the same write as
// the commit's other outputs (a dead letter here), skips sequences not
// waiting, and a refused commit acknowledges nothing.
func TestCommitAcknowledgesPublishes(t *testing.T) {
	ctx := context.Background()
	s := openTest(t, Options{})
	res, err := s.Commit(ctx, &Commit{Publishes: []Publish{
		{Topic: "a", Payload: []byte("1"), QoS: 1}, {Topic: "b", Payload: []byte("22"), QoS: 1}, {Topic: "c", Payload: []byte("333"), QoS: 1},
	}})
	if err != nil {
		t.Fatal(err)
	}
	seqs := []uint64{res.Publishes[0].Seq, res.Publishes[1].Seq, res.Publishes[2].Seq}
	// Refused (invalid dead-letter function): nothing acknowledged.
	if _, err := s.Commit(ctx, &Commit{DeadLetter: &DeadLetter{Function: "", Event: []byte("e")}, AckPublishes: seqs[:1]}); !errors.Is(err, ErrInvalid) {
		t.Fatalf("refused commit: %v", err)
	}
	if _, err := s.Commit(ctx, &Commit{AckPublishes: make([]uint64, maxAckPublishes+1)}); !errors.Is(err, ErrInvalid) {
		t.Fatalf("too many acknowledgements: %v", err)
	}
	if p, err := s.PendingPublishes(ctx, 0, 10); err != nil || len(p) != 3 {
		t.Fatalf("pending after refused commits: %d %v", len(p), err)
	}
	// The second publish with a dead letter; a sequence never written and
	// the same one twice are skipped.
	if _, err := s.Commit(ctx, &Commit{DeadLetter: &DeadLetter{Function: "_publish", Key: "b", Event: []byte("e"), Error: "x"},
		AckPublishes: []uint64{seqs[1], seqs[1], seqs[2] + 100}}); err != nil {
		t.Fatal(err)
	}
	var bytes int64
	for i, reopened := range []bool{false, true} {
		if reopened {
			s = reopen(t, s) // counters recomputed from the keys on disk
		}
		p, err := s.PendingPublishes(ctx, 0, 10)
		if err != nil || len(p) != 2 || p[0].Seq != seqs[0] || p[1].Seq != seqs[2] {
			t.Fatalf("pass %d: pending %+v %v", i, p, err)
		}
		c := s.counters().Publish
		if c.Count != 2 || c.Bytes <= 0 || (reopened && c.Bytes != bytes) {
			t.Fatalf("pass %d: counters %+v (bytes before reopening %d)", i, c, bytes)
		}
		bytes = c.Bytes
		if dl, err := s.ListDeadLetters(ctx, "_publish", 0, 10); err != nil || len(dl) != 1 {
			t.Fatalf("pass %d: dead letters %d %v", i, len(dl), err)
		}
	}
}
