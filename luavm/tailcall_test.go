package luavm

import (
	"context"
	"runtime"
	"strings"
	"testing"
	"time"
)

// TestTailCallChainTraceBounded: a function that only tail-calls itself
// costs one step per call and no memory, but gopher-lua's stack trace,
// built for every error a protected call catches (the breach of a limit,
// or an error caught by pcall), had one line per tail call: millions of
// lines, 120-530 MiB of Go heap past a 16 MiB cap and the timeout,
// uncounted (a daemon with MemoryMax=160M would be killed by one event,
// and again by its redelivery). A frame's tail calls are one line now.
// Found by a review (TestRevTailCallTraceUncharged).
func TestTailCallChainTraceBounded(t *testing.T) {
	for _, tc := range []struct {
		name, src string
		steps     int64
	}{
		{"breach", `local function f() return f() end function handle(e) f() end`, 0},
		{"pcall", `local function f(n) if n == 0 then error("x") end return f(n-1) end
function handle(e) for i = 1, 100 do pcall(f, 4000000) end end`, 0},
		// max_steps may be up to 10,000,000,000: the timeout ends it.
		{"timeout", `local function f() return f() end function handle(e) f() end`, 1_000_000_000},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rt := newTestRuntime(t)
			deploy(t, rt, "h", tc.src, func(s *Spec) { s.Limits.MaxSteps = tc.steps }) // default limits: 1 s, 10M steps, 16 MiB
			var res *Result
			var err error
			var wall time.Duration
			growth := heapGrowthDuring(func() {
				start := time.Now()
				res, err = rt.Invoke(context.Background(), "h", refEvent("1"), nil)
				wall = time.Since(start)
			})
			t.Logf("outcome=%s steps=%d wall=%v err=%v; Go heap grew by %d MiB", res.Cost.Outcome, res.Cost.Steps, wall, err, growth>>20)
			if err == nil || (res.Cost.Outcome != "budget" && res.Cost.Outcome != "timeout") {
				t.Fatalf("outcome %q, err %v: want the step budget or the timeout", res.Cost.Outcome, err)
			}
			if growth > 48<<20 {
				t.Errorf("one invocation (max_memory 16 MiB) grew the Go heap by %d MiB", growth>>20)
			}
			if wall > 5*time.Second {
				t.Errorf("an invocation with a 1 s timeout ran %v", wall)
			}
		})
	}
	// The trace still says what happened, in one line.
	rt := newTestRuntime(t)
	deploy(t, rt, "t", `local function f(n) if n == 0 then error("deep") end return f(n-1) end
function handle(e) local ok, msg = pcall(f, 1000) return {ok = ok, msg = msg} end`)
	res, err := rt.Invoke(context.Background(), "t", refEvent("1"), nil)
	if err != nil || !strings.Contains(string(res.Value), `"ok":false`) || !strings.Contains(string(res.Value), "deep") {
		t.Fatalf("pcall of a tail-call chain: %s %v", res.Value, err)
	}
}

// heapGrowthDuring runs f and returns how much the Go heap in use grew
// over its start at most while f ran, sampled every 2 ms.
func heapGrowthDuring(f func()) int64 {
	runtime.GC()
	var before runtime.MemStats
	runtime.ReadMemStats(&before)
	stop, done := make(chan struct{}), make(chan struct{})
	var peak uint64
	go func() {
		defer close(done)
		var m runtime.MemStats
		for {
			runtime.ReadMemStats(&m)
			peak = max(peak, m.HeapAlloc)
			select {
			case <-stop:
				return
			case <-time.After(2 * time.Millisecond):
			}
		}
	}()
	f()
	close(stop)
	<-done
	return int64(peak) - int64(before.HeapAlloc)
}
