package luavm

import (
	"testing"
	"time"
)

// table.sort with a Go builtin as comparator: the comparisons ran inside
// Go's sort, where neither the VM's interrupt nor a tick is reached, and
// only a sort without a comparator was charged per character (rawequal of
// two distinct 6 MB strings compares every byte: 4.6 s on a 100 ms
// timeout). Every comparison is charged now, with the strings' lengths
// when it runs in Go.
func TestSortGoComparatorKeepsTimeout(t *testing.T) {
	lim := DefaultLimits()
	lim.Timeout = 100 * time.Millisecond
	src := `function handle()
  local a = string.rep("a", 6000000)
  local c = string.rep("a", 6000000)
  local t = {}
  for i = 1, 2000, 2 do t[i] = a; t[i + 1] = c end
  table.sort(t, rawequal)
  return {n = #t}
end
`
	res, err, wall, _, _ := runMeasured(t, lim, src)
	t.Logf("err=%v wall=%v steps=%d", err, wall, res.Cost.Steps)
	if wall > 10*lim.Timeout {
		t.Errorf("ran %v with a timeout of %v (charged %d steps)", wall, lim.Timeout, res.Cost.Steps)
	}
}
