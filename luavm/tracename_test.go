package luavm

import (
	"context"
	"strconv"
	"strings"
	"testing"
	"time"
)

// TestTraceFrameNamesBounded: gopher-lua's stack trace (built for every
// error a protected call catches) wrote one line per frame naming the
// function by its call site (the identifier or string key of
// `t.NAME(...)`, up to the 256 KiB source), every line built before the
// trace was cut to 15: a 250 KB identifier at one recursive call site, 190
// frames deep, made ~190 MiB per trace, uncharged (max_memory 16 MiB).
// Names are cut to 64 bytes and only the lines kept are built. Found by a
// review (TestRevTraceFrameNamesUncharged).
func TestTraceFrameNamesBounded(t *testing.T) {
	for _, tc := range []struct {
		name, handle string
		n            int
	}{
		{"pcall", "for i = 1, 5 do pcall(f, 190) end return {ok = true}", 250_000},
		{"uncaught", "f(190)", 250_000},
		{"control-short-name", "for i = 1, 5 do pcall(f, 190) end return {ok = true}", 1},
	} {
		t.Run(tc.name, func(t *testing.T) { traceNames(t, tc.n, tc.handle) })
	}
}

func traceNames(t *testing.T, n int, handle string) {
	name := strings.Repeat("a", n)
	src := `local t = {}
local function f(n) if n == 0 then error("x") end local r = t.` + name + `(n - 1) return r end
t[string.rep("a", ` + strconv.Itoa(n) + `)] = f
function handle(e) ` + handle + ` end`
	rt := newTestRuntime(t)
	deploy(t, rt, "h", src)
	var res *Result
	var err error
	var wall time.Duration
	var allocated uint64
	growth := heapGrowthDuring(func() {
		a := totalAlloc()
		start := time.Now()
		res, err = rt.Invoke(context.Background(), "h", refEvent("1"), nil)
		wall = time.Since(start)
		allocated = totalAlloc() - a
	})
	t.Logf("outcome=%s steps=%d peakmem=%d wall=%v err=%v value=%s; Go heap grew by %d MiB, allocated %d MiB",
		res.Cost.Outcome, res.Cost.Steps, res.Cost.PeakMemory, wall, err, res.Value, growth>>20, allocated>>20)
	if growth > 48<<20 {
		t.Errorf("one invocation (max_memory 16 MiB) grew the Go heap by %d MiB", growth>>20)
	}
	if allocated > 64<<20 {
		t.Errorf("one invocation (max_memory 16 MiB) allocated %d MiB of Go heap", allocated>>20)
	}
}
