package gateway

import (
	"context"
	"log/slog"
	"testing"
	"time"

	"github.com/moongate-edge/moongate/gateway/trigger"
	"github.com/moongate-edge/moongate/luavm"
	"github.com/moongate-edge/moongate/mqtt"
	"github.com/moongate-edge/moongate/store"
)

// docs/functions.md (stream triggers): "every record emitted to
// readings" runs the listener, "each committed output runs each downstream
// function exactly once". An event of a waits for a's only instance (a
// call over the API holds it); meanwhile b, listening to a's stream, is
// deployed and the deploy returns. a's event then runs and commits its
// record to stream a, after b was deployed, but b never runs on it:
// process chains with the function table it loaded before the wait.
func TestRecordCommittedAfterListenerDeployedChains(t *testing.T) {
	ctx := context.Background()
	st := quietStore(t, store.Options{})
	rt := luavm.NewRuntime(luavm.Options{Logger: slog.New(slog.DiscardHandler)})
	a := &Function{Name: "a", Fingerprint: "a1", Version: 1, Patterns: []*trigger.Pattern{trigger.MustParsePattern("a/{device}")},
		Spec: luavm.Spec{Source: []byte(`function handle(e)
  if e.trigger == "invoke" then
    local t0 = time.now_ms()
    while time.now_ms() - t0 < 1500 do end
  end
  return {from = "a"}
end`), MaxConcurrency: 1, QueueTimeout: 20 * time.Second, Limits: luavm.Limits{Timeout: 10 * time.Second, MaxSteps: 10_000_000_000}}}
	g := runGateway(t, Options{Store: st, Runtime: rt}, a)

	go func() { _, _ = g.Invoke(ctx, "a", &luavm.Event{Trigger: "invoke"}, false, nil) }()
	waitFor(t, 10*time.Second, "the direct call running", func() bool { ps, _ := rt.Stats("a"); return ps.Busy == 1 })
	if err := g.handle(ctx, &mqtt.Message{Topic: "a/d1", Payload: []byte(`{}`), QoS: 1, ClientID: "d1", PacketID: 1}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 10*time.Second, "a's event waiting for an instance", func() bool { ps, _ := rt.Stats("a"); return ps.Waiting == 1 })

	b := &Function{Name: "b", Fingerprint: "b1", Version: 1, Streams: []string{"a"},
		Spec: luavm.Spec{Source: []byte(`function handle(e) return {from = "b"} end`)}}
	if err := g.SetFunctions(ctx, []*Function{a, b}); err != nil {
		t.Fatal(err)
	}
	if n := len(allRecords(t, st, "a")); n != 0 {
		t.Fatalf("a's event ran before b was deployed (%d records): test setup", n)
	}
	waitFor(t, 20*time.Second, "a's record", func() bool { return len(allRecords(t, st, "a")) == 1 })
	waitFor(t, 20*time.Second, "the backlog drained", func() bool { return st.InboxLen() == 0 && g.Stats().Backlog == 0 })
	if n := len(allRecords(t, st, "b")); n != 1 {
		t.Fatalf("a's record, committed after b (listening to stream a) was deployed, ran b %d times, want 1", n)
	}
}
