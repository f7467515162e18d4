package gateway

import (
	"context"
	"log/slog"
	"sync/atomic"
	"testing"
	"time"

	"github.com/moongate-edge/moongate/gateway/trigger"
	"github.com/moongate-edge/moongate/luavm"
	"github.com/moongate-edge/moongate/mqtt"
	"github.com/moongate-edge/moongate/store"
)

// gateHookRuntime is the real runtime; hook runs once, when armed, right
// after the gate of a gated call of function a gave its turn (before the
// runtime's re-check of the version): it only fixes an interleaving that
// can happen anyway.
type gateHookRuntime struct {
	*luavm.Runtime
	armed atomic.Bool
	hook  func()
}

func (r *gateHookRuntime) InvokeGated(ctx context.Context, name string, ev *luavm.Event, state luavm.StateReader, gate luavm.Gate) (*luavm.Result, error) {
	if name != "a" || gate == nil {
		return r.Runtime.InvokeGated(ctx, name, ev, state, gate)
	}
	return r.Runtime.InvokeGated(ctx, name, ev, state, func(c context.Context) (func(), error) {
		done, err := gate(c)
		if err == nil && r.armed.CompareAndSwap(true, false) {
			r.hook()
		}
		return done, err
	})
}

// process.go invoke: "A stop ends both waits (the event stays in the
// inbox)". An event of a waited for an instance (a call held it), got
// it, and its gate waited for the gateway's only turn; a's v2 was
// deployed meanwhile. The stop comes just after the gate gave the turn:
// the AfterFunc sees started and leaves wctx alone. The runtime then
// finds v1 retired, gives the turn back (started=false) and waits for an
// instance of v2 with wctx, which no stop will ever cancel now: the stop
// waits the whole queue_timeout for an event that never started (and the
// gate's select, with a free turn and an ended ctx, may then run it).
func TestStopEndsEventsRegatedWaitAfterDeploy(t *testing.T) { regatedStop(t, true) }

// As TestStopEndsEventsRegatedWaitAfterDeploy with v2's instance free: the
// gate's select finds a free turn and an ended ctx and picks either: half
// the time a's event starts after the stop began (it must stay in the inbox).
func TestStopEventRegatedDoesNotRunAfterStop(t *testing.T) {
	for i := range 6 {
		if n := regatedStop(t, false); n != 0 {
			t.Fatalf("run %d: a's event started after the stop began (%d record): it had not run when the stop came", i, n)
		}
	}
}

func regatedStop(t *testing.T, holdV2 bool) int {
	ctx := context.Background()
	st := quietStore(t, store.Options{})
	quiet := slog.New(slog.DiscardHandler)
	rt := &gateHookRuntime{Runtime: luavm.NewRuntime(luavm.Options{Logger: quiet})}
	t.Cleanup(rt.Close)
	b := busyFunction("b", "b/{device}", 800, 5*time.Second)
	mk := func(fp string, version int64) *Function {
		return &Function{Name: "a", Fingerprint: fp, Version: version, Patterns: []*trigger.Pattern{trigger.MustParsePattern("a/{device}")},
			Spec: luavm.Spec{Source: []byte(`function handle(e)
  if e.payload == "hold" then
    local t0 = time.now_ms()
    while time.now_ms() - t0 < 300 do end
  end
  return {ok = true}
end`), MaxConcurrency: 1, QueueTimeout: 8 * time.Second, Limits: luavm.Limits{Timeout: 5 * time.Second, MaxSteps: 10_000_000_000}}}
	}
	g := newGateway(t, Options{Store: st, Runtime: rt, Workers: 1, ShutdownTimeout: 20 * time.Second}, b, mk("v1", 1))
	runCtx, stop := context.WithCancel(ctx)
	ran := make(chan error, 1)
	go func() { ran <- g.Run(runCtx) }()
	t.Cleanup(func() { stop(); <-ran })
	waitFor(t, 10*time.Second, "ready", g.Ready)

	// 1. A call holds a v1's instance for 300 ms.
	callDone := make(chan struct{})
	go func() {
		defer close(callDone)
		_, _ = g.Invoke(ctx, "a", &luavm.Event{Trigger: "invoke", Payload: []byte("hold")}, false, nil)
	}()
	waitFor(t, 10*time.Second, "the call holds a's instance", func() bool { s, _ := rt.Stats("a"); return s.Busy == 1 })
	// 2. a's event: TryInvoke busy, waits in a's queue.
	if err := g.handle(ctx, &mqtt.Message{Topic: "a/d1", Payload: []byte(`{}`), QoS: 1, ClientID: "d1", PacketID: 1}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 10*time.Second, "a's event waits for the instance", func() bool { s, _ := rt.Stats("a"); return s.Waiting == 1 })
	// 3. b's event takes the only gateway turn for 800 ms.
	if err := g.handle(ctx, &mqtt.Message{Topic: "b/d1", Payload: []byte(`{}`), QoS: 1, ClientID: "d2", PacketID: 1}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 10*time.Second, "b running", func() bool { s, _ := rt.Stats("b"); return s.Busy == 1 })
	// 4. The call ends: a's event holds the instance, its gate waits for the turn.
	<-callDone
	waitFor(t, 10*time.Second, "a's event holds the instance", func() bool { s, _ := rt.Stats("a"); return s.Busy == 1 && s.Waiting == 0 })
	// 5. v2 deployed; its only instance held (outside the gateway).
	rt.hook = func() {
		stop()
		waitFor(t, 10*time.Second, "workers told to stop", func() bool {
			g.timersMu.Lock()
			defer g.timersMu.Unlock()
			return g.runCtx.Err() != nil
		})
		time.Sleep(50 * time.Millisecond) // the AfterFunc runs now (it finds started)
	}
	rt.armed.Store(true)
	if err := g.SetFunctions(ctx, []*Function{b, mk("v2", 2)}); err != nil {
		t.Fatal(err)
	}
	hold := make(chan struct{})
	defer close(hold)
	if holdV2 {
		go func() {
			_, _ = rt.Runtime.InvokeGated(ctx, "a", &luavm.Event{}, nil, func(context.Context) (func(), error) { <-hold; return func() {}, nil })
		}()
		waitFor(t, 10*time.Second, "v2's instance held", func() bool { s, _ := rt.Stats("a"); return s.Version == 2 && s.Busy == 1 })
	}
	// 6. b ends: the gate gives a's event the turn, the hook stops the gateway.
	waitFor(t, 10*time.Second, "the stop began", func() bool { return !rt.armed.Load() })
	start := time.Now()
	select {
	case <-ran:
		ran <- nil
	case <-time.After(15 * time.Second):
		t.Fatal("no stop")
	}
	took := time.Since(start)
	n := len(allRecords(t, st, "a"))
	t.Logf("stop took %v; records of a: %d", took.Round(time.Millisecond), n)
	if took > 2*time.Second {
		t.Fatalf("the stop waited %v (a's queue_timeout) for an event waiting for an instance of a's v2 (not running)", took.Round(time.Millisecond))
	}
	return n
}
