package luavm

import (
	"context"
	"fmt"
	"testing"
	"time"
)

// A call that held an instance of v1 and waited for its gate turn while v2
// was deployed keeps the turn when it moves to v2 and then waits for v2's
// instance holding it. A call that already holds v2's only instance waits
// for that same turn: neither can go on until the queue timeout fails one
// of them (ErrBusy, without running). InvokeGated's contract: "a call
// waiting for its function's instance holds none of the gate's turns".
func TestGateTurnNotHeldWhileWaitingForNewVersion(t *testing.T) {
	rt := newTestRuntime(t)
	deploy(t, rt, "fn", fmt.Sprintf(blockingSrc, "v1"), func(s *Spec) {
		s.MaxConcurrency, s.QueueTimeout = 2, 3*time.Second
		s.Limits.Timeout = time.Minute
	})
	turns := make(chan struct{}, 1) // the caller's bound: one call at a time
	asked := make(chan struct{}, 8)
	gate := func(ctx context.Context) (func(), error) {
		asked <- struct{}{}
		select {
		case turns <- struct{}{}:
			return func() { <-turns }, nil
		case <-ctx.Done():
			return nil, fmt.Errorf("%w: %w", ErrBusy, ctx.Err())
		}
	}
	type out struct {
		res *Result
		err error
	}
	call := func(state StateReader) chan out {
		ch := make(chan out, 1)
		go func() {
			res, err := rt.InvokeGated(context.Background(), "fn", &Event{}, state, gate)
			ch <- out{res, err}
		}()
		return ch
	}
	bs := newBlockingState()
	a := call(bs) // v1, holds the turn, blocked in the function
	<-asked
	<-bs.entered
	c := call(nil) // v1's second instance, waits for the turn
	<-asked
	deploy(t, rt, "fn", `function handle() return "v2" end`, func(s *Spec) {
		s.Version = 2
		s.MaxConcurrency, s.QueueTimeout = 1, 3*time.Second
	})
	b := call(nil) // v2's only instance, waits for the turn
	<-asked
	close(bs.release) // a ends: c gets the turn, finds v1 retired
	if o := <-a; o.err != nil {
		t.Fatal(o.err)
	}
	start := time.Now()
	for name, ch := range map[string]chan out{"b": b, "c": c} {
		o := <-ch
		if o.err != nil {
			t.Errorf("call %s failed after %v: %v", name, time.Since(start).Round(time.Millisecond), o.err)
		}
	}
}
