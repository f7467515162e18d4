package luavm

import (
	"testing"
)

// table.sort copied t[1..#t] into a Go slice (16 bytes a value) checked
// against the memory cap once, then live while the comparator ran: a
// comparator sorting the same table again made a copy per level, all live
// together (201 MiB under a 16 MiB cap for 60 levels). It sorts in place.
func TestNestedSortStaysUnderMemoryCap(t *testing.T) {
	lim := DefaultLimits()
	src := `function handle()
  local t = {}
  for i = 1, 200000 do t[i] = i end
  local depth = 0
  local function cmp(a, b)
    if depth < 60 then
      depth = depth + 1
      table.sort(t, cmp)
    else
      local x = 0
      for i = 1, 400000 do x = x + i end -- hold the peak a moment
      error("deep")
    end
    return a < b
  end
  local ok, err = pcall(table.sort, t, cmp)
  return {ok = ok, depth = depth}
end
`
	res, err, wall, alloc, peak := runMeasured(t, lim, src)
	if res == nil {
		t.Fatal(err)
	}
	t.Logf("err=%v wall=%v alloc=%d MiB live-heap peak=+%d MiB steps=%d PeakMemory=%d MiB value=%s",
		err, wall, alloc>>20, peak>>20, res.Cost.Steps, res.Cost.PeakMemory>>20, res.Value)
	if peak > 4*uint64(lim.MaxMemory) {
		t.Errorf("live heap grew by %d MiB with a memory cap of %d MiB (accounted peak %d MiB)",
			peak>>20, lim.MaxMemory>>20, res.Cost.PeakMemory>>20)
	}
}
