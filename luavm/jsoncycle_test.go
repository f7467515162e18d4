package luavm

import (
	"testing"
	"time"
)

// json.encode of a table that holds itself is refused at once. Under the
// key "" (sorted first) every one of the 101 nesting levels down to the
// depth limit listed and sorted all the table's keys, live together and
// seen by no step, clock or memory check: 300 MiB and 13 times the timeout
// for 60,000 keys.
func TestJSONEncodeSelfReference(t *testing.T) {
	lim := DefaultLimits()
	lim.Timeout = 200 * time.Millisecond
	src := `function handle()
  local t = {}
  for i = 1, 60000 do t[i + 0.5] = true end
  t[""] = t
  local ok, err = pcall(json.encode, t)
  return {ok = ok, err = tostring(err)}
end
`
	res, err, wall, alloc, peak := runMeasured(t, lim, src)
	t.Logf("err=%v wall=%v alloc=%d MiB peak=%d MiB steps=%d peakMem=%d", err, wall, alloc>>20, peak>>20, res.Cost.Steps, res.Cost.PeakMemory)
	if res != nil && res.Value != nil {
		t.Logf("result %s", res.Value)
	}
	if wall > 5*lim.Timeout {
		t.Errorf("ran %v with a timeout of %v", wall, lim.Timeout)
	}
	if peak > 4*uint64(lim.MaxMemory) {
		t.Errorf("live heap grew by %d MiB with a memory cap of %d MiB", peak>>20, lim.MaxMemory>>20)
	}
}
