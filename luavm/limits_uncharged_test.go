package luavm

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"runtime"
	"strings"
	"testing"
	"time"
)

func runMeasured(t *testing.T, lim Limits, src string, mod ...func(*Spec)) (*Result, error, time.Duration, uint64, uint64) {
	t.Helper()
	rt := NewRuntime(Options{DefaultLimits: lim, ReclaimInterval: time.Hour, Logger: slog.New(slog.DiscardHandler)})
	defer rt.Close()
	deploy(t, rt, "f", src, mod...)
	base := heapInUse()
	a := totalAlloc()
	stop, peakc := make(chan struct{}), make(chan uint64)
	go func() { // sample the live heap while the call runs
		var peak uint64
		var ms runtime.MemStats
		for {
			runtime.ReadMemStats(&ms)
			peak = max(peak, ms.HeapAlloc)
			select {
			case <-stop:
				peakc <- peak
				return
			case <-time.After(5 * time.Millisecond):
			}
		}
	}()
	start := time.Now()
	res, err := rt.Invoke(context.Background(), "f", refEvent("1"), nil)
	wall := time.Since(start)
	close(stop)
	peak := <-peakc
	return res, err, wall, totalAlloc() - a, peak - min(peak, base)
}

func repeatStmt(head, stmt, tail string, n int) string {
	return head + strings.Repeat(stmt, n) + tail
}

// 1a. Straight-line code: one @tick for the body, then 20,000 uncharged
// O(len) string comparisons with no clock check.
// Work that no instruction's accounting sees stopped only at the next
// tick: 20,000 straight-line comparisons of two 7 MB strings (one tick,
// before the first) ran 3.6-4.2 s on a 100 ms timeout and returned a
// result. The alarm interrupts the VM at the deadline.
func TestAlarmStopsStraightLineCompares(t *testing.T) {
	lim := DefaultLimits()
	lim.Timeout = 100 * time.Millisecond
	src := repeatStmt("function handle()\n local a = string.rep('a', 7000000)\n local c = string.rep('a', 7000000)\n local x\n",
		" x = a == c\n", " return {ok = x}\nend\n", 20000)
	res, err, wall, _, _ := runMeasured(t, lim, src)
	t.Logf("err=%v wall=%v steps=%d", err, wall, res.Cost.Steps)
	if wall > 10*lim.Timeout {
		t.Errorf("ran %v with a timeout of %v", wall, lim.Timeout)
	}
	if !errors.Is(err, ErrTimeout) {
		t.Errorf("err %v, want ErrTimeout", err)
	}
}

// 1b. tonumber of a non-numeric 4 MB string: scans it and copies it twice
// (strconv's NumError clones its input), uncharged.
// tonumber of a 4 MB string that is no number: strconv copied it into its
// error twice per call (7.6 GB allocated in 8.6 s on a 100 ms timeout).
// Strings over 256 characters are no numbers now.
func TestLongStringsAreNoNumbers(t *testing.T) {
	lim := DefaultLimits()
	lim.Timeout = 100 * time.Millisecond
	src := repeatStmt("function handle()\n local a = string.rep('1', 4000000) .. 'x'\n local x\n",
		" x = tonumber(a)\n", " return {ok = x == nil}\nend\n", 2000)
	res, err, wall, alloc, _ := runMeasured(t, lim, src)
	t.Logf("err=%v wall=%v steps=%d alloc=%d MiB", err, wall, res.Cost.Steps, alloc>>20)
	if wall > 10*lim.Timeout || alloc > 64<<20 {
		t.Errorf("ran %v (timeout %v), allocated %d MiB (cap 16 MiB)", wall, lim.Timeout, alloc>>20)
	}
	if err != nil || string(res.Value) != `{"ok":true}` {
		t.Errorf("%v %s: want tonumber to give nil, no error", err, res.Value)
	}
}

// 1c. One table.sort call: strCmp compares byte by byte, so each
// comparison costs the shared prefix. table.sort without a comparator
// compares in Go: 200 long strings took 6 s on a 1 s timeout, charged
// n log n steps. Every comparison is charged the strings' lengths now.
func TestSortChargesStringComparisons(t *testing.T) {
	lim := DefaultLimits()
	res, err, wall, _, _ := runMeasured(t, lim, `
function handle()
  local big, t, n = string.rep("x", 4000000), {}, 200
  for i = 1, n do t[i] = big:sub(1, 4000000 - (i * 37) % n) end -- substrings: shared, uncharged
  table.sort(t)
  return {n = #t}
end`)
	t.Logf("err=%v wall=%v steps=%d", err, wall, res.Cost.Steps)
	if wall > 3*lim.Timeout {
		t.Errorf("one table.sort ran %v with a timeout of %v", wall, lim.Timeout)
	}
	if !errors.Is(err, ErrBudget) {
		t.Errorf("err %v, want ErrBudget", err)
	}
}

// 2. Pattern matcher: opChar runs (goto redo) are not counted.
// A run of literal characters in a pattern was no work for the budget:
// 5 s of matching charged 62,775 steps.
func TestPatternLiteralRunsCharged(t *testing.T) {
	lim := DefaultLimits()
	lim.MaxSteps, lim.Timeout = 1_000_000, 60*time.Second
	res, err, wall, _, _ := runMeasured(t, lim, `
function handle()
  return {m = string.rep("x", 60000):match(string.rep("x", 30000) .. "y") == nil}
end`)
	t.Logf("err=%v wall=%v steps=%d (max %d)", err, wall, res.Cost.Steps, lim.MaxSteps)
	if err == nil && wall > 2*time.Second {
		t.Errorf("%v of matching charged %d steps", wall, res.Cost.Steps)
	}
	if !errors.Is(err, ErrBudget) {
		t.Errorf("err %v, want ErrBudget", err)
	}
}

// 3a. select(s) copies s into its error message (baselib.go:336), uncharged.
// select(s) with a string other than "#" copied s into its error: 200
// caught errors of a 1 MB string held 300 MB of heap, 1 MB accounted.
func TestSelectErrorCutsString(t *testing.T) {
	lim := DefaultLimits()
	res, err, _, _, heap := runMeasured(t, lim, `
function handle()
  local s, keep, total = string.rep("x", 1000000), {}, 0
  for i = 1, 200 do
    local ok, e = pcall(select, s)
    keep[i], total = e, total + #e
  end
  return {n = #keep, bytes = total}
end`)
	t.Logf("err=%v result %s; accounted peak %d KiB; live heap +%d MiB", err, res.Value, res.Cost.PeakMemory>>10, heap>>20)
	if heap > 4*uint64(lim.MaxMemory) {
		t.Errorf("heap grew by %d MiB under a 16 MiB cap", heap>>20)
	}
}

// 3b. Host errors quote the key with %q (512 bytes of \1 -> 2 KB), uncharged.
// Messages of errors raised by host functions (state.incr naming a long
// key) kept by the function after pcall were memory no hook accounted:
// 100+ MB of heap under a 16 MiB cap. Keys are cut in messages, and a
// caught message is charged like a string built.
func TestCaughtErrorMessagesCharged(t *testing.T) {
	lim := DefaultLimits()
	res, err, _, _, heap := runMeasured(t, lim, `
function handle(event, ctx)
  local key, keep, total, i = string.rep("\1", 512), {}, 0, 0
  while time.now_ms() < ctx.deadline_ms - 200 do
    i = i + 1
    local ok, e = pcall(state.incr, key, 0/0)
    keep[i], total = e, total + #e
  end
  return {n = i, bytes = total}
end`)
	t.Logf("err=%v result %s; accounted peak %d KiB; live heap +%d MiB", err, res.Value, res.Cost.PeakMemory>>10, heap>>20)
	if heap > 4*uint64(lim.MaxMemory) {
		t.Errorf("heap grew by %d MiB under a 16 MiB cap", heap>>20)
	}
}

// 4. Cost.Steps far beyond the budget (hostile_test's own invariant).
// A charge as large as a hostile argument was recorded before the budget
// check: Cost.Steps of 5.7e17 (and metered usage that overflows).
func TestStepsNeverReportedBeyondBudget(t *testing.T) {
	lim := DefaultLimits()
	for _, src := range []string{
		`function handle() table.concat({}, "", 1, 2^62) end`,
		`function handle() table.remove({1, 2, 3}, -2^62) end`,
	} {
		res, err, _, _, _ := runMeasured(t, lim, src)
		if res.Cost.Steps > lim.MaxSteps+1<<16 {
			t.Errorf("%s: %v; Cost.Steps %d, budget %d", src, err, res.Cost.Steps, lim.MaxSteps)
		}
		// concat: "invalid value (at index 1)"; remove out of range
		// removes nothing (Lua 5.1).
		if strings.Contains(src, "concat") != errors.Is(err, ErrRuntime) {
			t.Errorf("%s: %v", src, err)
		}
	}
}

// 5. Broken surrogate pair: the escape after it is swallowed.
// An escaped high surrogate followed by an escape that is no low
// surrogate swallowed that character.
func TestJSONDecodeLoneSurrogateKeepsNext(t *testing.T) {
	res, err, _, _, _ := runMeasured(t, DefaultLimits(), `
function handle() return {hex = hex.encode(json.decode('"\\ud800\\u0041B"'))} end`)
	if err != nil {
		t.Fatal(err)
	}
	var want string
	_ = json.Unmarshal([]byte(`"\ud800\u0041B"`), &want)
	if !strings.Contains(string(res.Value), fmt.Sprintf("%x", want)) {
		t.Errorf("decoded %s, encoding/json gives %x", res.Value, want)
	}
}

// 6. pairs over ctx.config follows Go map order: differs per invocation.
// Tables made from Go maps (ctx.config, captures, query, headers) got
// their keys in map order: pairs over them differed between identical
// invocations.
func TestHostTablesPairsOrderStable(t *testing.T) {
	rt := NewRuntime(Options{ReclaimInterval: time.Hour, Logger: slog.New(slog.DiscardHandler)})
	defer rt.Close()
	deploy(t, rt, "f", `function handle(event, ctx)
  local ks = {}
  for k in pairs(ctx.config) do ks[#ks + 1] = k end
  return table.concat(ks, ",")
end`, func(s *Spec) { s.Config = map[string]any{"a": 1, "b": 2, "c": 3, "d": 4, "e": 5, "f": 6} })
	seen := map[string]bool{}
	for i := 0; i < 20; i++ {
		res, err := rt.Invoke(context.Background(), "f", refEvent("1"), nil)
		if err != nil {
			t.Fatal(err)
		}
		seen[string(res.Value)] = true
	}
	if len(seen) > 1 {
		t.Errorf("20 identical invocations gave %d results: %v", len(seen), seen)
	}
}
