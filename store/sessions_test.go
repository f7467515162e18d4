package store

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync/atomic"
	"testing"
)

// sessions returns the broker session items as key -> value.
func sessions(t *testing.T, s *Store) map[string]string {
	t.Helper()
	out := map[string]string{}
	err := s.LoadSessions(context.Background(), func(k, v []byte) error {
		out[string(k)] = string(v)
		return nil
	})
	if err != nil {
		t.Fatalf("LoadSessions: %v", err)
	}
	return out
}

func TestSessions(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	s := openTest(t, Options{Dir: dir})
	for i := range 3 {
		if err := s.SetSession(fmt.Appendf(nil, "a/%d", i), fmt.Appendf(nil, "v%d", i)); err != nil {
			t.Fatal(err)
		}
	}
	// Queued changes apply in call order: the last write of a key wins, a
	// delete after a write removes it, an empty value is kept.
	must(t, s.SetSession([]byte("b"), []byte("old")))
	must(t, s.SetSession([]byte("b"), []byte("new")))
	must(t, s.SetSession([]byte("c"), []byte("x")))
	must(t, s.DeleteSession([]byte("c")))
	must(t, s.SetSession([]byte("e"), nil))
	must(t, s.DeleteSession([]byte("never-set")))
	must(t, s.DeleteSession([]byte("a/1")))
	barrier(t, s)
	want := map[string]string{"a/0": "v0", "a/2": "v2", "b": "new", "e": ""}
	if got := sessions(t, s); fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("sessions = %v, want %v", got, want)
	}
	// Durable: a reopened store has them.
	must(t, s.Close())
	s = openTest(t, Options{Dir: dir})
	if got := sessions(t, s); fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("after reopening: %v, want %v", got, want)
	}
	// The session space is apart from every other: records, state and
	// functions do not show up in it, nor it in them.
	if _, err := s.Commit(ctx, &Commit{Records: []Record{{Stream: "s"}}, State: []StateChange{{Function: "f", Op: StateSet, Key: "k", Value: []byte("1")}}}); err != nil {
		t.Fatal(err)
	}
	if got := sessions(t, s); len(got) != len(want) {
		t.Fatalf("sessions after a commit: %v", got)
	}
}

func TestSessionsBadInput(t *testing.T) {
	ctx := context.Background()
	s := openTest(t, Options{})
	long := []byte(strings.Repeat("k", maxSessionKey+1))
	for name, err := range map[string]error{
		"Set empty key":       s.SetSession(nil, []byte("v")),
		"Set long key":        s.SetSession(long, []byte("v")),
		"Delete empty key":    s.DeleteSession([]byte{}),
		"Delete long key":     s.DeleteSession(long),
		"Set too large value": s.SetSession([]byte("k"), make([]byte, 2*s.opts.MaxValueBytes+64<<10+1)),
	} {
		if !errors.Is(err, ErrInvalid) && !errors.Is(err, ErrTooLarge) {
			t.Errorf("%s: %v, want ErrInvalid or ErrTooLarge", name, err)
		}
	}
	if got := sessions(t, s); len(got) != 0 {
		t.Fatalf("refused writes stored %v", got)
	}
	// An error from the callback stops the scan and is returned as is.
	must(t, s.SetSession([]byte("a"), nil))
	must(t, s.SetSession([]byte("b"), nil))
	stop := errors.New("stop")
	calls := 0
	barrier(t, s)
	err := s.LoadSessions(ctx, func(k, v []byte) error { calls++; return stop })
	if !errors.Is(err, stop) || calls != 1 {
		t.Fatalf("LoadSessions with a failing callback: %v after %d calls", err, calls)
	}
	cctx, cancel := context.WithCancel(ctx)
	cancel()
	if err := s.LoadSessions(cctx, func(k, v []byte) error { return nil }); !errors.Is(err, context.Canceled) {
		t.Fatalf("LoadSessions with a cancelled context: %v", err)
	}
}

// Session writes go through while the disk is below its reserve: they
// mostly move a queued message out of the publish outbox, whose
// acknowledgement is not refused either.
func TestSessionsDiskFull(t *testing.T) {
	ctx := context.Background()
	var full atomic.Bool
	free := func(string) (uint64, error) {
		if full.Load() {
			return 1, nil
		}
		return 1 << 40, nil
	}
	s := openTest(t, Options{DiskReserve: 1 << 20, DiskCheckInterval: 1, FreeSpace: free})
	full.Store(true)
	if _, err := s.Enqueue(ctx, []InboxEntry{{Function: "f"}}); !errors.Is(err, ErrStoreFull) {
		t.Fatalf("Enqueue below the reserve: %v", err)
	}
	must(t, s.SetSession([]byte("queued"), []byte("cmd")))
	must(t, s.AckPublishes(ctx, 1)) // also a barrier
	if got := sessions(t, s); fmt.Sprint(got) != "map[queued:cmd]" {
		t.Fatalf("sessions = %v", got)
	}
}

// barrier waits until every change queued before it is applied.
func barrier(t *testing.T, s *Store) {
	t.Helper()
	if _, err := s.Commit(context.Background(), &Commit{}); err != nil {
		t.Fatal(err)
	}
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}
