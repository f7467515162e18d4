package gateway

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/moongate-edge/moongate/luavm"
	"github.com/moongate-edge/moongate/store"
)

// A direct call (HTTP trigger, invoke) whose caller goes away while it
// waits for an instance of its function has not run: like a call refused
// busy it must leave nothing (docs/api.md: "nothing ran: no logs, no
// usage, not a failed invocation"). It is metered as a failed invocation
// instead (a "timeout"), and counted in moongate_invocations_failed_total.
func TestInvokeGivenUpWhileWaitingIsNotAFailure(t *testing.T) {
	st := quietStore(t, store.Options{})
	rt := luavm.NewRuntime(luavm.Options{})
	t.Cleanup(rt.Close)
	f := &Function{Name: "f", Fingerprint: "v1", Spec: luavm.Spec{Source: []byte(`function handle(e)
  if e.payload == "hold" then
    local t0 = time.now_ms()
    while time.now_ms() - t0 < 1500 do end
  end
  return {ok = true}
end`), MaxConcurrency: 1, QueueTimeout: 30 * time.Second, Limits: luavm.Limits{Timeout: 10 * time.Second, MaxSteps: 10_000_000_000}}}
	g := runGateway(t, Options{Store: st, Runtime: rt}, f)

	held := make(chan *InvokeResult, 1)
	go func() {
		r, err := g.Invoke(context.Background(), "f", &luavm.Event{Trigger: "invoke", Payload: []byte("hold")}, true, nil)
		if err != nil {
			t.Error(err)
		}
		held <- r
	}()
	waitFor(t, 10*time.Second, "the holder runs", func() bool { s, _ := rt.Stats("f"); return s.Busy == 1 })

	ctx, cancel := context.WithCancel(context.Background())
	gone := make(chan *InvokeResult, 1)
	go func() {
		r, err := g.Invoke(ctx, "f", &luavm.Event{Trigger: "http", HTTP: &luavm.HTTPRequest{Method: "POST", Path: "/"}}, true, nil)
		if err != nil {
			t.Error(err)
		}
		gone <- r
	}()
	waitFor(t, 10*time.Second, "the second call waits", func() bool { s, _ := rt.Stats("f"); return s.Waiting == 1 })
	cancel() // the HTTP client hangs up
	r := <-gone
	if r == nil {
		t.FailNow()
	}
	if h := <-held; h == nil || h.Err != nil {
		t.Fatalf("holder: %+v", h)
	}
	us, err := st.QueryUsage(context.Background(), "f", 0, time.Now().Add(time.Hour).UnixMilli(), time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	var inv, errs int64
	for _, u := range us {
		inv, errs = inv+u.Invocations, errs+u.Errors
	}
	t.Logf("given-up call: err=%v committed=%v outcome=%q; usage invocations=%d errors=%d; failed=%d", r.Err, r.Committed, r.Result.Cost.Outcome, inv, errs, g.Stats().Failed)
	if !errors.Is(r.Err, luavm.ErrBusy) || r.Committed || inv != 1 || errs != 0 || g.Stats().Failed != 0 {
		t.Fatalf("a call that never ran (its caller left while it waited for an instance) was metered as a failed invocation: err=%v (want luavm.ErrBusy) committed=%v, usage %d invocations %d errors (want 1, 0), failed counter %d (want 0)",
			r.Err, r.Committed, inv, errs, g.Stats().Failed)
	}
}
