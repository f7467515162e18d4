package luavm

import (
	"context"
	"testing"
)

// Lua 5.1's table.sort sorts t[1..#t]. gopher-lua's sorted the whole
// array part, including the nil slots that t[#t] = nil leaves at its end:
// the sort failed (comparing nil) or moved a nil into 1..#t.
func TestSortIgnoresTrailingNils(t *testing.T) {
	rt := newTestRuntime(t)
	deploy(t, rt, "f", `function handle()
  local t = {3, 1, 2, 5}
  t[#t] = nil
  local ok, err = pcall(table.sort, t)
  local u = {3, 1, 2, 5}
  u[#u] = nil
  table.sort(u, function(a, b) return (a or 0) < (b or 0) end)
  return {ok = ok, err = tostring(err), t = t, u = u, nu = #u}
end
`)
	res, err := rt.Invoke(context.Background(), "f", refEvent("1"), nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("result %s", res.Value)
	if want := `{"err":"nil","nu":3,"ok":true,"t":[1,2,3],"u":[1,2,3]}`; string(res.Value) != want {
		t.Errorf("got %s, want %s (Lua 5.1)", res.Value, want)
	}
}
