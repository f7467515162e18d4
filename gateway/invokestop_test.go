package gateway

import (
	"context"
	"log/slog"
	"strconv"
	"testing"
	"time"

	"github.com/moongate-edge/moongate/luavm"
	"github.com/moongate-edge/moongate/mqtt"
	"github.com/moongate-edge/moongate/store"
)

// waitingEventStopSetup runs a gateway whose function a (one instance) is held by
// a call over the API for holdMS, with an event of a waiting for that
// instance (InvokeGated) when the returned stop is called.
func waitingEventStopSetup(t *testing.T, opts Options, queue time.Duration, holdMS int) (g *Gateway, rt *luavm.Runtime, st *store.Store, stop func() <-chan error) {
	t.Helper()
	ctx := context.Background()
	st = quietStore(t, store.Options{})
	quiet := slog.New(slog.DiscardHandler)
	emb, err := mqtt.NewEmbedded(mqtt.EmbeddedConfig{Listen: "127.0.0.1:0", AllowAnonymous: true}, quiet)
	if err != nil {
		t.Fatal(err)
	}
	rt = luavm.NewRuntime(luavm.Options{Logger: quiet})
	t.Cleanup(rt.Close)
	a := busyFunction("a", "a/{device}", 0, 10*time.Second)
	a.Spec.Source = []byte(`function handle(e)
  if e.payload == "hold" then
    local t0 = time.now_ms()
    while time.now_ms() - t0 < ` + itoa(holdMS) + ` do end
  end
  return {ok = true}
end`)
	a.Spec.QueueTimeout = queue
	opts.Store, opts.Ingest, opts.Runtime, opts.Logger = st, emb, rt, quiet
	g, err = New(opts)
	if err != nil {
		t.Fatal(err)
	}
	if err := g.SetFunctions(ctx, []*Function{a}); err != nil {
		t.Fatal(err)
	}
	runCtx, cancel := context.WithCancel(ctx)
	ran := make(chan error, 1)
	done := make(chan struct{})
	go func() { ran <- g.Run(runCtx); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
	waitFor(t, 10*time.Second, "ready", g.Ready)
	go func() {
		_, _ = g.Invoke(ctx, "a", &luavm.Event{Trigger: "invoke", Payload: []byte("hold")}, false, nil)
	}()
	waitFor(t, 10*time.Second, "the API call holds a's instance", func() bool { s, _ := rt.Stats("a"); return s.Busy == 1 })
	if err := g.handle(ctx, &mqtt.Message{Topic: "a/d1", Payload: []byte(`{}`), QoS: 1, ClientID: "d1", PacketID: 1}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 10*time.Second, "a's event waits for the instance", func() bool { s, _ := rt.Stats("a"); return s.Waiting == 1 })
	return g, rt, st, func() <-chan error { cancel(); return ran }
}

func itoa(n int) string { return strconv.Itoa(n) }

// docs/architecture.md (Lifecycle): at a stop moongate "lets running
// invocations finish and commit ..., leaves queued entries in the inbox".
// An event waiting for an instance of its function has not started; its
// wait (luavm InvokeGated with ictx, which a stop does not end) goes on
// after the stop: the stop waits for it and the event runs after the stop.
func TestStopDoesNotWaitForEventWaitingForInstance(t *testing.T) {
	_, _, st, stop := waitingEventStopSetup(t, Options{}, luavm.DefaultQueueTimeout, 2000)
	start := time.Now()
	ran := stop()
	select {
	case <-ran:
	case <-time.After(10 * time.Second):
		t.Fatal("no stop")
	}
	took := time.Since(start)
	n := len(allRecords(t, st, "a"))
	t.Logf("stop took %v; records of a: %d", took.Round(time.Millisecond), n)
	if took > time.Second || n != 0 {
		t.Fatalf("the stop waited %v for an event that was waiting for an instance (not running), and it ran after the stop began (%d records of a, want 0: it stays in the inbox)", took.Round(time.Millisecond), n)
	}
}

// Past ShutdownTimeout the gateway leaves the event waiting for the
// instance; the daemon then closes the runtime (closeAll), and the
// event's InvokeGated returns ErrClosed: process takes it for a failed
// attempt, and at max_attempts dead-letters an event that never ran.
func TestRuntimeClosedAtStopDoesNotDeadLetterWaitingEvent(t *testing.T) {
	_, rt, st, stop := waitingEventStopSetup(t, Options{ShutdownTimeout: 300 * time.Millisecond, Retry: RetryPolicy{MaxAttempts: 1}}, 30*time.Second, 1500)
	select {
	case <-stop():
	case <-time.After(10 * time.Second):
		t.Fatal("no stop")
	}
	rt.Close() // as Daemon.closeAll does once Run returned; the store is still open
	ok := poll(3*time.Second, func() bool {
		dl, _ := st.ListDeadLetters(context.Background(), "a", 0, 10)
		return len(dl) > 0
	})
	if ok {
		dl, _ := st.ListDeadLetters(context.Background(), "a", 0, 10)
		t.Fatalf("an event that never ran was dead-lettered at the stop: %q (attempts %d)", dl[0].Error, dl[0].Attempts)
	}
	pend, _ := st.InboxPending(context.Background(), 0, 10)
	if len(pend) != 1 {
		t.Fatalf("inbox holds %d entries, want the event (1)", len(pend))
	}
}
