package luavm

import (
	"context"
	"errors"
	"fmt"
	"sync/atomic"
	"testing"
	"time"
)

// TestInvokeGated: the gate is asked only once the call holds an instance
// (a call waiting for its function's only instance does not take a turn
// of the gate meanwhile), its release is called after the run, and a gate
// refusal fails the call without running it, the instance back in its
// pool for the next call.
func TestInvokeGated(t *testing.T) {
	rt := newTestRuntime(t)
	deploy(t, rt, "f", `function handle(e)
  if e.payload == "slow" then
    local t0 = time.now_ms()
    while time.now_ms() - t0 < 300 do end
  end
  return {ok = true}
end`, func(s *Spec) {
		s.MaxConcurrency = 1
		s.Limits.Timeout = 5 * time.Second
		s.Limits.MaxSteps = 10_000_000_000
	})
	ctx := context.Background()
	var asked, released atomic.Int32
	gate := func(context.Context) (func(), error) {
		asked.Add(1)
		return func() { released.Add(1) }, nil
	}
	slowDone := make(chan error, 1)
	go func() {
		_, err := rt.InvokeGated(ctx, "f", &Event{Payload: []byte("slow")}, nil, gate)
		slowDone <- err
	}()
	deadline := time.Now().Add(5 * time.Second)
	for asked.Load() == 0 {
		if time.Now().After(deadline) {
			t.Fatal("the first call never asked the gate")
		}
		time.Sleep(time.Millisecond) // polling
	}
	// The second call waits for the only instance: it must not ask the
	// gate before it has one.
	secondDone := make(chan error, 1)
	go func() {
		_, err := rt.InvokeGated(ctx, "f", &Event{}, nil, gate)
		secondDone <- err
	}()
	for ps, _ := rt.Stats("f"); ps.Waiting == 0; ps, _ = rt.Stats("f") {
		if time.Now().After(deadline) {
			t.Fatal("the second call never waited for the instance")
		}
		time.Sleep(time.Millisecond) // polling the pool's stats
	}
	if n := asked.Load(); n != 1 {
		t.Fatalf("the gate was asked %d times while one call held the only instance", n)
	}
	for _, ch := range []chan error{slowDone, secondDone} {
		if err := <-ch; err != nil {
			t.Fatal(err)
		}
	}
	if asked.Load() != 2 || released.Load() != 2 {
		t.Fatalf("gate asked %d, released %d; want 2 and 2", asked.Load(), released.Load())
	}
	// A refusal: nothing runs, ErrBusy, and the instance serves the next call.
	refuse := func(context.Context) (func(), error) { return nil, fmt.Errorf("%w: no turn", ErrBusy) }
	res, err := rt.InvokeGated(ctx, "f", &Event{}, nil, refuse)
	if !errors.Is(err, ErrBusy) || res == nil || res.Cost.Outcome != "busy" {
		t.Fatalf("refused call: %v, %+v", err, res)
	}
	if ps, _ := rt.Stats("f"); ps.Busy != 0 || ps.Invocations != 2 {
		t.Fatalf("after a refusal: %+v (want nothing busy, 2 invocations)", ps)
	}
	if _, err := rt.Invoke(ctx, "f", &Event{}, nil); err != nil {
		t.Fatalf("the call after a refusal: %v", err)
	}
}
