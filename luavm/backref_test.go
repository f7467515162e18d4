package luavm

import (
	"context"
	"errors"
	"testing"
)

// A back-reference (%1) to a capture that is still open, or to a position
// capture at the end of the subject, sliced the subject with bounds out of
// order: a Go runtime panic in the matcher, which pcall could not catch
// (the invocation failed as an interpreter panic, dead-lettered at once,
// and the instance was thrown away). As in Lua 5.1: "invalid capture
// index" for the first, no match for a position capture.
func TestBackrefToOpenOrPositionCapture(t *testing.T) {
	for _, c := range []struct{ s, pat, want string }{
		{"ba", "(a()%1)", `{"err":"f:2: invalid capture index","ok":false}`}, // %1 inside capture 1, after a later capture exists
		{"", "()%1", `{"err":"nil","ok":true}`},                              // %1 of a position capture past the subject: no match
		{"xaba", "()a%1", `{"err":"nil","ok":true}`},                         // a position is no text: no match
		{"abab", "(ab)%1", `{"err":"nil","ok":true,"s":1}`},                  // still found
	} {
		rt := newTestRuntime(t)
		deploy(t, rt, "f", `function handle(event)
  local ok, err = pcall(string.find, event.topic, event.payload)
  if ok then return {ok = ok, err = "nil", s = err} end
  return {ok = ok, err = tostring(err)}
end
`)
		ev := refEvent("1")
		ev.Topic, ev.Payload = c.s, []byte(c.pat)
		res, err := rt.Invoke(context.Background(), "f", ev, nil)
		if err != nil {
			t.Errorf("find(%q, %q): %v", c.s, c.pat, err)
			if errors.Is(err, ErrPanic) {
				t.Logf("outcome %s", res.Cost.Outcome)
			}
			continue
		}
		if string(res.Value) != c.want {
			t.Errorf("find(%q, %q) -> %s, want %s", c.s, c.pat, res.Value, c.want)
		}
	}
}
