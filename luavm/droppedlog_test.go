package luavm

import (
	"context"
	"runtime"
	"testing"
	"time"
)

// Log calls past the invocation's MaxLogLines are dropped: they cut, cleaned
// and encoded their 8 KiB message before finding the cap reached, so
// 100,000 of them allocated 0.9 GB (log.info) or 1.8 GB (print) for one
// step each. A dropped line builds nothing now.
func TestDroppedLogLinesBuildNothing(t *testing.T) {
	for _, call := range []string{"log.info(s)", "log.info(s, f)", "print(s)"} {
		t.Run(call, func(t *testing.T) {
			lim := DefaultLimits()
			lim.Timeout = 30 * time.Second
			rt := NewRuntime(Options{DefaultLimits: lim})
			defer rt.Close()
			deploy(t, rt, "f", `function handle()
  local s = string.rep("x", 9000)
  local f = {k = s}
  for i = 1, 100000 do `+call+` end
  return {ok = true}
end`)
			var m0, m1 runtime.MemStats
			runtime.ReadMemStats(&m0)
			res, err := rt.Invoke(context.Background(), "f", refEvent("1"), nil)
			runtime.ReadMemStats(&m1)
			if err != nil {
				t.Fatal(err)
			}
			alloc := m1.TotalAlloc - m0.TotalAlloc
			// MaxLogLines kept, and the line saying how many were dropped.
			if len(res.Logs) != lim.MaxLogLines+1 || alloc > 64<<20 {
				t.Fatalf("%d lines kept (want %d and the drop count); 100,000 log calls allocated %d MiB, want the dropped ones to build nothing", len(res.Logs), lim.MaxLogLines, alloc>>20)
			}
		})
	}
}
