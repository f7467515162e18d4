package luavm

import (
	"context"
	"errors"
	"testing"
)

// TestTraceEmptyCallSiteName: a function called as t[""](...) has the
// empty string as its call-site name; the stack trace built when its error
// is caught read name[0] and panicked: an ordinary Lua error, even one
// caught by pcall, became an interpreter panic (ErrPanic, dead-lettered at
// once, the instance thrown away). Found by a review
// (TestRevTraceEmptyCallSiteName).
func TestTraceEmptyCallSiteName(t *testing.T) {
	for _, tc := range []struct{ name, src string }{
		{"uncaught", `function handle(e) local t = {} t[""] = function() error("boom") end t[""]() end`},
		{"pcall", `function handle(e) local t = {} t[""] = function() error("boom") end
  local ok, err = pcall(function() t[""]() end)
  return {ok = ok, err = tostring(err)} end`},
		{"control-named", `function handle(e) local t = {} t["x"] = function() error("boom") end
  local ok, err = pcall(function() t["x"]() end)
  return {ok = ok, err = tostring(err)} end`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rt := newTestRuntime(t)
			deploy(t, rt, "h", tc.src)
			res, err := rt.Invoke(context.Background(), "h", refEvent("1"), nil)
			var val string
			if res != nil {
				val = string(res.Value)
			}
			t.Logf("err=%v value=%s", err, val)
			if errors.Is(err, ErrPanic) {
				t.Fatalf("an ordinary Lua error became an interpreter panic: %v", err)
			}
			if tc.name != "uncaught" && (err != nil || val != `{"err":"h:1: boom","ok":false}`) {
				t.Fatalf("pcall of t[...]: %s %v", val, err)
			}
		})
	}
}
