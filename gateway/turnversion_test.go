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

// docs/api.md: "events in flight finish on the old version and the next
// ones run on the new one"; docs/architecture.md: "calls waiting for a
// slot move to the new one". An event of a that is waiting for one of the
// gateway's turns (pipeline.workers, all taken by a slow function) now
// holds an instance of a's current version while it waits (the gate is
// asked once an instance is held): a deploy of a v2 that returns meanwhile
// does not move it, and v1's code runs after v2 is active.
func TestEventWaitingForGatewayTurnRunsVersionDeployedMeanwhile(t *testing.T) {
	ctx := context.Background()
	st := quietStore(t, store.Options{})
	rt := luavm.NewRuntime(luavm.Options{Logger: slog.New(slog.DiscardHandler)})
	slow := busyFunction("slow", "slow/{device}", 1500, 5*time.Second)
	g := runGateway(t, Options{Store: st, Runtime: rt, Workers: 1}, slow, versionOfA("v1", 1, "old"))

	if err := g.handle(ctx, &mqtt.Message{Topic: "slow/d1", Payload: []byte(`{}`), QoS: 1, ClientID: "d1", PacketID: 1}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 10*time.Second, "slow running (the only gateway turn)", func() bool { ps, _ := rt.Stats("slow"); return ps.Busy == 1 })
	if err := g.handle(ctx, &mqtt.Message{Topic: "a/d2", Payload: []byte(`{}`), QoS: 1, ClientID: "d2", PacketID: 1}); err != nil {
		t.Fatal(err)
	}
	// a's event is dispatched and waits for the gateway's turn.
	waitFor(t, 10*time.Second, "a's event dispatched", func() bool { return len(g.functionTurns("a")) == 1 })
	if err := g.SetFunctions(ctx, []*Function{slow, versionOfA("v2", 2, "new")}); err != nil {
		t.Fatal(err)
	}
	if f := g.Lookup("a"); f == nil || f.Version != 2 {
		t.Fatalf("a not at v2 after the deploy returned: %+v", f)
	}
	// The deploy has returned: a's event has not run yet.
	if n := len(allRecords(t, st, "a")); n != 0 {
		t.Fatalf("a's event ran before the deploy returned (%d records): test setup", n)
	}
	waitFor(t, 20*time.Second, "a's record", func() bool { return len(allRecords(t, st, "a")) == 1 })
	recs := allRecords(t, st, "a")
	if string(recs[0].Data) != `{"v":"new"}` {
		t.Fatalf("an event that had not run when v2's deploy returned ran v1's code: record %s", recs[0].Data)
	}
}

// docs/api.md: DELETE /v1/functions/{name} "stop and delete every
// version". An event of a waiting for a gateway turn when a is removed
// runs a's code afterwards and commits its outputs (before, it went to
// the dead letters: the function was gone when it got its turn).
func TestEventWaitingForGatewayTurnRunsRemovedFunction(t *testing.T) {
	ctx := context.Background()
	st := quietStore(t, store.Options{})
	rt := luavm.NewRuntime(luavm.Options{Logger: slog.New(slog.DiscardHandler)})
	slow := busyFunction("slow", "slow/{device}", 1500, 5*time.Second)
	a := &Function{Name: "a", Fingerprint: "v1", Version: 1, Patterns: []*trigger.Pattern{trigger.MustParsePattern("a/{device}")},
		Spec: luavm.Spec{Source: []byte(`function handle(e) return {ran = true} end`)}}
	g := runGateway(t, Options{Store: st, Runtime: rt, Workers: 1}, slow, a)
	if err := g.handle(ctx, &mqtt.Message{Topic: "slow/d1", Payload: []byte(`{}`), QoS: 1, ClientID: "d1", PacketID: 1}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 10*time.Second, "slow running (the only gateway turn)", func() bool { ps, _ := rt.Stats("slow"); return ps.Busy == 1 })
	if err := g.handle(ctx, &mqtt.Message{Topic: "a/d2", Payload: []byte(`{}`), QoS: 1, ClientID: "d2", PacketID: 1}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 10*time.Second, "a's event dispatched", func() bool { return len(g.functionTurns("a")) == 1 })
	if err := g.SetFunctions(ctx, []*Function{slow}); err != nil { // a removed
		t.Fatal(err)
	}
	waitFor(t, 20*time.Second, "the backlog drained", func() bool { return st.InboxLen() == 0 && g.Stats().Backlog == 0 })
	if n := len(allRecords(t, st, "a")); n != 0 {
		t.Fatalf("function a ran and committed %d record(s) after it was removed", n)
	}
}

// A call over the API that holds an instance while it waits for one of the
// gateway's direct turns (all taken by a slow call) had not started when a
// deploy of a v2 returned: it runs v2's code (the runtime takes the current
// version once its gate opens), as "calls waiting for a slot move to the
// new one" says.
func TestDirectCallWaitingForTurnRunsVersionDeployedMeanwhile(t *testing.T) {
	ctx := context.Background()
	st := quietStore(t, store.Options{})
	rt := luavm.NewRuntime(luavm.Options{Logger: slog.New(slog.DiscardHandler)})
	slow := busyFunction("slow", "slow/{device}", 1500, 5*time.Second)
	g := runGateway(t, Options{Store: st, Runtime: rt, Workers: 1}, slow, versionOfA("v1", 1, "old"))
	go func() { _, _ = g.Invoke(ctx, "slow", &luavm.Event{Trigger: "invoke"}, false, nil) }()
	waitFor(t, 10*time.Second, "the slow call running (the only direct turn)", func() bool { ps, _ := rt.Stats("slow"); return ps.Busy == 1 })
	got := make(chan *InvokeResult, 1)
	go func() {
		r, err := g.Invoke(ctx, "a", &luavm.Event{Trigger: "invoke"}, false, nil)
		if err != nil {
			t.Error(err)
		}
		got <- r
	}()
	waitFor(t, 10*time.Second, "a's call holding an instance, waiting for its turn", func() bool { ps, _ := rt.Stats("a"); return ps.Busy == 1 })
	if err := g.SetFunctions(ctx, []*Function{slow, versionOfA("v2", 2, "new")}); err != nil {
		t.Fatal(err)
	}
	r := <-got
	if r == nil || r.Err != nil || string(r.Result.Value) != `{"v":"new"}` {
		t.Fatalf("a call that had not started when v2's deploy returned: %+v", r)
	}
}

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

// versionOfA is version version of function a (trigger a/{device}), which
// returns {v = out}.
func versionOfA(fp string, version int64, out string) *Function {
	return &Function{Name: "a", Fingerprint: fp, Version: version, Patterns: []*trigger.Pattern{trigger.MustParsePattern("a/{device}")},
		Spec: luavm.Spec{Source: []byte(`function handle(e) return {v = "` + out + `"} end`), QueueTimeout: 10 * time.Second}}
}
