package gateway

import (
	"context"
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
