package gateway

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync/atomic"
	"testing"
	"time"

	"github.com/moongate-edge/moongate/gateway/trigger"
	"github.com/moongate-edge/moongate/luavm"
	"github.com/moongate-edge/moongate/mqtt"
	"github.com/moongate-edge/moongate/store"
)

// quietStore opens a store in a temporary directory that logs nothing,
// closed when the test ends.
func quietStore(t *testing.T, opts store.Options) *store.Store {
	t.Helper()
	opts.Dir, opts.GatewayID, opts.Logger = t.TempDir(), "gw", slog.New(slog.DiscardHandler)
	st, err := store.Open(context.Background(), opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	return st
}

// runGateway makes a gateway of opts (an embedded broker on a random
// loopback port, a quiet runtime and logger unless set) with fns deployed,
// runs it until the test ends and waits until it is ready.
func runGateway(t *testing.T, opts Options, fns ...*Function) *Gateway {
	t.Helper()
	g := newGateway(t, opts, fns...)
	runUntilCleanup(t, g)
	waitFor(t, 10*time.Second, "ready", g.Ready)
	return g
}

// newGateway makes a gateway of opts (an embedded broker on a random
// loopback port, a quiet runtime and logger unless set) with fns
// deployed, not running.
func newGateway(t *testing.T, opts Options, fns ...*Function) *Gateway {
	t.Helper()
	quiet := slog.New(slog.DiscardHandler)
	emb, err := mqtt.NewEmbedded(mqtt.EmbeddedConfig{Listen: "127.0.0.1:0", AllowAnonymous: true}, quiet)
	if err != nil {
		t.Fatal(err)
	}
	opts.Ingest = emb
	if opts.Logger == nil {
		opts.Logger = quiet
	}
	if opts.Runtime == nil {
		opts.Runtime = luavm.NewRuntime(luavm.Options{Logger: quiet})
	}
	g, err := New(opts)
	if err != nil {
		t.Fatal(err)
	}
	if err := g.SetFunctions(context.Background(), fns); err != nil {
		t.Fatal(err)
	}
	return g
}

// runUntilCleanup runs g until the test ends, then checks that Run ended
// without an error.
func runUntilCleanup(t *testing.T, g *Gateway) {
	runCtx, stop := context.WithCancel(context.Background())
	ran := make(chan error, 1)
	go func() { ran <- g.Run(runCtx) }()
	t.Cleanup(func() {
		stop()
		if err := <-ran; err != nil && !errors.Is(err, context.Canceled) {
			t.Errorf("run: %v", err)
		}
	})
}

// TestLateRedeliveryRunsOnce: a QoS 1 message made durable whose PUBACK
// was lost is resent with DUP by its device after it was away for a while,
// while other devices' messages went far past the store's redelivery
// window (64 here, 16,384 by default: 16 s of 1,000 devices at 1 Hz). The
// sender's own slot still recognises it: one record, not two. A DUP
// message never accepted before runs; so does a new message that reuses
// the packet id.
func TestLateRedeliveryRunsOnce(t *testing.T) {
	ctx := context.Background()
	st := quietStore(t, store.Options{DedupeWindow: 64})
	g := runGateway(t, Options{Store: st}, &Function{Name: "f", Fingerprint: "v1", Patterns: []*trigger.Pattern{trigger.MustParsePattern("t/{device}")},
		Spec: luavm.Spec{Source: []byte(`function handle(e, ctx) return {p = e.payload} end`)}})

	records := func(device string) int {
		recs, _, err := st.QueryRecords(ctx, store.Query{Device: device, Limit: 500})
		if err != nil {
			t.Fatal(err)
		}
		return len(recs)
	}
	handle := func(m *mqtt.Message) {
		t.Helper()
		if err := g.handle(ctx, m); err != nil {
			t.Fatal(err)
		}
	}
	a := &mqtt.Message{Topic: "t/late", Payload: []byte(`{"seq":1}`), QoS: 1, ClientID: "late", PacketID: 7}
	handle(a)
	for i := range 200 {
		handle(&mqtt.Message{Topic: "t/other", Payload: []byte{byte(i)}, QoS: 1, ClientID: "other", PacketID: uint16(i + 1)})
	}
	dup := *a
	dup.Duplicate = true
	handle(&dup)
	// A DUP of a message never accepted (its first copy was lost before
	// moongate had it) is a first delivery: it runs.
	handle(&mqtt.Message{Topic: "t/late", Payload: []byte(`{"seq":2}`), QoS: 1, ClientID: "late", PacketID: 8, Duplicate: true})
	// The device's next use of packet id 7 is a new message: it runs.
	handle(&mqtt.Message{Topic: "t/late", Payload: []byte(`{"seq":3}`), QoS: 1, ClientID: "late", PacketID: 7})
	waitFor(t, 10*time.Second, "drained", func() bool { return st.InboxLen() == 0 })
	waitFor(t, 10*time.Second, "records", func() bool { return records("late") >= 3 && records("other") == 200 })
	if n := records("late"); n != 3 {
		t.Fatalf("%d records of the late device, want 3 (redelivered %d)", n, g.Stats().Redelivered)
	}
	if r := g.Stats().Redelivered; r != 1 {
		t.Fatalf("redelivered %d, want 1", r)
	}
}

// TestRefusedRedeliveryRefusedOnce: a QoS 1 message refused at intake
// (over max payload, or an empty topic) is dead-lettered and acknowledged;
// when its PUBACK is lost its device resends it with DUP, which is taken
// for the redelivery it is (acknowledged, no second dead letter), also
// after a restart. A QoS 0 copy has no identity: each is refused.
func TestRefusedRedeliveryRefusedOnce(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	open := func() *store.Store {
		st, err := store.Open(ctx, store.Options{Dir: dir, GatewayID: "gw", Logger: slog.New(slog.DiscardHandler)})
		if err != nil {
			t.Fatal(err)
		}
		return st
	}
	fn := &Function{Name: "f", Fingerprint: "v1", Patterns: []*trigger.Pattern{trigger.MustParsePattern("t/{device}")},
		Spec: luavm.Spec{Source: []byte(`function handle(e, ctx) return {p = e.payload} end`)}}
	big := &mqtt.Message{Topic: "t/big", Payload: make([]byte, 2048), QoS: 1, ClientID: "dev", PacketID: 5}
	empty := &mqtt.Message{Topic: "", Payload: []byte("x"), QoS: 1, ClientID: "dev", PacketID: 6}
	dup := func(m *mqtt.Message) *mqtt.Message { d := *m; d.Duplicate = true; return &d }
	deadLetters := func(st *store.Store) int {
		dls, err := st.ListDeadLetters(ctx, IntakeDeadLetters, 0, 100)
		if err != nil {
			t.Fatal(err)
		}
		return len(dls)
	}
	run := func(st *store.Store, msgs ...*mqtt.Message) Stats {
		g := newGateway(t, Options{Store: st, MaxPayload: 1024}, fn)
		for _, m := range msgs {
			if err := g.handle(ctx, m); err != nil {
				t.Fatal(err)
			}
		}
		return g.Stats()
	}

	st := open()
	stats := run(st, big, dup(big), empty, dup(empty), dup(big))
	if n := deadLetters(st); n != 2 || stats.Rejected != 2 || stats.Redelivered != 3 {
		t.Fatalf("%d dead letters, rejected %d, redelivered %d: want 2, 2, 3", n, stats.Rejected, stats.Redelivered)
	}
	if err := st.Close(); err != nil {
		t.Fatal(err)
	}

	// After a restart (the in-memory window is gone) the sender's slot
	// recognises it; another message reusing the packet id is refused.
	st = open()
	defer st.Close()
	other := &mqtt.Message{Topic: "t/big", Payload: make([]byte, 4096), QoS: 1, ClientID: "dev", PacketID: 5}
	q0 := &mqtt.Message{Topic: "t/big", Payload: make([]byte, 2048)}
	stats = run(st, dup(big), other, q0, dup(q0))
	if n := deadLetters(st); n != 5 || stats.Rejected != 3 || stats.Redelivered != 1 {
		t.Fatalf("after restart: %d dead letters, rejected %d, redelivered %d: want 5, 3, 1", n, stats.Rejected, stats.Redelivered)
	}
}

// flakyInbox fails InboxPending while fail is positive (a read error of
// the store), counting down.
type flakyInbox struct {
	*store.Store
	fail atomic.Int32
}

func (f *flakyInbox) InboxPending(ctx context.Context, after uint64, limit int) ([]store.InboxEntry, error) {
	if f.fail.Add(-1) >= 0 {
		return nil, errors.New("injected read error")
	}
	return f.Store.InboxPending(ctx, after, limit)
}

// TestChainFeederRetriesReadErrors: a chained entry that waits for room in
// a full backlog is read back from the inbox when room frees; a failed read
// is retried, not dropped (which left the entry durable but unrun until
// the next restart).
func TestChainFeederRetriesReadErrors(t *testing.T) {
	ctx := context.Background()
	st := quietStore(t, store.Options{})
	flaky := &flakyInbox{Store: st}
	up := &Function{Name: "up", Fingerprint: "v1", Patterns: []*trigger.Pattern{trigger.MustParsePattern("t/{device}")}, Stream: "s",
		Spec: luavm.Spec{Source: []byte(`function handle(e, ctx) return {p = e.payload} end`)}}
	down := &Function{Name: "down", Fingerprint: "v1", Streams: []string{"s"},
		Spec: luavm.Spec{Source: []byte(`function handle(e, ctx) return {got = e.payload} end`)}}
	// A backlog of one entry: the chained entry always has to wait for
	// the event that made it to finish.
	g := runGateway(t, Options{Store: flaky, Workers: 1, InboxLimit: 1,
		Retry: RetryPolicy{MaxAttempts: 3, InitialBackoff: 10 * time.Millisecond, MaxBackoff: 20 * time.Millisecond}}, up, down)
	flaky.fail.Store(3)
	if err := g.handle(ctx, &mqtt.Message{Topic: "t/d1", Payload: []byte(`1`), QoS: 1, ClientID: "d1", PacketID: 1}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 20*time.Second, "down's record", func() bool {
		recs, _, err := st.QueryRecords(ctx, store.Query{Function: "down", Limit: 10})
		return err == nil && len(recs) == 1
	})
	if n := flaky.fail.Load(); n >= 0 {
		t.Fatalf("the feeder did not meet the read errors (%d left): the test did not test it", n+1)
	}
}

// TestRetriedAttemptsKeepLogsAndCost: every failed attempt of an event
// that is retried is metered and keeps its log lines, not only the last
// one (which goes with the dead letter).
func TestRetriedAttemptsKeepLogsAndCost(t *testing.T) {
	ctx := context.Background()
	st := quietStore(t, store.Options{})
	fails := &Function{Name: "fails", Fingerprint: "v1", Patterns: []*trigger.Pattern{trigger.MustParsePattern("t/{device}")},
		Spec: luavm.Spec{Source: []byte(`function handle(e, ctx) log.info("trying") error("nope") end`)}}
	g := runGateway(t, Options{Store: st, Retry: RetryPolicy{MaxAttempts: 3, InitialBackoff: time.Millisecond, MaxBackoff: 2 * time.Millisecond}}, fails)
	if err := g.handle(ctx, &mqtt.Message{Topic: "t/d1", Payload: []byte(`1`), QoS: 1, ClientID: "d1", PacketID: 1}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 10*time.Second, "the dead letter", func() bool {
		dl, err := st.ListDeadLetters(ctx, "fails", 0, 10)
		return err == nil && len(dl) == 1
	})
	logs, err := st.QueryLogs(ctx, "fails", "", 0, 100)
	if err != nil {
		t.Fatal(err)
	}
	if len(logs) != 3 {
		t.Errorf("%d log lines, want one per attempt (3): %+v", len(logs), logs)
	}
	us, err := st.QueryUsage(ctx, "fails", 0, time.Now().Add(time.Hour).UnixMilli(), time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	var inv, errs int64
	for _, u := range us {
		inv, errs = inv+u.Invocations, errs+u.Errors
	}
	if inv != 3 || errs != 3 {
		t.Errorf("usage: %d invocations, %d errors; want 3 and 3", inv, errs)
	}
}

// busyRuntime answers ErrBusy (every instance taken, as calls over the API
// can make it) to its first busy invocations.
type busyRuntime struct {
	*luavm.Runtime
	busy atomic.Int32
}

func (r *busyRuntime) Invoke(ctx context.Context, name string, ev *luavm.Event, state luavm.StateReader) (*luavm.Result, error) {
	if r.busy.Add(-1) >= 0 {
		return nil, fmt.Errorf("luavm: %s v1: %w: 4 waiting", name, luavm.ErrBusy)
	}
	return r.Runtime.Invoke(ctx, name, ev, state)
}

func (r *busyRuntime) TryInvoke(ctx context.Context, name string, ev *luavm.Event, state luavm.StateReader) (*luavm.Result, error) {
	if r.busy.Add(-1) >= 0 {
		return nil, fmt.Errorf("luavm: %s v1: %w: no instance free", name, luavm.ErrBusy)
	}
	return r.Runtime.TryInvoke(ctx, name, ev, state)
}

func (r *busyRuntime) InvokeGated(ctx context.Context, name string, ev *luavm.Event, state luavm.StateReader, gate luavm.Gate) (*luavm.Result, error) {
	if r.busy.Add(-1) >= 0 {
		return nil, fmt.Errorf("luavm: %s v1: %w: no instance free within 5s", name, luavm.ErrBusy)
	}
	return r.Runtime.InvokeGated(ctx, name, ev, state, gate)
}

// TestBusyIsNotAFailedAttempt: an event whose function has no free
// instance (ErrBusy: nothing ran) waits its turn; it is not a failed
// attempt. Before, calls over the API keeping a function's instances busy
// sent its MQTT events to the dead letters after max_attempts.
func TestBusyIsNotAFailedAttempt(t *testing.T) {
	ctx := context.Background()
	st := quietStore(t, store.Options{})
	rt := &busyRuntime{Runtime: luavm.NewRuntime(luavm.Options{Logger: slog.New(slog.DiscardHandler)})}
	rt.busy.Store(5)
	f := &Function{Name: "f", Fingerprint: "v1", Patterns: []*trigger.Pattern{trigger.MustParsePattern("t/{device}")},
		Spec: luavm.Spec{Source: []byte(`function handle(e) return {ok = true} end`)}}
	g := runGateway(t, Options{Store: st, Runtime: rt, Retry: RetryPolicy{MaxAttempts: 2, InitialBackoff: time.Millisecond, MaxBackoff: 2 * time.Millisecond}}, f)
	if err := g.handle(ctx, &mqtt.Message{Topic: "t/d1", Payload: []byte(`1`), QoS: 1, ClientID: "d1", PacketID: 1}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 10*time.Second, "the record", func() bool { return len(allRecords(t, st, "f")) == 1 })
	if dl, err := st.ListDeadLetters(ctx, "", 0, 10); err != nil || len(dl) != 0 {
		t.Fatalf("dead letters %v (%v), want none", dl, err)
	}
}

// TestCappedFunctionLeavesGatewayTurns: function a runs one event at a time
// (max_concurrency 1) and each takes a while; while its events wait for
// their turn they hold neither the gateway's turns (workers) nor the
// dispatcher's goroutines, so an event of function b runs at once, not
// after a's queue. Before, a's waiting events took every gateway turn and
// b waited seconds.
func TestCappedFunctionLeavesGatewayTurns(t *testing.T) {
	ctx := context.Background()
	st := quietStore(t, store.Options{})
	a := busyFunction("a", "a/{device}", 400, 5*time.Second)
	b := &Function{Name: "b", Fingerprint: "v1", Patterns: []*trigger.Pattern{trigger.MustParsePattern("b/{device}")},
		Spec: luavm.Spec{Source: []byte(`function handle(e) return {ok = true} end`)}}
	g := runGateway(t, Options{Store: st, Workers: 4}, a, b)
	// More devices of a than the dispatcher has goroutines (4 x 16): its
	// lanes wait parked, not on a goroutine each.
	for i := range 80 {
		if err := g.handle(ctx, &mqtt.Message{Topic: fmt.Sprintf("a/d%d", i), Payload: []byte(`{}`), QoS: 1, ClientID: fmt.Sprintf("d%d", i), PacketID: 1}); err != nil {
			t.Fatal(err)
		}
	}
	if err := g.handle(ctx, &mqtt.Message{Topic: "b/dev", Payload: []byte(`{}`), QoS: 1, ClientID: "bdev", PacketID: 1}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 30*time.Second, "b's record", func() bool { return len(allRecords(t, st, "b")) == 1 })
	if n := len(allRecords(t, st, "a")); n > 1 {
		t.Fatalf("b's event ran after %d of a's (400 ms each): a's waiting events held the gateway's turns", n)
	}
}

// TestStopBoundedByShutdownTimeout: a stop does not wait for the queued
// events of a function (they stay in the inbox), nor longer than
// ShutdownTimeout for one still running (its event runs again at the next
// start). It waited for every queued event to run.
func TestStopBoundedByShutdownTimeout(t *testing.T) {
	ctx := context.Background()
	st := quietStore(t, store.Options{})
	a := busyFunction("a", "a/{device}", 4000, 10*time.Second)
	quiet := slog.New(slog.DiscardHandler)
	emb, err := mqtt.NewEmbedded(mqtt.EmbeddedConfig{Listen: "127.0.0.1:0", AllowAnonymous: true}, quiet)
	if err != nil {
		t.Fatal(err)
	}
	rt := luavm.NewRuntime(luavm.Options{Logger: quiet})
	g, err := New(Options{Store: st, Ingest: emb, Runtime: rt, Logger: quiet, ShutdownTimeout: 500 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	if err := g.SetFunctions(ctx, []*Function{a}); err != nil {
		t.Fatal(err)
	}
	runCtx, stop := context.WithCancel(ctx)
	ran := make(chan error, 1)
	go func() { ran <- g.Run(runCtx) }()
	waitFor(t, 10*time.Second, "ready", g.Ready)
	for i := range 4 {
		if err := g.handle(ctx, &mqtt.Message{Topic: fmt.Sprintf("a/d%d", i), Payload: []byte(`{}`), QoS: 1, ClientID: fmt.Sprintf("d%d", i), PacketID: 1}); err != nil {
			t.Fatal(err)
		}
	}
	waitFor(t, 10*time.Second, "a running", func() bool { ps, _ := rt.Stats("a"); return ps.Busy == 1 })
	stop()
	select {
	case err := <-ran:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(3 * time.Second): // the running invocation alone takes 4 s
		t.Fatal("the stop waited for the running invocation (4 s) past ShutdownTimeout (0.5 s), or for the queued events")
	}
	if n := len(allRecords(t, st, "a")); n != 0 {
		t.Fatalf("%d records: the queued events ran after the stop", n)
	}
}

// parkedCount is the number of lanes parked per function.
func (d *dispatcher) parkedCount() map[string]int {
	d.mu.Lock()
	defer d.mu.Unlock()
	m := map[string]int{}
	for k, v := range d.parked {
		m[k] = len(v)
	}
	return m
}

// TestRemovedFunctionWakesParkedLanes: a function removed while lanes of
// its are parked for a turn: they all run (and go to the dead letters, the
// function being gone) instead of staying parked, holding the backlog.
func TestRemovedFunctionWakesParkedLanes(t *testing.T) {
	ctx := context.Background()
	st := quietStore(t, store.Options{})
	a := busyFunction("a", "a/{device}", 300, 5*time.Second)
	g := runGateway(t, Options{Store: st, Workers: 4}, a)
	const n = 5
	for i := range n {
		if err := g.handle(ctx, &mqtt.Message{Topic: fmt.Sprintf("a/d%d", i), Payload: []byte(`{}`), QoS: 1, ClientID: fmt.Sprintf("d%d", i), PacketID: 1}); err != nil {
			t.Fatal(err)
		}
	}
	waitFor(t, 10*time.Second, "lanes parked", func() bool { return g.disp.parkedCount()["a"] > 0 })
	if err := g.SetFunctions(ctx, nil); err != nil { // a removed
		t.Fatal(err)
	}
	waitFor(t, 10*time.Second, "the backlog drained", func() bool { return g.disp.backlog() == 0 })
	if p := g.disp.parkedCount(); len(p) != 0 {
		t.Fatalf("lanes still parked: %v", p)
	}
}

// busyFunction is function name on MQTT pattern, one event at a time
// (max_concurrency 1), each spinning ms milliseconds of wall time within
// its timeout.
func busyFunction(name, pattern string, ms int, timeout time.Duration) *Function {
	src := fmt.Sprintf(`function handle(e)
  local t0 = time.now_ms()
  while time.now_ms() - t0 < %d do end
  return {ok = true}
end`, ms)
	return &Function{Name: name, Fingerprint: "v1", Patterns: []*trigger.Pattern{trigger.MustParsePattern(pattern)},
		Spec: luavm.Spec{Source: []byte(src), MaxConcurrency: 1, Limits: luavm.Limits{Timeout: timeout, MaxSteps: 10_000_000_000}}}
}
