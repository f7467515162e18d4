package luavm

import (
	"context"
	"strings"
	"testing"
	"time"
)

// Follow-ups of limits_uncharged_test.go: what those changes must not
// break or undercharge.

func runSrc(t *testing.T, src string, mod ...func(*Spec)) (*Result, error) {
	rt := newTestRuntime(t)
	deploy(t, rt, "f", src, mod...)
	return rt.Invoke(context.Background(), "f", refEvent("1"), nil)
}

// A numeric literal of more than 256 characters in the source is a number:
// the run-time limit on strings taken for numbers made it NaN.
func TestLongNumericLiteralKept(t *testing.T) {
	lit := "0." + strings.Repeat("0", 300) + "1"
	res, err := runSrc(t, "function handle() local x = "+lit+"\n return {pos = x > 0, nan = x ~= x} end")
	t.Logf("%v %s", err, res.Value)
	if err != nil || string(res.Value) != `{"nan":false,"pos":true}` {
		t.Errorf("got %v %s", err, res.Value)
	}
}

// pcall(error, s): error() charges its copy of s; pcall does not charge it
// again.
func TestErrorMessageChargedOnce(t *testing.T) {
	res, err := runSrc(t, `function handle()
  local big = string.rep("x", 5700000)
  local ok, e = pcall(error, big)
  return {ok = ok, n = #e}
end`)
	t.Logf("%v %s peak=%d", err, res.Value, res.Cost.PeakMemory)
	if err != nil {
		t.Errorf("two live copies of 5.5 MB refused under 16 MiB: %v", err)
	}
}

// error(s, 0) makes no copy: nothing is charged when it is caught.
func TestLevel0ErrorNotCharged(t *testing.T) {
	res, err := runSrc(t, `function handle()
  local big = string.rep("x", 6000000)
  for i = 1, 3 do local ok, e = pcall(error, big, 0) end
  return {ok = true}
end`)
	t.Logf("%v %s peak=%d", err, res.Value, res.Cost.PeakMemory)
	if err != nil {
		t.Errorf("one 6 MB string, re-raised without copy: %v", err)
	}
}

// A validation loop with pcall: 200,000 caught decode errors fit.
func TestPcallValidationLoop(t *testing.T) {
	res, err := runSrc(t, `function handle()
  local bad = 0
  for i = 1, 200000 do
    local ok, e = pcall(json.decode, "{bad")
    if not ok then bad = bad + 1 end
  end
  return {bad = bad}
end`, func(s *Spec) { s.Limits.Timeout = 30 * time.Second })
	t.Logf("%v %s peak=%d steps=%d wall=%v", err, res.Value, res.Cost.PeakMemory, res.Cost.Steps, res.Cost.Wall)
	if err != nil {
		t.Error(err)
	}
}

// 200,000 caught index errors (short messages, each charged) fit.
func TestPcallSmallMessagesLoop(t *testing.T) {
	res, err := runSrc(t, `function handle()
  local t, bad = {}, 0
  local function f(x) return x.a.b end
  for i = 1, 200000 do
    local ok, e = pcall(f, t)
    if not ok then bad = bad + 1 end
  end
  return {bad = bad}
end`, func(s *Spec) { s.Limits.Timeout = 30 * time.Second })
	t.Logf("%v %s peak=%d steps=%d wall=%v", err, res.Value, res.Cost.PeakMemory, res.Cost.Steps, res.Cost.Wall)
	if err != nil {
		t.Error(err)
	}
}

type stuckState struct{}

func (stuckState) GetState(ctx context.Context, function, key string) ([]byte, bool, error) {
	<-ctx.Done()
	return nil, false, ctx.Err()
}

// The timeout message of state.get quotes the key (it was printed raw).
func TestTimeoutMessageQuotesKey(t *testing.T) {
	rt := newTestRuntime(t)
	deploy(t, rt, "f", `function handle() return state.get('a"b\nc') end`, func(s *Spec) { s.Limits.Timeout = 50 * time.Millisecond })
	_, err := rt.Invoke(context.Background(), "f", refEvent("1"), stuckState{})
	t.Logf("%v", err)
	if err == nil || !strings.Contains(err.Error(), `state.get("a\"b\nc")`) {
		t.Errorf("key not quoted: %q", err)
	}
}

// table.concat is charged 1 step per 8 elements, below 1,024 too.
func TestConcatChargedPerElement(t *testing.T) {
	res, err := runSrc(t, `function handle()
  local t = {}
  for i = 1, 1000 do t[i] = "" end
  local n = 0
  for k = 1, 2000 do n = n + #table.concat(t) end
  return {n = n}
end`)
	t.Logf("%v %s steps=%d wall=%v", err, res.Value, res.Cost.Steps, res.Cost.Wall)
	if res.Cost.Steps < 2000*100 {
		t.Errorf("2000 concats of 1000 elements charged %d steps", res.Cost.Steps)
	}
}
