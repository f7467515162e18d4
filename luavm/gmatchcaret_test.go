package luavm

import (
	"context"
	"testing"
)

// In Lua 5.1, a '^' at the start of a gmatch pattern is no anchor (it
// would stop the iteration) but a character: ("a^b^c"):gmatch("^.") gives
// "^b" and "^c". It was taken for an anchor.
func TestGmatchCaretIsLiteral(t *testing.T) {
	rt := newTestRuntime(t)
	deploy(t, rt, "f", `function handle()
  local out = {}
  for m in ("a^b^c"):gmatch("^.") do out[#out + 1] = m end
  local n = 0
  for m in ("xyz"):gmatch("^") do n = n + 1 end
  return {m = out, n = n}
end
`)
	res, err := rt.Invoke(context.Background(), "f", refEvent("1"), nil)
	if err != nil {
		t.Fatal(err)
	}
	if want := `{"m":["^b","^c"],"n":0}`; string(res.Value) != want {
		t.Errorf("got %s, want %s (Lua 5.1)", res.Value, want)
	}
}
