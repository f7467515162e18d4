package store

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"testing"
	"time"
)

func fp(s string) []byte {
	h := sha256.Sum256([]byte(s))
	return h[:FingerprintSize]
}

func TestRedeliveryWindow(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	st, err := Open(ctx, Options{Dir: dir, DedupeWindow: 4})
	if err != nil {
		t.Fatal(err)
	}
	if st.Redelivered(ctx, "", 0, fp("m0")) {
		t.Fatal("unknown fingerprint reported")
	}
	for i := range 3 {
		if _, err := st.Enqueue(ctx, []InboxEntry{{Function: "f", Key: "k", Event: []byte("e"), Fingerprint: fp(fmt.Sprint("m", i))}}); err != nil {
			t.Fatal(err)
		}
	}
	// An entry without a fingerprint takes no slot's meaning away.
	if _, err := st.Enqueue(ctx, []InboxEntry{{Function: "f", Key: "k", Event: []byte("e")}}); err != nil {
		t.Fatal(err)
	}
	for i := range 3 {
		if !st.Redelivered(ctx, "", 0, fp(fmt.Sprint("m", i))) {
			t.Errorf("m%d not remembered", i)
		}
	}
	// A wrong-sized fingerprint is refused and nothing is written.
	if _, err := st.Enqueue(ctx, []InboxEntry{{Function: "f", Event: []byte("e"), Fingerprint: []byte("short")}}); !errors.Is(err, ErrInvalid) {
		t.Errorf("short fingerprint: %v", err)
	}
	if err := st.Close(); err != nil {
		t.Fatal(err)
	}

	// Reopened: the window survives; two more entries push out the oldest.
	st, err = Open(ctx, Options{Dir: dir, DedupeWindow: 4})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	if !st.Redelivered(ctx, "", 0, fp("m0")) || !st.Redelivered(ctx, "", 0, fp("m2")) {
		t.Fatal("window lost on reopen")
	}
	for i := 3; i < 5; i++ {
		if _, err := st.Enqueue(ctx, []InboxEntry{{Function: "f", Event: []byte("e"), Fingerprint: fp(fmt.Sprint("m", i))}}); err != nil {
			t.Fatal(err)
		}
	}
	// The window is the last 4 inbox entries: m2, the plain one, m3, m4.
	for _, m := range []string{"m0", "m1"} {
		if st.Redelivered(ctx, "", 0, fp(m)) {
			t.Errorf("%s still remembered beyond the window", m)
		}
	}
	for _, m := range []string{"m2", "m3", "m4"} {
		if !st.Redelivered(ctx, "", 0, fp(m)) {
			t.Errorf("%s forgotten", m)
		}
	}
}

// TestEnqueueReplaysDeadLetterAtomically: an entry that replays a dead
// letter deletes it in the same write; a dead letter that is gone fails the
// whole Enqueue and queues nothing.
func TestEnqueueReplaysDeadLetterAtomically(t *testing.T) {
	ctx := context.Background()
	s := openTest(t, Options{})
	if _, err := s.Commit(ctx, &Commit{DeadLetter: &DeadLetter{Function: "f", Key: "k", Event: []byte("ev"), Error: "boom"}}); err != nil {
		t.Fatal(err)
	}
	dls, err := s.ListDeadLetters(ctx, "", 0, 10)
	if err != nil || len(dls) != 1 {
		t.Fatalf("dead letters %v %v", dls, err)
	}
	seq := dls[0].Seq
	if _, err := s.Enqueue(ctx, []InboxEntry{{Function: "f", Key: "k", Event: []byte("ev"), DeadLetter: seq}}); err != nil {
		t.Fatal(err)
	}
	if dls, _ := s.ListDeadLetters(ctx, "", 0, 10); len(dls) != 0 {
		t.Fatalf("dead letter still there after its replay: %v", dls)
	}
	if n := s.InboxLen(); n != 1 {
		t.Fatalf("inbox %d, want 1", n)
	}
	// Replaying it again, or a dead letter never seen, changes nothing.
	for _, d := range []uint64{seq, seq + 100} {
		_, err := s.Enqueue(ctx, []InboxEntry{{Function: "f", Event: []byte("x")}, {Function: "f", Event: []byte("ev"), DeadLetter: d}})
		if !errors.Is(err, ErrNotFound) {
			t.Fatalf("replay of dead letter %d: %v, want ErrNotFound", d, err)
		}
		if n := s.InboxLen(); n != 1 {
			t.Fatalf("inbox %d after a refused replay, want 1", n)
		}
	}
	// After a restart the counters agree.
	s = reopen(t, s)
	if n := s.InboxLen(); n != 1 || s.Stats().Spaces[SpaceDeadLetters].Count != 0 {
		t.Fatalf("after reopen: inbox %d, dead letters %+v", n, s.Stats().Spaces[SpaceDeadLetters])
	}
}

// TestSenderSlots: a message is recognised as redelivered by its sender's
// slot (packet id mod SenderSlots) long after the global window forgot it,
// across a reopen; a different sender, packet id or content is not taken
// for it; a later message in the same slot replaces it; slots not written
// for SenderSlotTTL are forgotten by the retention pass.
func TestSenderSlots(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	st, err := Open(ctx, Options{Dir: dir, DedupeWindow: 4})
	if err != nil {
		t.Fatal(err)
	}
	enqueue := func(st *Store, sender string, pid uint16, f []byte) {
		t.Helper()
		if _, err := st.Enqueue(ctx, []InboxEntry{{Function: "f", Key: sender, Event: []byte("e"), Fingerprint: f, Sender: sender, PacketID: pid}}); err != nil {
			t.Fatal(err)
		}
	}
	enqueue(st, "dev1", 7, fp("a"))
	for i := range 20 { // far more than the window of 4
		enqueue(st, "other", uint16(i+1), fp(fmt.Sprint("o", i)))
	}
	if !st.Redelivered(ctx, "dev1", 7, fp("a")) {
		t.Fatal("dev1's message forgotten once the window moved on")
	}
	for _, c := range []struct {
		sender string
		pid    uint16
		f      []byte
	}{{"dev1", 8, fp("a")}, {"dev2", 7, fp("a")}, {"dev1", 7, fp("b")}, {"other", 1, fp("a")}} {
		if st.Redelivered(ctx, c.sender, c.pid, c.f) {
			t.Errorf("%s/%d taken for a redelivery", c.sender, c.pid)
		}
	}
	if err := st.Close(); err != nil {
		t.Fatal(err)
	}
	st, err = Open(ctx, Options{Dir: dir, DedupeWindow: 4})
	if err != nil {
		t.Fatal(err)
	}
	if !st.Redelivered(ctx, "dev1", 7, fp("a")) {
		t.Fatal("dev1's slot lost on reopen")
	}
	// Packet id 7+256 is dev1's next message in the same slot.
	enqueue(st, "dev1", 7+SenderSlots, fp("c"))
	if st.Redelivered(ctx, "dev1", 7, fp("a")) || !st.Redelivered(ctx, "dev1", 7+SenderSlots, fp("c")) {
		t.Fatal("slot not replaced by the sender's next message in it")
	}
	if err := st.Close(); err != nil {
		t.Fatal(err)
	}

	// Expiry: the retention pass forgets slots older than the TTL.
	st, err = Open(ctx, Options{Dir: dir, DedupeWindow: 4, SenderSlotTTL: time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	for i := range 8 { // push dev1's message out of the window
		enqueue(st, "other", uint16(100+i), fp(fmt.Sprint("p", i)))
	}
	time.Sleep(5 * time.Millisecond) // not a wait for readiness: the slot's write time must be more than the TTL in the past
	if _, err := st.RunRetention(ctx); err != nil {
		t.Fatal(err)
	}
	if st.Redelivered(ctx, "dev1", 7+SenderSlots, fp("c")) {
		t.Fatal("an expired slot still recognised")
	}
}

// TestRefusalsAreRemembered: a message refused at intake is dead-lettered
// with its fingerprint, so its redelivery is recognised: from memory (the
// last 256 refusals, whatever the window of accepted entries holds), and
// after a restart from the sender's slot. A wrong-sized fingerprint is
// refused with nothing written; a dead letter without one remembers
// nothing.
func TestRefusalsAreRemembered(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	st, err := Open(ctx, Options{Dir: dir, DedupeWindow: 4})
	if err != nil {
		t.Fatal(err)
	}
	refuse := func(sender string, pid uint16, f []byte) error {
		_, err := st.Commit(ctx, &Commit{DeadLetter: &DeadLetter{Function: "_intake", Key: "t", Event: []byte("e"), Error: "too large", Fingerprint: f, Sender: sender, PacketID: pid}})
		return err
	}
	if err := refuse("dev", 9, fp("big")); err != nil {
		t.Fatal(err)
	}
	if err := refuse("dev", 10, nil); err != nil {
		t.Fatal(err)
	}
	if err := refuse("dev", 11, []byte("short")); !errors.Is(err, ErrInvalid) {
		t.Fatalf("short fingerprint: %v", err)
	}
	if dls, err := st.ListDeadLetters(ctx, "", 0, 10); err != nil || len(dls) != 2 || len(dls[0].Fingerprint) != 0 {
		t.Fatalf("dead letters %+v, %v: want 2, fingerprint not stored", dls, err)
	}
	// Accepted messages fill the window of 4 many times over: refusals
	// are remembered apart.
	for i := range 10 {
		if _, err := st.Enqueue(ctx, []InboxEntry{{Function: "f", Event: []byte("e"), Fingerprint: fp(fmt.Sprint("m", i)), Sender: "other", PacketID: uint16(i)}}); err != nil {
			t.Fatal(err)
		}
	}
	if !st.Redelivered(ctx, "", 0, fp("big")) {
		t.Fatal("refusal not remembered in memory")
	}
	if st.Redelivered(ctx, "dev", 10, fp("none")) {
		t.Fatal("a dead letter without a fingerprint remembered something")
	}
	if err := st.Close(); err != nil {
		t.Fatal(err)
	}
	st, err = Open(ctx, Options{Dir: dir, DedupeWindow: 4})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	if st.Redelivered(ctx, "", 0, fp("big")) {
		t.Fatal("refusal remembered without its sender after a restart (the memory is not durable)")
	}
	if !st.Redelivered(ctx, "dev", 9, fp("big")) {
		t.Fatal("refusal not remembered in the sender's slot after a restart")
	}
	if st.Redelivered(ctx, "dev", 9, fp("other payload")) {
		t.Fatal("another message with the same packet id taken for the refused one")
	}
}

// TestRefusedWindowEvicts: the in-memory refusals keep the last 256.
func TestRefusedWindowEvicts(t *testing.T) {
	w := newRedeliveryWindow(4)
	for i := range refusedWindow + 10 {
		w.refused([FingerprintSize]byte(fp(fmt.Sprint("r", i))))
	}
	last := fmt.Sprint("r", refusedWindow+9)
	w.refused([FingerprintSize]byte(fp(last))) // twice in the ring: evicts r10
	for i := range 11 {
		if w.has([FingerprintSize]byte(fp(fmt.Sprint("r", i)))) {
			t.Errorf("r%d kept after %d later refusals", i, refusedWindow)
		}
	}
	for i := 11; i < refusedWindow+10; i++ {
		if !w.has([FingerprintSize]byte(fp(fmt.Sprint("r", i)))) {
			t.Errorf("r%d evicted too early", i)
		}
	}
	if w.refusedSet[[FingerprintSize]byte(fp(last))] != 2 || len(w.refusedSet) != refusedWindow-1 {
		t.Errorf("%d fingerprints in the set, want %d", len(w.refusedSet), refusedWindow-1)
	}
}
