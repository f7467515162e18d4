package gateway

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"
	"unsafe"

	"github.com/moongate-edge/moongate/gateway/trigger"
	"github.com/moongate-edge/moongate/luavm"
	"github.com/moongate-edge/moongate/mqtt"
	"github.com/moongate-edge/moongate/store"
)

// timerHarness runs runSchedule on a fake wall clock and a fake timer: the
// test sees each wait the loop asks for and decides what the wall clock
// reads when it ends. Everything the loop fires before asking for its next
// wait has been recorded by the time wait returns.
type timerHarness struct {
	t     *testing.T
	mu    sync.Mutex
	now   time.Time
	waits chan fakeWait
	cur   fakeWait
	fired []firing
	stop  context.CancelFunc
	done  chan struct{}
}

type fakeWait struct {
	d time.Duration
	c chan time.Time
}

type firing struct{ tick, at time.Time }

func newTimerHarness(t *testing.T, spec string, start time.Time) *timerHarness {
	t.Helper()
	m, err := trigger.ParseManifest("f.yaml", []byte("triggers:\n  - timer: \""+spec+"\"\n"))
	if err != nil {
		t.Fatal(err)
	}
	s := m.Schedules()[0]
	ctx, cancel := context.WithCancel(context.Background())
	h := &timerHarness{t: t, now: start, waits: make(chan fakeWait), stop: cancel, done: make(chan struct{})}
	clock := func() time.Time { h.mu.Lock(); defer h.mu.Unlock(); return h.now }
	after := func(d time.Duration) (<-chan time.Time, func()) {
		w := fakeWait{d: d, c: make(chan time.Time, 1)}
		select {
		case h.waits <- w:
		case <-ctx.Done():
		}
		return w.c, func() {}
	}
	fire := func(tick time.Time) {
		h.mu.Lock()
		defer h.mu.Unlock()
		h.fired = append(h.fired, firing{tick, h.now})
	}
	go func() { defer close(h.done); runSchedule(ctx, s, time.Time{}, time.Time{}, clock, after, fire, nil) }()
	t.Cleanup(func() { cancel(); <-h.done })
	return h
}

// wait returns the next wait the loop asks for.
func (h *timerHarness) wait() time.Duration {
	h.t.Helper()
	select {
	case w := <-h.waits:
		h.cur = w
		return w.d
	case <-time.After(10 * time.Second): // a deadlock guard, not a timing assumption
		h.t.Fatal("the timer loop asked for no wait")
		return 0
	}
}

// elapse ends the current wait with the wall clock reading at.
func (h *timerHarness) elapse(at time.Time) {
	h.mu.Lock()
	h.now = at
	h.mu.Unlock()
	h.cur.c <- at
}

// advanceTo lets the wall clock run with the timer, wait after wait, until
// it reads end.
func (h *timerHarness) advanceTo(end time.Time) {
	h.t.Helper()
	for {
		h.mu.Lock()
		now := h.now
		h.mu.Unlock()
		if !now.Before(end) {
			return
		}
		next := now.Add(h.cur.d)
		if next.After(end) {
			next = end
		}
		h.elapse(next)
		h.wait()
	}
}

func (h *timerHarness) fires() []firing {
	h.mu.Lock()
	defer h.mu.Unlock()
	return append([]firing(nil), h.fired...)
}

// check verifies that every firing happened at its tick's time (the wall
// clock within maxTimerLate of the tick), that ticks strictly increase, and
// that the ticks are want.
func (h *timerHarness) check(want ...time.Time) {
	h.t.Helper()
	got := h.fires()
	for i, f := range got {
		if f.at.Before(f.tick) || f.at.Sub(f.tick) > maxTimerLate {
			h.t.Errorf("firing %d: tick %s fired at %s", i, f.tick.Format(time.DateTime), f.at.Format(time.DateTime))
		}
		if i > 0 && !f.tick.After(got[i-1].tick) {
			h.t.Errorf("firing %d: tick %s fired again (after %s)", i, f.tick.Format(time.DateTime), got[i-1].tick.Format(time.DateTime))
		}
	}
	if len(got) != len(want) {
		h.t.Fatalf("fired %v, want ticks %v", got, want)
	}
	for i := range want {
		if !got[i].tick.Equal(want[i]) {
			h.t.Errorf("tick %d = %s, want %s", i, got[i].tick.Format(time.DateTime), want[i].Format(time.DateTime))
		}
	}
}

func at(hh, mm, ss int) time.Time { return time.Date(2026, 11, 28, hh, mm, ss, 0, time.UTC) }

// A backward step of the wall clock does not fire a tick twice.
func TestTimerClockStepsBack(t *testing.T) {
	h := newTimerHarness(t, "* * * * *", at(10, 0, 30))
	if d := h.wait(); d != 30*time.Second {
		t.Fatalf("first wait %s, want 30s", d)
	}
	h.elapse(at(10, 1, 0))
	h.wait()
	h.check(at(10, 1, 0))
	// NTP steps the clock back 70s while the loop waits for 10:02.
	h.elapse(at(10, 0, 50))
	d := h.wait()
	h.check(at(10, 1, 0)) // 10:01 not again
	if d != maxTimerWait {
		t.Fatalf("wait %s after the step back, want %s (capped, to 10:02)", d, maxTimerWait)
	}
	h.advanceTo(at(10, 2, 30))
	h.check(at(10, 1, 0), at(10, 2, 0))
}

// A forward step (a Pi booted with a stale clock, then NTP) fires no stale
// tick at a time that matches no schedule; the next real tick fires.
func TestTimerClockStepsForward(t *testing.T) {
	stale := time.Date(2024, 1, 1, 0, 0, 30, 0, time.UTC)
	h := newTimerHarness(t, "*/5 * * * *", stale)
	if d := h.wait(); d > maxTimerWait {
		t.Fatalf("wait %s longer than %s", d, maxTimerWait)
	}
	h.elapse(at(4, 10, 20)) // the clock is set during the wait
	if d := h.wait(); d != maxTimerWait {
		t.Fatalf("wait %s after the step, want %s (capped, to 04:15)", d, maxTimerWait)
	}
	h.check()
	h.advanceTo(at(4, 14, 59))
	h.check()
	h.advanceTo(at(4, 20, 30))
	h.check(at(4, 15, 0), at(4, 20, 0))
}

// Waits are capped, and a timer that ends before the wall clock reached the
// tick does not fire it early.
func TestTimerWaitCappedAndNotEarly(t *testing.T) {
	h := newTimerHarness(t, "@daily", at(12, 0, 0))
	for i := 0; i < 3; i++ {
		if d := h.wait(); d > maxTimerWait {
			t.Fatalf("wait %s longer than %s", d, maxTimerWait)
		}
		h.elapse(at(12, i+1, 0))
	}
	h.wait()
	h.check()
	// The wall clock runs slow: the wait ends 1s before midnight.
	h.elapse(at(23, 59, 59))
	if d := h.wait(); d != time.Second {
		t.Fatalf("wait %s, want 1s", d)
	}
	h.check()
	h.elapse(at(0, 0, 0).AddDate(0, 0, 1))
	h.wait()
	h.check(at(0, 0, 0).AddDate(0, 0, 1))
}

// "@every" fires at its interval.
func TestTimerEvery(t *testing.T) {
	h := newTimerHarness(t, "@every 90s", at(10, 0, 0))
	h.wait()
	h.advanceTo(at(10, 4, 0))
	h.check(at(10, 1, 30), at(10, 3, 0))
}

// A timer start that comes late (startTimers racing with SetFunctions) does
// not start the timer of a version that was removed or replaced meanwhile.
func TestStaleTimerNotStarted(t *testing.T) {
	dataDir, fnDir := t.TempDir(), t.TempDir()
	src := `function handle(e, ctx) return {} end`
	writeFunction(t, fnDir, "tk", src, "triggers:\n  - timer: \"@every 1h\"\n")
	p := startInProcess(t, testConfig(dataDir, fnDir, ""))
	g := p.d.Gateway()
	hasTimer := func() bool {
		g.timersMu.Lock()
		defer g.timersMu.Unlock()
		return g.timers["tk"] != nil
	}
	v1 := g.Lookup("tk")
	if v1 == nil || !hasTimer() {
		t.Fatal("tk deployed without its timer")
	}
	writeFunction(t, fnDir, "tk", src+"\n-- v2\n", "triggers:\n  - timer: \"@every 2h\"\n")
	waitFor(t, 10*time.Second, "tk version 2", func() bool { f := g.Lookup("tk"); return f != nil && f.Version == 2 })
	// Version 2 is visible before SetFunctions has started its timer.
	waitDeploy(g)
	v2 := g.Lookup("tk")
	g.startTimer(v1, nil) // late: replaced
	g.timersMu.Lock()
	cancel := g.timers["tk"]
	g.timersMu.Unlock()
	if cancel == nil {
		t.Fatal("version 2's timer is gone")
	}
	for _, name := range []string{"tk.lua", "tk.yaml"} {
		if err := os.Remove(filepath.Join(fnDir, name)); err != nil {
			t.Fatal(err)
		}
	}
	waitFor(t, 10*time.Second, "tk removed", func() bool { return g.Lookup("tk") == nil })
	waitDeploy(g)
	g.startTimer(v2, nil) // late: removed
	if hasTimer() {
		t.Fatal("the timer of a removed function was started")
	}
}

// waitDeploy returns once a SetFunctions in progress (which holds deployMu
// until it has started the new versions' timers) has returned.
func waitDeploy(g *Gateway) {
	g.deployMu.Lock()
	defer g.deployMu.Unlock()
}

// The first tick of a resumed "@every" timer is an interval after the last
// recorded one, never more than an interval from now.
func TestResumeEvery(t *testing.T) {
	hour := trigger.Every(time.Hour)
	now := at(12, 0, 0)
	for _, c := range []struct {
		name       string
		last, want time.Time
	}{
		{"phase kept", at(11, 20, 0), at(12, 20, 0)},
		{"overdue: due now or earlier, fired at start", at(9, 0, 0), at(10, 0, 0)},
		{"last tick in the future: the clock is behind", at(18, 0, 0), at(13, 0, 0)},
	} {
		if got := resumeEvery(c.last, now, hour); !got.Equal(c.want) {
			t.Errorf("%s: %s, want %s", c.name, got, c.want)
		}
	}
}

// An "@every" timer keeps its phase across restarts: a tick that fell due
// while the gateway was down fires once at start, and each tick is recorded
// with its event. (Before, every start counted the interval again, so a
// gateway restarted more often than the interval never fired it.)
func TestEveryTimerResumesAfterRestart(t *testing.T) {
	dataDir, fnDir := t.TempDir(), t.TempDir()
	writeFunction(t, fnDir, "tk", `function handle(e) return {trigger = e.trigger} end`, "triggers:\n  - timer: \"@every 1h\"\n")
	ctx := context.Background()
	key := "tk/@every 1h0m0s"
	last := time.Now().Add(-90 * time.Minute).UnixMilli() // due 30 minutes ago
	seedTick(t, dataDir, key, last)
	p := startInProcess(t, testConfig(dataDir, fnDir, ""))
	waitFor(t, 10*time.Second, "the overdue tick's record", func() bool { return len(allRecords(t, p.d.Store(), "tk")) == 1 })
	v, ok, err := p.d.Store().GetState(ctx, TimerStateFunction, key)
	if err != nil || !ok || string(v) != strconv.FormatInt(last+time.Hour.Milliseconds(), 10) {
		t.Fatalf("recorded tick %q %v %v, want %d", v, ok, err, last+time.Hour.Milliseconds())
	}
}

// The recorded tick of an "@every" timer is deleted when its function no
// longer has that interval: changed while the gateway was down (pruned at
// start), changed by a deployment, or the function removed. A timer whose
// interval stays keeps its record (its phase), and records of functions
// that are not deployed at start (their files may have failed to load) are
// left alone.
func TestEveryTickRecordsPruned(t *testing.T) {
	dataDir, fnDir := t.TempDir(), t.TempDir()
	src := `function handle(e) return {} end`
	writeFunction(t, fnDir, "tk", src, "triggers:\n  - timer: \"@every 1h\"\n  - timer: \"@every 2h\"\n")
	ctx := context.Background()
	st, err := store.Open(ctx, store.Options{Dir: dataDir, GatewayID: "gw"})
	if err != nil {
		t.Fatal(err)
	}
	recent := []byte(strconv.FormatInt(time.Now().Add(-time.Minute).UnixMilli(), 10)) // nothing due
	for _, key := range []string{"tk/@every 1h0m0s", "tk/@every 2h0m0s", "tk/@every 5h0m0s", "other/@every 1h0m0s"} {
		if err := st.PutState(ctx, TimerStateFunction, key, recent); err != nil {
			t.Fatal(err)
		}
	}
	if err := st.Close(); err != nil {
		t.Fatal(err)
	}
	p := startInProcess(t, testConfig(dataDir, fnDir, ""))
	keys := func() []string {
		kvs, _, err := p.d.Store().ListState(ctx, TimerStateFunction, "", 100, "")
		if err != nil {
			t.Fatal(err)
		}
		var out []string
		for _, kv := range kvs {
			out = append(out, kv.Key)
		}
		return out
	}
	expect := func(what string, want ...string) {
		t.Helper()
		waitFor(t, 10*time.Second, what, func() bool { return slices.Equal(keys(), want) })
	}
	expect("the 5h record pruned at start", "other/@every 1h0m0s", "tk/@every 1h0m0s", "tk/@every 2h0m0s")

	writeFunction(t, fnDir, "tk", src+"\n-- v2\n", "triggers:\n  - timer: \"@every 1h\"\n")
	expect("the 2h record pruned by the deployment", "other/@every 1h0m0s", "tk/@every 1h0m0s")
	if v, _, _ := p.d.Store().GetState(ctx, TimerStateFunction, "tk/@every 1h0m0s"); string(v) != string(recent) {
		t.Fatalf("the kept interval's record changed: %q, want %q", v, recent)
	}

	for _, name := range []string{"tk.lua", "tk.yaml"} {
		if err := os.Remove(filepath.Join(fnDir, name)); err != nil {
			t.Fatal(err)
		}
	}
	expect("tk's records pruned with it", "other/@every 1h0m0s")
}

// TestEveryFirstTickKeptAcrossRestart: an "@every" timer records the start
// of its first interval when it has no tick yet, so a restart before the
// first tick keeps it: the first tick comes one interval after the first
// start, not after the restart (a gateway restarted more often than the
// interval never fired the timer).
func TestEveryFirstTickKeptAcrossRestart(t *testing.T) {
	dataDir, fnDir := t.TempDir(), t.TempDir()
	writeFunction(t, fnDir, "tk", `function handle(e) return {trigger = e.trigger} end`, "triggers:\n  - timer: \"@every 3s\"\n")
	ctx := context.Background()
	const key = "tk/@every 3s"
	read := func(p *inProcess) int64 {
		v, ok, err := p.d.Store().GetState(ctx, TimerStateFunction, key)
		if err != nil || !ok {
			return 0
		}
		ms, _ := strconv.ParseInt(string(v), 10, 64)
		return ms
	}
	p := startInProcess(t, testConfig(dataDir, fnDir, ""))
	var anchor int64
	waitFor(t, 10*time.Second, "the recorded start of the first interval", func() bool { anchor = read(p); return anchor != 0 })
	p.stop(t)

	p = startInProcess(t, testConfig(dataDir, fnDir, ""))
	waitFor(t, 20*time.Second, "the first tick", func() bool { return len(allRecords(t, p.d.Store(), "tk")) == 1 })
	// One interval after the first start (or a whole number of them, if
	// the restart itself took longer than an interval on a slow machine).
	if got := read(p); got <= anchor || (got-anchor)%3000 != 0 {
		t.Fatalf("first tick recorded at %d, want %d plus whole intervals of 3 s", got, anchor)
	}
}

// TestEveryCatchUpOnce: after a long downtime, the latest tick due fires
// once and is recorded, so the next start does not find another one due;
// before, the oldest missed tick was recorded and every restart within the
// next hour fired one more.
func TestEveryCatchUpOnce(t *testing.T) {
	dataDir, fnDir := t.TempDir(), t.TempDir()
	writeFunction(t, fnDir, "tk", `function handle(e) return {trigger = e.trigger} end`, "triggers:\n  - timer: \"@every 1h\"\n")
	ctx := context.Background()
	const key = "tk/@every 1h0m0s"
	last := time.Now().Add(-10*time.Hour - 30*time.Minute).UnixMilli() // down for 10.5 intervals
	seedTick(t, dataDir, key, last)
	p := startInProcess(t, testConfig(dataDir, fnDir, ""))
	waitFor(t, 10*time.Second, "the overdue tick's record", func() bool { return len(allRecords(t, p.d.Store(), "tk")) == 1 })
	v, ok, err := p.d.Store().GetState(ctx, TimerStateFunction, key)
	if want := last + 10*time.Hour.Milliseconds(); err != nil || !ok || string(v) != strconv.FormatInt(want, 10) {
		t.Fatalf("recorded tick %q %v %v, want the latest due %d", v, ok, err, want)
	}
	// The next tick is an interval after the recorded one, i.e. in the
	// future: a restart has nothing due (resumeEvery is what start uses).
	rec, _ := strconv.ParseInt(string(v), 10, 64)
	if next := resumeEvery(time.UnixMilli(rec), time.Now(), trigger.Every(time.Hour)); !next.After(time.Now()) {
		t.Fatalf("next tick %v is due already", next)
	}
}

func TestLatestDue(t *testing.T) {
	base := time.Date(2026, 11, 29, 0, 0, 0, 0, time.UTC)
	e := trigger.Every(time.Hour)
	for _, c := range []struct{ now, want time.Duration }{
		{90 * time.Minute, time.Hour}, {2 * time.Hour, 2 * time.Hour}, {10*time.Hour + 59*time.Minute, 10 * time.Hour}, {-time.Minute, 0},
	} {
		if got := latestDue(base, base.Add(c.now), e); !got.Equal(base.Add(c.want)) {
			t.Errorf("now +%v: %v, want +%v", c.now, got.Sub(base), c.want)
		}
	}
}

// seedTick records ms as the last tick of timer key in the store of
// dataDir, as a gateway that ran then would have.
func seedTick(t *testing.T, dataDir, key string, ms int64) {
	t.Helper()
	ctx := context.Background()
	st, err := store.Open(ctx, store.Options{Dir: dataDir, GatewayID: "gw"})
	if err != nil {
		t.Fatal(err)
	}
	if err := st.PutState(ctx, TimerStateFunction, key, []byte(strconv.FormatInt(ms, 10))); err != nil {
		t.Fatal(err)
	}
	if err := st.Close(); err != nil {
		t.Fatal(err)
	}
}

// TestEveryNoDrift: an "@every" tick whose commit takes time does not push
// the later ticks back: the next tick is an interval after the tick, not
// after the end of its commit (ten 10 s ticks with 200 ms commits ended at
// +101.8 s instead of +100 s).
func TestEveryNoDrift(t *testing.T) {
	s := trigger.Every(10 * time.Second)
	start := time.Date(2026, 11, 29, 10, 0, 0, 0, time.UTC)
	now := start
	var ticks []time.Time
	clock := func() time.Time { return now }
	after := func(d time.Duration) (<-chan time.Time, func()) {
		now = now.Add(d) // the wait ends on time
		c := make(chan time.Time, 1)
		c <- now
		return c, func() {}
	}
	ctx, cancel := context.WithCancel(context.Background())
	fire := func(tick time.Time) {
		ticks = append(ticks, tick)
		now = now.Add(200 * time.Millisecond) // the tick's durable commit
		if len(ticks) == 10 {
			cancel()
		}
	}
	runSchedule(ctx, s, time.Time{}, time.Time{}, clock, after, fire, nil)
	for i, tk := range ticks {
		if want := start.Add(time.Duration(i+1) * 10 * time.Second); !tk.Equal(want) {
			t.Errorf("tick %d at +%v, want +%v", i+1, tk.Sub(start), want.Sub(start))
		}
	}
}

// timerGateway runs a gateway with function tk ("@every" spec) on the fake
// clock now, whose timer waits go through after; it returns the gateway
// and its store.
func timerGateway(t *testing.T, st *store.Store, spec string, now func() time.Time, after afterFunc) *Gateway {
	t.Helper()
	quiet := slog.New(slog.DiscardHandler)
	emb, err := mqtt.NewEmbedded(mqtt.EmbeddedConfig{Listen: "127.0.0.1:0", AllowAnonymous: true}, quiet)
	if err != nil {
		t.Fatal(err)
	}
	g, err := New(Options{Store: st, Ingest: emb, Logger: quiet, Runtime: luavm.NewRuntime(luavm.Options{Logger: quiet}), Now: now})
	if err != nil {
		t.Fatal(err)
	}
	g.timerAfter = after
	s, err := trigger.ParseSchedule(spec)
	if err != nil {
		t.Fatal(err)
	}
	tk := &Function{Name: "tk", Fingerprint: "v1", Schedules: []Schedule{s},
		Spec: luavm.Spec{Source: []byte(`function handle(e) return {trigger = e.trigger} end`)}}
	if err := g.SetFunctions(context.Background(), []*Function{tk}); err != nil {
		t.Fatal(err)
	}
	runUntilCleanup(t, g)
	return g
}

// TestEveryTickAfterNTPStep: a Pi with fake-hwclock boots with the time of
// its last shutdown, then NTP sets the real date, days later. The tick of
// "@every 1h" that fell due during the outage fires once right after the
// step (it was dropped as "the wall clock jumped past it", and the timer
// waited a whole interval more), and is recorded at the new time.
func TestEveryTickAfterNTPStep(t *testing.T) {
	st := quietStore(t, store.Options{})
	const key = "tk/@every 1h0m0s"
	last := time.Date(2026, 11, 26, 12, 0, 0, 0, time.UTC)
	if err := st.PutState(context.Background(), TimerStateFunction, key, []byte(strconv.FormatInt(last.UnixMilli(), 10))); err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	now := last.Add(10 * time.Minute) // the clock of the last shutdown, on boot
	clock := func() time.Time { mu.Lock(); defer mu.Unlock(); return now }
	stepped := now.AddDate(0, 0, 3)
	waits := 0
	after := func(d time.Duration) (<-chan time.Time, func()) {
		mu.Lock()
		defer mu.Unlock()
		waits++
		if waits > 1 {
			return make(chan time.Time), func() {} // after the step, nothing more happens
		}
		now = stepped // NTP sets the clock during the first wait
		c := make(chan time.Time, 1)
		c <- now
		return c, func() {}
	}
	timerGateway(t, st, "@every 1h", clock, after)
	waitFor(t, 10*time.Second, "the tick after the step", func() bool { return len(allRecords(t, st, "tk")) == 1 })
	v, _, err := st.GetState(context.Background(), TimerStateFunction, key)
	if err != nil || string(v) != strconv.FormatInt(stepped.UnixMilli(), 10) {
		t.Fatalf("recorded tick %s (%v), want the time after the step %d", v, err, stepped.UnixMilli())
	}
}

// shiftWall returns t, which must carry a monotonic reading, with its wall
// clock moved by secs seconds and the monotonic reading kept: what
// time.Now() returns before NTP steps the wall clock (the monotonic clock
// does not jump). It writes time.Time's fields (wall, ext, loc; the
// layout since Go 1.9): a kernel clock step cannot be made in a test.
func shiftWall(t time.Time, secs int64) time.Time {
	type layout struct {
		wall uint64
		ext  int64
		loc  *time.Location
	}
	p := (*layout)(unsafe.Pointer(&t))
	if p.wall&(1<<63) == 0 {
		panic("shiftWall: no monotonic reading")
	}
	p.wall = uint64(int64(p.wall) + secs<<30) // the wall seconds are bits 30-62
	return t
}

// TestEveryTickRecordedAfterNTPStep: a Pi without a real-time clock boots
// in 1970 and NTP sets the clock after the gateway started. The first tick
// of "@every 2s" fires on time (the monotonic clock), and is recorded at
// the wall time it fired, not the 1970 time it was planned at: a restart
// would otherwise find a tick 56 years overdue and fire again at once.
func TestEveryTickRecordedAfterNTPStep(t *testing.T) {
	const fiftySix = 56 * 365 * 24 * 3600
	var stepped atomic.Bool
	clock := func() time.Time {
		if stepped.Load() {
			return time.Now()
		}
		return shiftWall(time.Now(), -fiftySix)
	}
	if y := clock().Year(); y > 1975 {
		t.Fatalf("setup: clock year %d", y)
	}
	st := quietStore(t, store.Options{})
	timerGateway(t, st, "@every 2s", clock, nil)
	stepped.Store(true) // NTP, before the first tick (2 s after the start)
	waitFor(t, 20*time.Second, "the first tick", func() bool { return len(allRecords(t, st, "tk")) >= 1 })
	v, _, err := st.GetState(context.Background(), TimerStateFunction, "tk/@every 2s")
	ms, perr := strconv.ParseInt(string(v), 10, 64)
	if err != nil || perr != nil {
		t.Fatal(err, perr)
	}
	if d := time.Since(time.UnixMilli(ms)); d.Abs() > time.Minute {
		t.Fatalf("tick recorded %v away from the wall clock (%s): a restart would fire again at once", d.Round(time.Second), time.UnixMilli(ms).UTC())
	}
}

// TestEveryResumedIgnoresBackwardStep: an "@every" timer resumed from its
// recorded tick (a wall time, without a monotonic reading) goes on ticking
// when the wall clock is set back an hour: from its first tick on it
// counts on the monotonic clock, like a timer that started fresh. (It
// stalled for the length of the step.)
func TestEveryResumedIgnoresBackwardStep(t *testing.T) {
	for _, resumed := range []bool{false, true} {
		t.Run(fmt.Sprintf("resumed=%v", resumed), func(t *testing.T) {
			st := quietStore(t, store.Options{})
			if resumed {
				last := time.Now().Add(-500 * time.Millisecond)
				if err := st.PutState(context.Background(), TimerStateFunction, "tk/@every 1s", []byte(strconv.FormatInt(last.UnixMilli(), 10))); err != nil {
					t.Fatal(err)
				}
			}
			var back atomic.Bool
			clock := func() time.Time {
				if back.Load() {
					return shiftWall(time.Now(), -3600) // NTP set the wall clock back an hour
				}
				return time.Now()
			}
			timerGateway(t, st, "@every 1s", clock, nil)
			waitFor(t, 10*time.Second, "two ticks", func() bool { return len(allRecords(t, st, "tk")) >= 2 })
			back.Store(true)
			n0 := len(allRecords(t, st, "tk"))
			waitFor(t, 10*time.Second, "three ticks after the step back", func() bool { return len(allRecords(t, st, "tk")) >= n0+3 })
		})
	}
}
