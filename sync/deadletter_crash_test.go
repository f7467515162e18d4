package sync

import (
	"context"
	"testing"
	"time"

	"github.com/moongate-edge/moongate/store"
)

// lostAckStore is the store as a kill leaves it when it lands between a
// dead letter's commit and the acker's OutboxAck (asynchronous, on another
// goroutine): the acknowledgement never reaches the store.
type lostAckStore struct{ *store.Store }

func (lostAckStore) OutboxAck(context.Context, string, uint64) error { return nil }

// TestRefusedRecordDeadLetteredOnceAcrossCrash: a record the upstream
// refuses is dead-lettered in one commit and taken off the outbox by a
// later one; a crash in between sends it again after the restart, and the
// upstream refuses it again: it is not dead-lettered a second time (the
// dead letter's commit records its outbox sequence).
func TestRefusedRecordDeadLetteredOnceAcrossCrash(t *testing.T) {
	dir := t.TempDir()
	st := openStore(t, dir, store.DurabilityAlways)
	up := newHTTPUpstream(t)
	up.reject = func(upRecord) bool { return true }
	commitOne(t, st, []byte(`{"x":1}`), "up")
	tc := fastTarget("up", "http")
	tc.HTTP.URL = up.URL
	dls := func() int {
		d, err := st.ListDeadLetters(context.Background(), DeadLetterPrefix+"up", 0, 100)
		if err != nil {
			t.Fatal(err)
		}
		return len(d)
	}
	_, stop := startManager(t, lostAckStore{st}, tc)
	waitFor(t, 10*time.Second, "the dead letter", func() bool { return dls() == 1 })
	stop() // "killed" before its acknowledgement reached the store
	if st.OutboxStats("up").Backlog != 1 {
		t.Fatal("the refused record left the outbox: the test does not test the crash")
	}
	sent := up.requests.Load()
	_, stop2 := startManager(t, st, tc)
	defer stop2()
	waitFor(t, 10*time.Second, "the record sent again and taken off the outbox", func() bool {
		return up.requests.Load() > sent && st.OutboxStats("up").Backlog == 0
	})
	if n := dls(); n != 1 {
		t.Fatalf("one refused record, %d dead letters after a crash between its dead letter and its outbox ack", n)
	}
}
