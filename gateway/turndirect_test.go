package gateway

import (
	"context"
	"errors"
	"log/slog"
	"testing"
	"time"

	"github.com/moongate-edge/moongate/gateway/trigger"
	"github.com/moongate-edge/moongate/luavm"
	"github.com/moongate-edge/moongate/mqtt"
	"github.com/moongate-edge/moongate/store"
)

// docs/architecture.md: "Calls over the API and HTTP triggers run outside
// the lanes with turns of their own: at most pipeline.workers at once,
// apart from the events'". Function a (one instance) takes events and
// calls; the gateway's only event turn is held by a slow function b. a's
// event now waits for that turn holding a's only instance, so a call of a
// over the API (its own turn free, a not running at all) finds no
// instance within a's queue_timeout and fails busy: a slow function's
// events make another function's HTTP endpoint answer 503.
func TestEventWaitingForGatewayTurnStarvesDirectCalls(t *testing.T) {
	ctx := context.Background()
	st := quietStore(t, store.Options{})
	rt := luavm.NewRuntime(luavm.Options{Logger: slog.New(slog.DiscardHandler)})
	b := busyFunction("b", "b/{device}", 3000, 10*time.Second)
	a := &Function{Name: "a", Fingerprint: "v1", Patterns: []*trigger.Pattern{trigger.MustParsePattern("a/{device}")},
		Spec: luavm.Spec{Source: []byte(`function handle(e) return {ok = true} end`), MaxConcurrency: 1, QueueTimeout: 500 * time.Millisecond}}
	g := runGateway(t, Options{Store: st, Runtime: rt, Workers: 1}, a, b)

	if err := g.handle(ctx, &mqtt.Message{Topic: "b/d1", Payload: []byte(`{}`), QoS: 1, ClientID: "d1", PacketID: 1}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 10*time.Second, "b running (the only event turn)", func() bool { ps, _ := rt.Stats("b"); return ps.Busy == 1 })
	if err := g.handle(ctx, &mqtt.Message{Topic: "a/d2", Payload: []byte(`{}`), QoS: 1, ClientID: "d2", PacketID: 1}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 10*time.Second, "a's event dispatched", func() bool { return len(g.functionTurns("a")) == 1 })
	start := time.Now()
	out, err := g.Invoke(ctx, "a", &luavm.Event{Trigger: "invoke"}, false, nil)
	if err != nil {
		t.Fatal(err)
	}
	if errors.Is(out.Err, luavm.ErrBusy) {
		ps, _ := rt.Stats("a")
		t.Fatalf("a call of a over the API (a not running, a direct turn free) failed busy after %v: %v (a: busy %d, invocations running: none of a's)",
			time.Since(start).Round(time.Millisecond), out.Err, ps.Busy)
	}
	if out.Err != nil {
		t.Fatal(out.Err)
	}
}
