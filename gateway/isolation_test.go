package gateway

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/moongate-edge/moongate/gateway/trigger"
	"github.com/moongate-edge/moongate/luavm"
	"github.com/moongate-edge/moongate/mqtt"
	"github.com/moongate-edge/moongate/store"
)

// TestSlowFunctionLeavesIntakeToOthers: function a is slow (300 ms an
// event, one at a time) and its devices publish far more than it keeps up
// with. Its events fill its share of the backlog (FunctionBacklog) and then
// only their intake waits: an event of function b is acknowledged and runs
// at once. Before, a's events filled the whole backlog and b's device
// waited for a's queue (b ran after 13 of a's events).
func TestSlowFunctionLeavesIntakeToOthers(t *testing.T) {
	st := quietStore(t, store.Options{})
	a := busyFunction("a", "a/{device}", 300, 10*time.Second)
	b := &Function{Name: "b", Fingerprint: "v1", Patterns: []*trigger.Pattern{trigger.MustParsePattern("b/{device}")},
		Spec: luavm.Spec{Source: []byte(`function handle(e) return {ok = true} end`)}}
	g := runGateway(t, Options{Store: st, Workers: 2, InboxLimit: 8}, a, b)
	// a's devices wait in intake until the test ends.
	devCtx := t.Context()
	for i := range 20 {
		go func() {
			_ = g.handle(devCtx, &mqtt.Message{Topic: fmt.Sprintf("a/d%d", i), Payload: []byte(`{}`), QoS: 1, ClientID: fmt.Sprintf("d%d", i), PacketID: 1})
		}()
	}
	waitFor(t, 10*time.Second, "a's share full", func() bool { return g.FunctionBacklogs()["a"] == 2 })
	hctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if err := g.handle(hctx, &mqtt.Message{Topic: "b/dev", Payload: []byte(`{}`), QoS: 1, ClientID: "bdev", PacketID: 1}); err != nil {
		t.Fatalf("b's event not taken: %v", err)
	}
	waitFor(t, 30*time.Second, "b's record", func() bool { return len(allRecords(t, st, "b")) == 1 })
	// Before, b ran after 13 of a's; a loaded machine may let a few run.
	if n := len(allRecords(t, st, "a")); n > 4 {
		t.Fatalf("b's event ran after %d of a's (300 ms each): a's events held the whole backlog", n)
	}
	// b's room comes back once its worker is done with the job (just after
	// the commit that made the record).
	waitFor(t, 10*time.Second, "b's room given back", func() bool { _, ok := g.FunctionBacklogs()["b"]; return !ok })
	if bl := g.Stats().Backlog; bl > 2 {
		t.Errorf("backlog %d with b done: a holds more than its share (2)", bl)
	}
	if fb := g.FunctionBacklogs(); fb["a"] != 2 || len(fb) != 1 {
		t.Errorf("function backlogs %v, want a: 2 only", fb)
	}
}

// TestSlowChainLeavesOtherChains: chained events of a slow function wait
// for its share of the backlog without holding up the chained events of
// other functions. Before, every chained entry that found no room queued
// behind the first one waiting, whatever its function: fast's event ran
// after slow's queue.
func TestSlowChainLeavesOtherChains(t *testing.T) {
	ctx := context.Background()
	st := quietStore(t, store.Options{})
	src1 := &Function{Name: "src1", Fingerprint: "v1", Patterns: []*trigger.Pattern{trigger.MustParsePattern("x/{device}")}, Stream: "to-slow",
		Spec: luavm.Spec{Source: []byte(`function handle(e) return {v = 1} end`)}}
	src2 := &Function{Name: "src2", Fingerprint: "v1", Patterns: []*trigger.Pattern{trigger.MustParsePattern("y/{device}")}, Stream: "to-fast",
		Spec: luavm.Spec{Source: []byte(`function handle(e) return {v = 2} end`)}}
	slow := busyFunction("slow", "unused/{device}", 100, 10*time.Second)
	slow.Patterns, slow.Streams = nil, []string{"to-slow"}
	fast := &Function{Name: "fast", Fingerprint: "v1", Streams: []string{"to-fast"},
		Spec: luavm.Spec{Source: []byte(`function handle(e) return {ok = true} end`)}}
	g := runGateway(t, Options{Store: st, Workers: 2, InboxLimit: 8}, src1, src2, slow, fast)
	const n = 30
	for i := range n {
		if err := g.handle(ctx, &mqtt.Message{Topic: fmt.Sprintf("x/d%d", i), Payload: []byte(`{}`), QoS: 1, ClientID: fmt.Sprintf("d%d", i), PacketID: 1}); err != nil {
			t.Fatal(err)
		}
	}
	waitFor(t, 20*time.Second, "src1's records", func() bool { return len(allRecords(t, st, "src1")) == n })
	if err := g.handle(ctx, &mqtt.Message{Topic: "y/dev", Payload: []byte(`{}`), QoS: 1, ClientID: "ydev", PacketID: 1}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 30*time.Second, "fast's record", func() bool { return len(allRecords(t, st, "fast")) == 1 })
	// Before, after 23 of slow's; a loaded machine may let a few run.
	if got := len(allRecords(t, st, "slow")); got > 8 {
		t.Fatalf("fast's chained event ran after %d of slow's (100 ms each)", got)
	}
	waitFor(t, 30*time.Second, "slow's records", func() bool { return len(allRecords(t, st, "slow")) == n })
}

// TestStateQuotaDeadLettersTheEvent: a function whose state would grow past
// its quota (store.quotas.state) has that event dead-lettered with the
// quota error, nothing of it committed, at once rather than retried; its
// later events that fit still run, and another function's state writes
// are not affected.
func TestStateQuotaDeadLettersTheEvent(t *testing.T) {
	ctx := context.Background()
	st := quietStore(t, store.Options{Quotas: map[string]store.Quota{store.SpaceState: {MaxBytes: 4000}}})
	src := `function handle(e)
  local r = json.decode(e.payload)
  if r.del then state.delete(r.key) else state.set(r.key, string.rep("x", r.n)) end
  return {key = r.key}
end`
	mk := func(name string) *Function {
		return &Function{Name: name, Fingerprint: "v1", Patterns: []*trigger.Pattern{trigger.MustParsePattern(name + "/{device}")},
			Spec: luavm.Spec{Source: []byte(src)}}
	}
	g := runGateway(t, Options{Store: st, Retry: RetryPolicy{MaxAttempts: 5, InitialBackoff: time.Second, MaxBackoff: time.Second}}, mk("hog"), mk("other"))
	send := func(fn string, pid uint16, payload string) {
		t.Helper()
		if err := g.handle(ctx, &mqtt.Message{Topic: fn + "/d", Payload: []byte(payload), QoS: 1, ClientID: fn, PacketID: pid}); err != nil {
			t.Fatal(err)
		}
	}
	send("hog", 1, `{"key":"a","n":1500}`)
	send("hog", 2, `{"key":"b","n":1500}`)
	send("hog", 3, `{"key":"c","n":1500}`) // over 4000
	send("other", 1, `{"key":"a","n":1500}`)
	send("other", 2, `{"key":"b","n":1500}`)
	waitFor(t, 10*time.Second, "hog's dead letter and other's records", func() bool {
		dls, err := st.ListDeadLetters(ctx, "hog", 0, 10)
		return err == nil && len(dls) == 1 && len(allRecords(t, st, "other")) == 2
	})
	dls, _ := st.ListDeadLetters(ctx, "hog", 0, 10)
	if !strings.Contains(dls[0].Error, "quota") || !strings.Contains(dls[0].Error, `"hog"`) {
		t.Fatalf("dead letter error %q", dls[0].Error)
	}
	if g.Stats().Failed != 1 {
		t.Errorf("failed %d: the event was retried", g.Stats().Failed)
	}
	if _, ok, _ := st.GetState(ctx, "hog", "c"); ok {
		t.Fatal("the refused state change was stored")
	}
	// Room made by a delete: the next write fits.
	send("hog", 4, `{"key":"a","del":true}`)
	send("hog", 5, `{"key":"c","n":1500}`)
	waitFor(t, 10*time.Second, "hog's c", func() bool { _, ok, _ := st.GetState(ctx, "hog", "c"); return ok })
	if n := len(allRecords(t, st, "hog")); n != 4 {
		t.Fatalf("hog: %d records, want 4", n)
	}
}

// TestFunctionBacklogMetric: /metrics shows the events a function holds of
// the backlog, at most its share.
func TestFunctionBacklogMetric(t *testing.T) {
	fnDir := t.TempDir()
	writeFunction(t, fnDir, "slow", `
function handle(e)
  local t0 = time.now_ms()
  while time.now_ms() - t0 < 200 do end
  return {ok = true}
end`, "triggers:\n  - mqtt: devices/{device}/telemetry\nmax_concurrency: 1\nlimits: {timeout: 10s, max_steps: 10000000000}\n")
	p := startInProcess(t, testConfig(t.TempDir(), fnDir, "pipeline: {inbox_limit: 8, function_backlog: 3}\n"))
	c := connect(t, "tcp://"+p.d.MQTTAddr().String(), "d1", true)
	for range 10 {
		c.Publish("devices/d1/telemetry", 1, false, []byte(`{}`)) // not waited for: intake waits
	}
	const want = `moongate_function_backlog{function="slow"} 3`
	waitFor(t, 20*time.Second, want, func() bool {
		_, m := httpGet(t, "http://"+p.d.HTTPAddr().String()+"/metrics")
		return strings.Contains(m, want+"\n")
	})
}

// TestStateWriteWhileResumingRuns: a state change written over the API
// while Run is still resuming the inbox backlog runs the functions
// watching it once the resume is done. Its chained entry is past the
// resume's bound, and it used to be queued only once the gateway was
// ready: it waited in the inbox until the next restart.
func TestStateWriteWhileResumingRuns(t *testing.T) {
	ctx := context.Background()
	st := quietStore(t, store.Options{})
	slow := busyFunction("slow", "slow/{device}", 100, 10*time.Second)
	watch := &Function{Name: "watch", Fingerprint: "v1", StateWatches: []trigger.StateTrigger{{Function: "cfg", Prefix: ""}},
		Spec: luavm.Spec{Source: []byte(`function handle(e) return {ok = true} end`)}}
	// A backlog that takes a while to resume: a share of one entry, 100 ms
	// an event.
	var entries []store.InboxEntry
	for i := range 8 {
		ev := luavm.Event{ID: fmt.Sprint("e", i), Topic: "slow/d", Payload: []byte(`{}`), Trigger: "mqtt"}
		entries = append(entries, store.InboxEntry{Function: "slow", Key: "d", Event: encodeEvent(&ev)})
	}
	if _, err := st.Enqueue(ctx, entries); err != nil {
		t.Fatal(err)
	}
	g := newGateway(t, Options{Store: st, InboxLimit: 4}, slow, watch)
	runUntilCleanup(t, g)
	waitFor(t, 10*time.Second, "the resume under way", func() bool { return len(allRecords(t, st, "slow")) >= 1 })
	if g.Ready() {
		t.Fatal("the resume ended before the state write: the test did not test it")
	}
	if err := g.WriteState(ctx, store.StateChange{Function: "cfg", Op: store.StateSet, Key: "mode", Value: []byte(`"fast"`)}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 20*time.Second, "watch's record", func() bool { return len(allRecords(t, st, "watch")) == 1 })
}

// TestDirectInvocationsBoundedByWorkers: calls over the API and HTTP
// triggers (Invoke) run at most Options.Workers at once, whatever the
// functions' max_concurrency (each may take its max_memory: a flood of
// requests to many functions ran 12 at once with 2 workers), apart from
// the events' turns: an MQTT event runs while they are all taken. A call
// that finds no turn within its queue timeout is ErrBusy, nothing run.
func TestDirectInvocationsBoundedByWorkers(t *testing.T) {
	ctx := context.Background()
	st := quietStore(t, store.Options{})
	rt := luavm.NewRuntime(luavm.Options{Logger: slog.New(slog.DiscardHandler)})
	// Each call returns when it ran: [t0, t1) in ms.
	const spanLua = `function handle(e)
  local t0 = time.now_ms()
  while time.now_ms() - t0 < 300 do end
  return {t0 = t0, t1 = time.now_ms()}
end`
	var fns []*Function
	for i := range 3 {
		f := busyFunction(fmt.Sprint("f", i), fmt.Sprintf("f%d/{device}", i), 300, 10*time.Second)
		f.Spec.Source, f.Spec.MaxConcurrency = []byte(spanLua), 4
		fns = append(fns, f)
	}
	ev := &Function{Name: "ev", Fingerprint: "v1", Patterns: []*trigger.Pattern{trigger.MustParsePattern("ev/{device}")},
		Spec: luavm.Spec{Source: []byte(`function handle(e) return {ok = true} end`)}}
	quick := busyFunction("quick", "quick/{device}", 1, 10*time.Second)
	quick.Spec.QueueTimeout = 50 * time.Millisecond
	g := runGateway(t, Options{Store: st, Runtime: rt, Workers: 2}, append(fns, ev, quick)...)
	type span struct{ T0, T1 int64 }
	var mu sync.Mutex
	var spans []span
	var wg sync.WaitGroup
	var busy atomic.Int32
	for i := range 12 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			inv, err := g.Invoke(ctx, fmt.Sprint("f", i%3), &luavm.Event{Trigger: "invoke"}, true, nil)
			switch {
			case err != nil:
				t.Error(err)
			case errors.Is(inv.Err, luavm.ErrBusy):
				busy.Add(1)
			case inv.Err != nil:
				t.Error(inv.Err)
			default:
				var sp span
				if err := json.Unmarshal(inv.Result.Value, &sp); err != nil {
					t.Error(err)
				}
				mu.Lock()
				spans = append(spans, sp)
				mu.Unlock()
			}
		}()
	}
	waitFor(t, 10*time.Second, "direct invocations running", func() bool { return len(g.direct) > 0 })
	if err := g.handle(ctx, &mqtt.Message{Topic: "ev/d", Payload: []byte(`{}`), QoS: 1, ClientID: "d", PacketID: 1}); err != nil {
		t.Fatal(err)
	}
	wg.Wait()
	// The most calls running at one time, from their spans.
	most, last := 0, int64(0)
	for _, a := range spans {
		n := 0
		for _, b := range spans {
			if b.T0 <= a.T0 && a.T0 < b.T1 {
				n++
			}
		}
		most, last = max(most, n), max(last, a.T1)
	}
	if most > 2 {
		t.Fatalf("%d direct invocations ran at once with 2 workers", most)
	}
	// 12 calls of 300 ms, two at a time: 1.8 s, within the 5 s queue timeout.
	if n := busy.Load(); n != 0 || len(spans) != 12 {
		t.Errorf("%d calls busy, %d ran", n, len(spans))
	}
	// The MQTT event ran while the direct calls held both their turns.
	if recs := allRecords(t, st, "ev"); len(recs) != 1 || recs[0].ProcessedTS >= last {
		t.Errorf("the MQTT event ran after the direct calls (%d records; last call ended %d)", len(recs), last)
	}
	// Both turns taken for 300 ms: a call with a 50 ms queue timeout is busy.
	for range 2 {
		wg.Add(1)
		go func() { defer wg.Done(); _, _ = g.Invoke(ctx, "f0", &luavm.Event{Trigger: "invoke"}, false, nil) }()
	}
	waitFor(t, 10*time.Second, "both turns taken", func() bool { return len(g.direct) == 2 })
	inv, err := g.Invoke(ctx, "quick", &luavm.Event{Trigger: "invoke"}, true, nil)
	if err != nil || !errors.Is(inv.Err, luavm.ErrBusy) {
		t.Errorf("a call finding no turn: %v, %v; want ErrBusy", err, inv.Err)
	}
	wg.Wait()
	if recs := allRecords(t, st, "quick"); len(recs) != 0 {
		t.Errorf("the busy call committed %d records", len(recs))
	}
}

// TestDirectTurnNotHeldWhileWaiting: a direct call waiting for an instance
// of a busy function (its max_concurrency taken) holds no direct turn: a
// call to another, idle function runs. (It held one: the idle function's
// call was refused ErrBusy with a single invocation running of 2 workers.)
func TestDirectTurnNotHeldWhileWaiting(t *testing.T) {
	ctx := context.Background()
	st := quietStore(t, store.Options{})
	rt := luavm.NewRuntime(luavm.Options{Logger: slog.New(slog.DiscardHandler)})
	slow := busyFunction("slow", "slow/{device}", 1500, 10*time.Second) // max_concurrency 1
	quick := busyFunction("quick", "quick/{device}", 1, 10*time.Second)
	quick.Spec.QueueTimeout = 300 * time.Millisecond
	g := runGateway(t, Options{Store: st, Runtime: rt, Workers: 2}, slow, quick)
	done := make(chan struct{}, 2)
	for range 2 {
		go func() { _, _ = g.Invoke(ctx, "slow", &luavm.Event{Trigger: "invoke"}, false, nil); done <- struct{}{} }()
	}
	waitFor(t, 10*time.Second, "slow running", func() bool { ps, _ := rt.Stats("slow"); return ps.Busy == 1 })
	waitFor(t, 10*time.Second, "the second call waiting for slow's only instance", func() bool { ps, _ := rt.Stats("slow"); return ps.Waiting == 1 })
	inv, err := g.Invoke(ctx, "quick", &luavm.Event{Trigger: "invoke"}, false, nil)
	ps, _ := rt.Stats("slow")
	if err != nil || errors.Is(inv.Err, luavm.ErrBusy) {
		t.Errorf("call of idle function quick: %v, %v (slow instances running: %d of 2 workers)", err, inv.Err, ps.Busy)
	}
	<-done
	<-done
}

// TestWriteStateRacingResumeQueuedOnce: state writes racing Run's start:
// each chained entry is queued once, by the resume (committed before it
// read its bound) or by WriteState (from the bound on). Before, a write
// committed before the bound was read, that looked after it was, queued
// its entry a second time (a duplicate run, refused by the store).
func TestWriteStateRacingResumeQueuedOnce(t *testing.T) {
	ctx := context.Background()
	for iter := range 20 {
		st := quietStore(t, store.Options{})
		watch := &Function{Name: "watch", Fingerprint: "v1", StateWatches: []trigger.StateTrigger{{Function: "cfg", Prefix: ""}},
			Spec: luavm.Spec{Source: []byte(`function handle(e) return {ok = true} end`)}}
		g := newGateway(t, Options{Store: st}, watch)
		var stop atomic.Bool
		var wrote atomic.Int64
		var wg sync.WaitGroup
		for w := range 8 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for i := 0; !stop.Load(); i++ {
					if err := g.WriteState(ctx, store.StateChange{Function: "cfg", Op: store.StateSet, Key: fmt.Sprint("k", w, "-", i), Value: []byte(`1`)}); err == nil {
						wrote.Add(1)
					}
				}
			}()
		}
		waitFor(t, 10*time.Second, "writes under way", func() bool { return wrote.Load() > 0 })
		runCtx, cancel := context.WithCancel(ctx)
		ran := make(chan error, 1)
		go func() { ran <- g.Run(runCtx) }()
		waitFor(t, 10*time.Second, "ready", g.Ready)
		atReady := wrote.Load()
		waitFor(t, 10*time.Second, "writes after ready", func() bool { return wrote.Load() > atReady+8 })
		stop.Store(true)
		wg.Wait()
		waitFor(t, 20*time.Second, "watch's records", func() bool { return int64(len(allRecords(t, st, "watch"))) == wrote.Load() })
		waitFor(t, 5*time.Second, "inbox and backlog drained", func() bool { return st.InboxLen() == 0 && g.Stats().Backlog == 0 })
		cancel()
		<-ran
		if d := g.stats.dups.Load(); d > 0 {
			t.Fatalf("iteration %d: %d state writes' chained entries queued twice (ran as duplicates), %d writes", iter, d, wrote.Load())
		}
	}
}

// TestSlowFunctionLeavesAGatewayTurn: a function's events take at most
// pipeline.workers - 1 of the gateway's turns, so one turn stays for the
// other functions. With the defaults (max_concurrency 4; workers 2 x CPUs:
// 2 on a Pi Zero), a slow function took every turn and another function's
// event waited behind its invocations (here after two of 300 ms).
func TestSlowFunctionLeavesAGatewayTurn(t *testing.T) {
	st := quietStore(t, store.Options{})
	a := busyFunction("a", "a/{device}", 300, 10*time.Second)
	a.Spec.MaxConcurrency = 4
	b := &Function{Name: "b", Fingerprint: "v1", Patterns: []*trigger.Pattern{trigger.MustParsePattern("b/{device}")},
		Spec: luavm.Spec{Source: []byte(`function handle(e) return {ok = true} end`)}}
	g := runGateway(t, Options{Store: st, Workers: 2}, a, b)
	devCtx := t.Context()
	for i := range 6 {
		go func() {
			_ = g.handle(devCtx, &mqtt.Message{Topic: fmt.Sprintf("a/d%d", i), Payload: []byte(`{}`), QoS: 1, ClientID: fmt.Sprintf("d%d", i), PacketID: 1})
		}()
	}
	waitFor(t, 10*time.Second, "a's events queued", func() bool { return g.FunctionBacklogs()["a"] >= 4 })
	if err := g.handle(t.Context(), &mqtt.Message{Topic: "b/dev", Payload: []byte(`{}`), QoS: 1, ClientID: "bdev", PacketID: 1}); err != nil {
		t.Fatalf("b's event not taken: %v", err)
	}
	waitFor(t, 30*time.Second, "b's record", func() bool { return len(allRecords(t, st, "b")) == 1 })
	if n := len(allRecords(t, st, "a")); n > 1 {
		t.Fatalf("b's event ran after %d of a's (300 ms each): a's events held every gateway turn", n)
	}
}
