package store

import (
	"context"
	"fmt"
	"testing"
	"time"
)

// The hourly walk of the sender slots went through every slot in one
// committer request, holding up every write meanwhile (256,000 slots of
// 1,000 devices: 176 ms here, far more on a Pi): it walks senderWalkChunk
// slots per request now, writes going in between. The longest wait of a
// write during the pass must be a small part of the pass (it was all of
// it).
func TestSenderSlotWalkDoesNotStallWrites(t *testing.T) {
	ctx := context.Background()
	s := openTest(t, Options{Durability: DurabilityNone, GCInterval: -1, RetentionInterval: -1})
	const senders = 400 // 102,400 slots: 25 chunks
	start := time.Now()
	var es []InboxEntry
	for d := 0; d < senders; d++ {
		for p := 0; p < SenderSlots; p++ {
			f := make([]byte, FingerprintSize)
			copy(f, fmt.Sprint(d, "/", p))
			es = append(es, InboxEntry{Function: "f", Key: "k", Event: []byte("e"), Fingerprint: f, Sender: fmt.Sprint("dev", d), PacketID: uint16(p)})
			if len(es) == 1000 {
				if _, err := s.Enqueue(ctx, es); err != nil {
					t.Fatal(err)
				}
				es = nil
			}
		}
	}
	t.Logf("%d slots written in %v", senders*SenderSlots, time.Since(start))
	done := make(chan struct{})
	var pass time.Duration
	go func() {
		defer close(done)
		st := time.Now()
		n, err := s.RunRetention(ctx)
		pass = time.Since(st)
		t.Logf("retention: %d dropped in %v, %v", n, pass, err)
	}()
	var worst time.Duration
	for {
		select {
		case <-done:
			t.Logf("worst write latency during the retention pass: %v", worst)
			if worst > pass/4 {
				t.Errorf("a write waited %v behind the sender slot walk, of a pass of %v", worst, pass)
			}
			return
		default:
		}
		st := time.Now()
		if _, err := s.Commit(ctx, &Commit{Usage: &Usage{Function: "g", TS: 1, Invocations: 1}}); err != nil {
			t.Fatal(err)
		}
		worst = max(worst, time.Since(st))
	}
}

// The walk goes on over several requests: one retention run still forgets
// every expired slot, past the first chunk too.
func TestSenderSlotWalkCoversEverySlot(t *testing.T) {
	ctx := context.Background()
	s := openTest(t, Options{Durability: DurabilityNone, GCInterval: -1, RetentionInterval: -1, SenderSlotTTL: time.Millisecond, DedupeWindow: 4})
	const senders = 3 * senderWalkChunk / SenderSlots // three chunks of slots
	var es []InboxEntry
	for d := 0; d < senders; d++ {
		for p := 0; p < SenderSlots; p++ {
			f := make([]byte, FingerprintSize)
			copy(f, fmt.Sprint(d, "/", p))
			es = append(es, InboxEntry{Function: "f", Key: "k", Event: []byte("e"), Fingerprint: f, Sender: fmt.Sprint("dev", d), PacketID: uint16(p)})
		}
		if _, err := s.Enqueue(ctx, es); err != nil {
			t.Fatal(err)
		}
		es = es[:0]
	}
	// Push the last ones out of the dedupe window (4 entries), which
	// would recognise them without their slots.
	for i := range 8 {
		f := make([]byte, FingerprintSize)
		copy(f, fmt.Sprint("other/", i))
		if _, err := s.Enqueue(ctx, []InboxEntry{{Function: "f", Key: "k", Event: []byte("e"), Fingerprint: f, Sender: "other", PacketID: uint16(i)}}); err != nil {
			t.Fatal(err)
		}
	}
	time.Sleep(5 * time.Millisecond) // not a wait for readiness: the slots' write time must be more than the TTL in the past
	if _, err := s.RunRetention(ctx); err != nil {
		t.Fatal(err)
	}
	for d := 0; d < senders; d++ {
		for _, p := range []int{0, SenderSlots - 1} {
			f := make([]byte, FingerprintSize)
			copy(f, fmt.Sprint(d, "/", p))
			if s.Redelivered(ctx, fmt.Sprint("dev", d), uint16(p), f) {
				t.Fatalf("sender dev%d slot %d still recognised after the retention run", d, p)
			}
		}
	}
	if s.senderMore.Load() {
		t.Fatal("the walk is still under way after the run")
	}
}
