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

// TestEventWaitingForBusyInstanceHoldsNoGatewayTurn: function a's only
// instance is taken by a call over the API (2 s). An MQTT event of a then
// waits inside the runtime for that instance, holding one of the gateway's
// turns (pipeline.workers) meanwhile; an event of an unrelated function b
// waits behind it. docs/architecture.md: "the events of a function at its
// limit hold neither the gateway's turns nor the dispatcher's goroutines".
func TestEventWaitingForBusyInstanceHoldsNoGatewayTurn(t *testing.T) {
	ctx := context.Background()
	st := quietStore(t, store.Options{})
	rt := &tryingRuntime{Runtime: luavm.NewRuntime(luavm.Options{Logger: slog.New(slog.DiscardHandler)}), fn: "a", tried: make(chan struct{}, 16)}
	a := busyFunction("a", "a/{device}", 2000, 5*time.Second)
	b := &Function{Name: "b", Fingerprint: "v1", Patterns: []*trigger.Pattern{trigger.MustParsePattern("b/{device}")},
		Spec: luavm.Spec{Source: []byte(`function handle(e) return {ok = true} end`)}}
	g := runGateway(t, Options{Store: st, Runtime: rt, Workers: 1}, a, b)

	apiDone := make(chan time.Time, 1)
	go func() {
		_, _ = g.Invoke(ctx, "a", &luavm.Event{Trigger: "invoke"}, false, nil)
		apiDone <- time.Now()
	}()
	waitFor(t, 10*time.Second, "the API call running", func() bool { ps, _ := rt.Stats("a"); return ps.Busy == 1 })
	if err := g.handle(ctx, &mqtt.Message{Topic: "a/d1", Payload: []byte(`{}`), QoS: 1, ClientID: "d1", PacketID: 1}); err != nil {
		t.Fatal(err)
	}
	select { // a's event asked for an instance (and found none free)
	case <-rt.tried:
	case <-time.After(10 * time.Second):
		t.Fatal("a's event was not run")
	}
	sent := time.Now()
	if err := g.handle(ctx, &mqtt.Message{Topic: "b/d2", Payload: []byte(`{}`), QoS: 1, ClientID: "d2", PacketID: 1}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 20*time.Second, "b's record", func() bool { return len(allRecords(t, st, "b")) == 1 })
	took := time.Since(sent)
	select {
	case <-apiDone:
		t.Fatalf("b's event (a trivial function) ran only after %v, after the API call of a ended: "+
			"a's event waited for a's busy instance holding the only gateway turn", took.Round(time.Millisecond))
	default:
	}
	t.Logf("b's event ran after %v", took)
}

// tryingRuntime signals each time an event of fn asks for an instance
// (Invoke or TryInvoke), then runs it as the runtime does.
type tryingRuntime struct {
	*luavm.Runtime
	fn    string
	tried chan struct{}
}

func (r *tryingRuntime) note(name string, ev *luavm.Event) {
	if name == r.fn && ev.Trigger == "mqtt" {
		select {
		case r.tried <- struct{}{}:
		default:
		}
	}
}

func (r *tryingRuntime) Invoke(ctx context.Context, name string, ev *luavm.Event, state luavm.StateReader) (*luavm.Result, error) {
	r.note(name, ev)
	return r.Runtime.Invoke(ctx, name, ev, state)
}

func (r *tryingRuntime) InvokeGated(ctx context.Context, name string, ev *luavm.Event, state luavm.StateReader, gate luavm.Gate) (*luavm.Result, error) {
	r.note(name, ev)
	return r.Runtime.InvokeGated(ctx, name, ev, state, gate)
}

func (r *tryingRuntime) TryInvoke(ctx context.Context, name string, ev *luavm.Event, state luavm.StateReader) (*luavm.Result, error) {
	r.note(name, ev)
	return r.Runtime.TryInvoke(ctx, name, ev, state)
}
