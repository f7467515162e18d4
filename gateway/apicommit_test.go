package gateway

import (
	"context"
	"errors"
	"log/slog"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/moongate-edge/moongate/gateway/trigger"
	"github.com/moongate-edge/moongate/luavm"
	"github.com/moongate-edge/moongate/store"
)

// What the API's calls commit outside the workers (invocations, uploads,
// state writes) is queued exactly once, whenever the call comes, and
// counted as what it was.

// TestInvokeBeforeRunChainsOnce: an invocation committed before Run read
// its resume bound (the daemon serves the API before the gateway runs)
// chains an entry that the resume queues; Invoke queued it as well, so
// the downstream function ran twice (the second commit refused as a
// duplicate).
func TestInvokeBeforeRunChainsOnce(t *testing.T) {
	ctx := context.Background()
	st := quietStore(t, store.Options{})
	up := &Function{Name: "up", Fingerprint: "v1", Stream: "readings",
		Spec: luavm.Spec{Source: []byte(`function handle(e) return {n = 1} end`)}}
	down := busyFunction("down", "unused/{device}", 300, 10*time.Second)
	down.Patterns, down.Streams = nil, []string{"readings"}
	g := newGateway(t, Options{Store: st}, up, down)
	res, err := g.Invoke(ctx, "up", &luavm.Event{Trigger: "invoke"}, true, nil)
	if err != nil || res.Err != nil || !res.Committed {
		t.Fatalf("invoke: %v %+v", err, res)
	}
	runUntilCleanup(t, g)
	waitFor(t, 10*time.Second, "down's record", func() bool { return len(allRecords(t, st, "down")) == 1 })
	waitFor(t, 10*time.Second, "backlog drained", func() bool { return st.InboxLen() == 0 && g.Stats().Backlog == 0 })
	if s := g.Stats(); s.Duplicates != 0 || s.Processed != 2 {
		t.Fatalf("the chained entry was queued twice: %+v", s)
	}
}

// TestPutBlobBeforeRunChainsOnce: the same for an upload's triggered
// entry.
func TestPutBlobBeforeRunChainsOnce(t *testing.T) {
	ctx := context.Background()
	st := quietStore(t, store.Options{Buckets: map[string]store.Bucket{"in": {}}})
	up := busyFunction("onup", "unused/{device}", 300, 10*time.Second)
	up.Patterns, up.Uploads = nil, []trigger.UploadTrigger{{Bucket: "in"}}
	g := newGateway(t, Options{Store: st}, up)
	if _, err := g.PutBlob(ctx, "in", "a.txt", "text/plain", strings.NewReader("hello")); err != nil {
		t.Fatal(err)
	}
	runUntilCleanup(t, g)
	waitFor(t, 10*time.Second, "onup's record", func() bool { return len(allRecords(t, st, "onup")) == 1 })
	waitFor(t, 10*time.Second, "backlog drained", func() bool { return st.InboxLen() == 0 && g.Stats().Backlog == 0 })
	if s := g.Stats(); s.Duplicates != 0 || s.Processed != 1 {
		t.Fatalf("the upload's entry was queued twice: %+v", s)
	}
}

// TestWriteStateGivenUpStillChains: a state write whose caller gives up
// while its commit waits (a client timeout during a slow sync) may still
// be applied, with the entry it chains; that entry must run. WriteState
// committed with the caller's context and returned its error: the entry
// stayed in the inbox, unqueued, until the next start. Now the commit is
// not abandoned once submitted.
func TestWriteStateGivenUpStillChains(t *testing.T) {
	var block atomic.Bool
	gate := make(chan struct{})
	st := quietStore(t, store.Options{DiskCheckInterval: time.Nanosecond, FreeSpace: func(string) (uint64, error) {
		if block.Load() {
			<-gate // the committer stalls before its batch (a slow disk)
		}
		return 1 << 40, nil
	}})
	watch := &Function{Name: "watch", Fingerprint: "v1", StateWatches: []trigger.StateTrigger{{Function: "cfg", Prefix: ""}},
		Spec: luavm.Spec{Source: []byte(`function handle(e) return {ok = true} end`)}}
	g := runGateway(t, Options{Store: st}, watch)
	block.Store(true)
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	wrote := make(chan error, 1)
	go func() {
		wrote <- g.WriteState(ctx, store.StateChange{Function: "cfg", Op: store.StateSet, Key: "mode", Value: []byte(`"fast"`)})
	}()
	<-ctx.Done() // the caller has given up: the commit is still held
	block.Store(false)
	close(gate)
	if err := <-wrote; err != nil {
		t.Fatalf("WriteState: %v", err)
	}
	waitFor(t, 10*time.Second, "watch's record", func() bool { return len(allRecords(t, st, "watch")) == 1 })
	if _, ok, err := st.GetState(context.Background(), "cfg", "mode"); !ok || err != nil {
		t.Fatalf("state: %v %v", ok, err)
	}
}

// TestBusyDirectCallNotMeteredAsRun: a direct call refused ErrBusy (no
// instance or turn within the queue timeout) ran nothing: it is neither a
// failed invocation nor metered, as for an MQTT event refused busy.
func TestBusyDirectCallNotMeteredAsRun(t *testing.T) {
	ctx := context.Background()
	st := quietStore(t, store.Options{})
	rt := luavm.NewRuntime(luavm.Options{Logger: slog.New(slog.DiscardHandler)})
	slow := busyFunction("slow", "slow/{device}", 600, 10*time.Second) // max_concurrency 1
	slow.Spec.QueueTimeout = 50 * time.Millisecond
	g := runGateway(t, Options{Store: st, Runtime: rt}, slow)
	done := make(chan error, 1)
	go func() {
		_, err := g.Invoke(ctx, "slow", &luavm.Event{Trigger: "invoke"}, true, nil)
		done <- err
	}()
	waitFor(t, 10*time.Second, "slow running", func() bool { ps, _ := rt.Stats("slow"); return ps.Busy == 1 })
	inv, err := g.Invoke(ctx, "slow", &luavm.Event{Trigger: "invoke"}, true, nil)
	if err != nil || !errors.Is(inv.Err, luavm.ErrBusy) || inv.Committed {
		t.Fatalf("second call: %v %+v, want ErrBusy, nothing committed", err, inv)
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	us, err := st.QueryUsage(ctx, "slow", 0, time.Now().Add(time.Hour).UnixMilli(), time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	var invs, errs int64
	for _, u := range us {
		invs += u.Invocations
		errs += u.Errors
	}
	if s := g.Stats(); s.Failed != 0 || invs != 1 || errs != 0 {
		t.Fatalf("one call ran, one was refused busy: Stats.Failed=%d, usage invocations=%d errors=%d", s.Failed, invs, errs)
	}
}

// TestDeadLetteredPublishNotCountedPublished: a local publish that cannot
// be carried out is dead-lettered (taken off the outbox in that write);
// it was counted in Stats.Published as well.
func TestDeadLetteredPublishNotCountedPublished(t *testing.T) {
	ctx := context.Background()
	st := quietStore(t, store.Options{})
	if _, err := st.Commit(ctx, &store.Commit{Publishes: []store.Publish{
		{Topic: "bad\xff/t", Payload: []byte("never"), QoS: 1},
		{Topic: "ok/t", Payload: []byte("after"), QoS: 1},
	}}); err != nil {
		t.Fatal(err)
	}
	g := runGateway(t, Options{Store: st})
	waitFor(t, 10*time.Second, "outbox drained", func() bool {
		left, err := st.PendingPublishes(ctx, 0, 10)
		return err == nil && len(left) == 0 && g.Stats().Published+g.Stats().DeadLettered >= 2
	})
	if s := g.Stats(); s.Published != 1 || s.DeadLettered != 1 {
		t.Fatalf("one publish carried out, one dead-lettered: Published=%d DeadLettered=%d", s.Published, s.DeadLettered)
	}
}
