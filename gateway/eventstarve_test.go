package gateway

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/moongate-edge/moongate/luavm"
	"github.com/moongate-edge/moongate/mqtt"
	"github.com/moongate-edge/moongate/store"
)

// Two API clients call function a (max_concurrency 1, 20 ms a call) back
// to back, each waiting its turn in a's queue as documented. An MQTT event
// of a must get an instance too: before TryInvoke it queued with the API
// calls (FIFO) and ran within a call or two. Now it only ever tries while
// a waiting API call takes every freed slot at once, so it never runs as
// long as the clients keep calling.
func TestEventNotStarvedByQueuedAPICalls(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	st := quietStore(t, store.Options{})
	a := busyFunction("a", "a/{device}", 20, 5*time.Second)
	g := runGateway(t, Options{Store: st, Workers: 4, Retry: RetryPolicy{InitialBackoff: 5 * time.Millisecond}}, a)

	var stop atomic.Bool
	var calls atomic.Int64
	var wg sync.WaitGroup
	for range 2 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for !stop.Load() && ctx.Err() == nil {
				r, err := g.Invoke(ctx, "a", &luavm.Event{Trigger: "invoke"}, false, nil)
				if err == nil && r.Err == nil {
					calls.Add(1)
				}
			}
		}()
	}
	defer func() { stop.Store(true); cancel(); wg.Wait() }()
	waitFor(t, 10*time.Second, "API calls running", func() bool { return calls.Load() > 2 })
	if err := g.handle(ctx, &mqtt.Message{Topic: "a/d1", Payload: []byte(`{}`), QoS: 1, ClientID: "d1", PacketID: 1}); err != nil {
		t.Fatal(err)
	}
	sent := time.Now()
	before := calls.Load()
	if !poll(5*time.Second, func() bool { return len(allRecords(t, st, "a")) == 1 }) {
		t.Fatalf("a's event did not run in %v while %d API calls of a ran (each 20 ms): it never finds a's instance free",
			time.Since(sent).Round(time.Millisecond), calls.Load()-before)
	}
	t.Logf("a's event ran after %v", time.Since(sent))
}

// As TestEventNotStarvedByQueuedAPICalls, but the gateway's turns are in
// demand too (a backlog of another function's events, as under any load):
// a's event waits its turn in a's queue, gets the instance, then its gate
// finds no gateway turn free at once (b's events wait for every freed one),
// gives the instance back to the next API call and starts again, for as
// long as both loads last.
func TestEventNotStarvedByQueuedAPICallsWhileTurnsBusy(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	st := quietStore(t, store.Options{})
	a := busyFunction("a", "a/{device}", 20, 5*time.Second)
	b := busyFunction("b", "b/{device}", 20, 5*time.Second)
	b.Spec.MaxConcurrency = 4
	g := runGateway(t, Options{Store: st, Workers: 1, Retry: RetryPolicy{InitialBackoff: 5 * time.Millisecond}}, a, b)

	var stop atomic.Bool
	var wg sync.WaitGroup
	defer func() { stop.Store(true); cancel(); wg.Wait() }()
	// b's backlog: 8 lanes of events, 20 ms each, one gateway turn.
	for d := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; !stop.Load() && ctx.Err() == nil && i < 60; i++ {
				if err := g.handle(ctx, &mqtt.Message{Topic: fmt.Sprintf("b/d%d", d), Payload: []byte(`{}`), QoS: 1, ClientID: fmt.Sprintf("b%d", d), PacketID: uint16(i + 1)}); err != nil {
					return
				}
			}
		}()
	}
	var calls atomic.Int64
	for range 2 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for !stop.Load() && ctx.Err() == nil {
				r, err := g.Invoke(ctx, "a", &luavm.Event{Trigger: "invoke"}, false, nil)
				if err == nil && r.Err == nil {
					calls.Add(1)
				}
			}
		}()
	}
	waitFor(t, 10*time.Second, "API calls and b's events running", func() bool {
		return calls.Load() > 2 && g.Stats().Processed > 2
	})
	if err := g.handle(ctx, &mqtt.Message{Topic: "a/d1", Payload: []byte(`{}`), QoS: 1, ClientID: "d1", PacketID: 1}); err != nil {
		t.Fatal(err)
	}
	sent := time.Now()
	before, bBefore := calls.Load(), g.Stats().Processed
	if !poll(5*time.Second, func() bool { return len(allRecords(t, st, "a")) == 1 }) {
		t.Fatalf("a's event did not run in %v while %d API calls of a and %d events of b ran (each 20 ms)",
			time.Since(sent).Round(time.Millisecond), calls.Load()-before, g.Stats().Processed-bBefore)
	}
	t.Logf("a's event ran after %v", time.Since(sent))
}
