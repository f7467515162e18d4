package gateway

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"sync"
	"testing"
	"time"

	"github.com/moongate-edge/moongate/luavm"
	"github.com/moongate-edge/moongate/mqtt"
	"github.com/moongate-edge/moongate/store"
)

// failingAcks is a real store whose first AckPublishes calls fail.
type failingAcks struct {
	*store.Store
	mu    sync.Mutex
	fails int      // calls still to fail
	acked []uint64 // sequences of the calls that succeeded
}

func (f *failingAcks) AckPublishes(ctx context.Context, seqs ...uint64) error {
	f.mu.Lock()
	if f.fails > 0 {
		f.fails--
		f.mu.Unlock()
		return errors.New("injected: ack write failed")
	}
	f.mu.Unlock()
	if err := f.Store.AckPublishes(ctx, seqs...); err != nil {
		return err
	}
	f.mu.Lock()
	f.acked = append(f.acked, seqs...)
	f.mu.Unlock()
	return nil
}

func (f *failingAcks) ackedSeq(seq uint64) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, s := range f.acked {
		if s == seq {
			return true
		}
	}
	return false
}

// TestUndeliverablePublishDeadLetteredOnce: an undeliverable local publish
// leaves the outbox in the same write as its dead letter. When the
// publisher's separate acknowledgement fails and it starts over from the
// oldest publish, the publish is not dead-lettered again. (Before, each
// failed acknowledgement added one more dead letter for it.)
func TestUndeliverablePublishDeadLetteredOnce(t *testing.T) {
	ctx := context.Background()
	quiet := slog.New(slog.NewTextHandler(io.Discard, nil))
	st, err := store.Open(ctx, store.Options{Dir: t.TempDir(), GatewayID: "gw", Logger: quiet})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	fa := &failingAcks{Store: st, fails: 2}
	emb, err := mqtt.NewEmbedded(mqtt.EmbeddedConfig{Listen: "127.0.0.1:0", AllowAnonymous: true}, quiet)
	if err != nil {
		t.Fatal(err)
	}
	g, err := New(Options{Store: fa, Runtime: luavm.NewRuntime(luavm.Options{Logger: quiet}), Ingest: emb, Logger: quiet})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := st.Commit(ctx, &store.Commit{Publishes: []store.Publish{
		{Topic: "bad\xff/t", Payload: []byte("never"), QoS: 1},
		{Topic: "ok/t", Payload: []byte("after"), QoS: 1},
	}}); err != nil {
		t.Fatal(err)
	}
	pubs, err := st.PendingPublishes(ctx, 0, 10)
	if err != nil || len(pubs) != 2 {
		t.Fatalf("pending %v %v", pubs, err)
	}
	runUntilCleanup(t, g)
	waitFor(t, 20*time.Second, "the publish behind the undeliverable one acknowledged", func() bool { return fa.ackedSeq(pubs[1].Seq) })
	dls, err := st.ListDeadLetters(ctx, PublishDeadLetters, 0, 10)
	if err != nil {
		t.Fatal(err)
	}
	if len(dls) != 1 {
		t.Fatalf("%d dead letters for one undeliverable publish, want 1", len(dls))
	}
	if left, err := st.PendingPublishes(ctx, 0, 10); err != nil || len(left) != 0 {
		t.Errorf("outbox after: %v %v", left, err)
	}
}
