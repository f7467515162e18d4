package store

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"testing"
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
	if st.Redelivered(ctx, fp("m0")) {
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
		if !st.Redelivered(ctx, fp(fmt.Sprint("m", i))) {
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
	if !st.Redelivered(ctx, fp("m0")) || !st.Redelivered(ctx, fp("m2")) {
		t.Fatal("window lost on reopen")
	}
	for i := 3; i < 5; i++ {
		if _, err := st.Enqueue(ctx, []InboxEntry{{Function: "f", Event: []byte("e"), Fingerprint: fp(fmt.Sprint("m", i))}}); err != nil {
			t.Fatal(err)
		}
	}
	// The window is the last 4 inbox entries: m2, the plain one, m3, m4.
	for _, m := range []string{"m0", "m1"} {
		if st.Redelivered(ctx, fp(m)) {
			t.Errorf("%s still remembered beyond the window", m)
		}
	}
	for _, m := range []string{"m2", "m3", "m4"} {
		if !st.Redelivered(ctx, fp(m)) {
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
