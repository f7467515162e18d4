package luavm

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"
)

func invoke(t testing.TB, rt *Runtime, name string, ev *Event) (*Result, error) {
	t.Helper()
	if ev == nil {
		ev = &Event{Payload: []byte("{}")}
	}
	res, err := rt.Invoke(context.Background(), name, ev, nil)
	if res == nil {
		t.Fatal("nil Result")
	}
	return res, err
}

func TestSandboxGlobals(t *testing.T) {
	rt := newTestRuntime(t)
	deploy(t, rt, "probe", `
function handle(event, ctx)
  local names = {"os", "io", "debug", "load", "loadstring", "dofile", "loadfile", "require", "module",
    "collectgarbage", "getfenv", "setfenv", "newproxy", "coroutine", "channel", "gcinfo", "_GOPHER_LUA_VERSION"}
  local present = {}
  for _, n in ipairs(names) do if _G[n] ~= nil then present[#present + 1] = n end end
  if string.dump ~= nil then present[#present + 1] = "string.dump" end
  if math.randomseed ~= nil then present[#present + 1] = "math.randomseed" end
  if ("").dump ~= nil then present[#present + 1] = "(''):dump" end
  local mt = getmetatable("")
  return {present = table.concat(present, ","), mt = tostring(mt), g = _G == getfenv}
end`)
	res, err := invoke(t, rt, "probe", nil)
	if err != nil {
		t.Fatal(err)
	}
	if string(res.Value) != `{"g":false,"mt":"false","present":""}` {
		t.Fatalf("sandbox exposes: %s", res.Value)
	}
}

func TestFreshGlobalsPerInvocation(t *testing.T) {
	rt := newTestRuntime(t)
	src := `
top = (top or 0) + 1
function handle(event, ctx)
  leaked = (leaked or 0) + 1
  local okString = pcall(function() string.upper = nil end)
  local okRaw = pcall(rawset, math, "pi", 3)
  local okInsert = pcall(table.insert, table, 1)
  local okMeta = pcall(setmetatable, string, {})
  _G.print = nil
  return {top = top, leaked = leaked, s = okString, r = okRaw, i = okInsert, m = okMeta,
    upper = ("a"):upper(), pi = math.pi > 3.14, other = other_fn_global}
end`
	deploy(t, rt, "a", src, func(s *Spec) { s.MaxConcurrency = 1 })
	deploy(t, rt, "b", `function handle() other_fn_global = "x"; return {} end`)
	want := `{"i":false,"leaked":1,"m":false,"pi":true,"r":false,"s":false,"top":1,"upper":"A"}`
	for i := 0; i < 3; i++ {
		if _, err := invoke(t, rt, "b", nil); err != nil {
			t.Fatal(err)
		}
		res, err := invoke(t, rt, "a", nil)
		if err != nil || string(res.Value) != want {
			t.Fatalf("run %d: %v %s, want %s", i, err, res.Value, want)
		}
	}
	if st, _ := rt.Stats("a"); st.ColdStarts != 1 {
		t.Fatalf("the instance was not reused: %+v", st)
	}
}

func TestRuntimeErrorHasLine(t *testing.T) {
	rt := newTestRuntime(t)
	deploy(t, rt, "boom", "function handle(event, ctx)\n  log.info('before')\n  error('boom')\nend")
	res, err := invoke(t, rt, "boom", nil)
	if !errors.Is(err, ErrRuntime) || !strings.Contains(err.Error(), "boom:3: boom") || IsLimit(err) {
		t.Fatalf("err = %v", err)
	}
	if len(res.Logs) != 1 || res.Cost.Outcome != "error" || res.Cost.Steps == 0 {
		t.Fatalf("result on error: %+v", res)
	}
	if st, _ := rt.Stats("boom"); st.Warm != 1 {
		t.Fatalf("a plain Lua error should keep the instance: %+v", st)
	}
}

// TestRuntimeErrorMessageCapped: the message of a Lua error that ends the
// invocation is cut like a log message before it reaches the caller (logs,
// dead letters).
func TestRuntimeErrorMessageCapped(t *testing.T) {
	rt := newTestRuntime(t)
	deploy(t, rt, "bigerr", "function handle() error(string.rep('x', 100000)) end")
	_, err := invoke(t, rt, "bigerr", nil)
	if !errors.Is(err, ErrRuntime) || len(err.Error()) > maxLogBytes+200 || !strings.HasSuffix(err.Error(), "x...(truncated)") {
		t.Fatalf("err = %.300v (%d bytes)", err, len(err.Error()))
	}
}

// TestPrintCap: print builds at most a log message's worth of its
// arguments, cut like a log message.
func TestPrintCap(t *testing.T) {
	rt := newTestRuntime(t)
	deploy(t, rt, "p", "function handle() local s = ('x'):rep(5000); print('a', 1, s, s, s) end")
	res, err := invoke(t, rt, "p", nil)
	if err != nil || len(res.Logs) != 1 {
		t.Fatalf("%v %+v", err, res)
	}
	want := "a\t1\t" + strings.Repeat("x", 5000) + "\t" + strings.Repeat("x", maxLogBytes-5000-5) + "...(truncated)"
	if res.Logs[0].Msg != want {
		t.Fatalf("print logged %d bytes: %.40q...", len(res.Logs[0].Msg), res.Logs[0].Msg)
	}
}

// TestStringFormat: string.format follows Lua 5.1's conversions and
// refuses what Lua 5.1 refuses.
func TestStringFormat(t *testing.T) {
	rt := newTestRuntime(t)
	cases := []struct{ args, want string }{
		{`"%5.2f|%-4d|%s|%q", 3.14159, 42, "x", "a\"b"`, ` 3.14|42  |x|"a\"b"`},
		{`"%d %i %u %5.3d", 3.7, -2, 5, 7`, `3 -2 5   007`},
		{`"%x %X %o %#x %#o %x", 255, 255, 8, 255, 8, -1`, `ff FF 10 0xff 010 ffffffffffffffff`},
		{`"%g %g %G %e %.3E", 1/3, 1e20, 1e-10, 12345.678, 0.5`, `0.333333 1e+20 1E-10 1.234568e+04 5.000E-01`},
		{`"%f %f %5.1f %+f", 1/0, -1/0, 0/0, 1/0`, `inf -inf   nan +inf`},
		{`"%5s|%-5s|%.2s|%s|%s|%s", "ab", "ab", "abc", nil, true, 12.5`, `   ab|ab   |ab|nil|true|12.5`},
		{`"%c%c|%3c|%05s|%+x|% o|%-05d", 72, 105, 65, "ab", 255, 8, 5`, `Hi|  A|   ab|ff|10|5    `},
		{`"%-0+6f|%06.1f|%-6.1f|", 1/0, -1/0, 0/0`, `+inf  |  -inf|nan   |`},
		{`"%q", "a\nb\r\0c\\"`, `"a\` + "\n" + `b\r\000c\\"`},
		{`"%%d %d%% %+d % d %05d|%-5d|", 5, 5, 5, 5, 5`, `%d 5% +5  5 00005|5    |`},
		{`"%d", "12"`, `12`},
		{`"%.[1]5f", 1`, `invalid option '%.[' to 'format'`},
		{`"%[1]d", 1`, `invalid option '%[' to 'format'`},
		{`"%*d", 5, 1`, `invalid option '%*' to 'format'`},
		{`"%v", 1`, `invalid option '%v' to 'format'`},
		{`"%5%"`, `invalid option '%5%' to 'format'`},
		{`"%100d", 1`, `invalid format (width or precision too long)`},
		{`"%.100f", 1`, `invalid format (width or precision too long)`},
		{`"%-+ #0-d", 1`, `invalid format (repeated flags)`},
		{`"abc%"`, `invalid option '%' to 'format'`},
		{`"%d"`, `bad argument #2 to format (no value)`},
		{`"%d", {}`, `bad argument #2 to format (number expected, got table)`},
		{`"%d", "x"`, `bad argument #2 to format (number expected, got string)`},
	}
	for i, c := range cases {
		name := fmt.Sprintf("f%d", i)
		deploy(t, rt, name, "function handle() local ok, r = pcall(function() return string.format("+c.args+") end); return r end")
		res, err := invoke(t, rt, name, nil)
		if err != nil || !strings.Contains(string(res.Value), c.want) {
			t.Errorf("string.format(%s) = %q, %v; want %q", c.args, res.Value, err, c.want)
		}
	}
}

func TestBadReturnValues(t *testing.T) {
	rt := newTestRuntime(t)
	for name, body := range map[string]string{
		"number": "return 42",
		"bool":   "return true",
		"fn":     "return print",
		"cycle":  "local t = {}; t.t = t; return t",
	} {
		deploy(t, rt, name, "function handle() "+body+" end")
		if _, err := invoke(t, rt, name, nil); !errors.Is(err, ErrRuntime) {
			t.Errorf("%s: %v, want ErrRuntime", name, err)
		}
	}
}

func TestTimeout(t *testing.T) {
	rt := newTestRuntime(t)
	lim := Limits{Timeout: 50 * time.Millisecond, MaxSteps: 1 << 50}
	deploy(t, rt, "spin", "function handle() while true do end end", func(s *Spec) { s.Limits = lim })
	start := time.Now()
	res, err := invoke(t, rt, "spin", nil)
	if !errors.Is(err, ErrTimeout) || !IsLimit(err) || res.Cost.Outcome != "timeout" {
		t.Fatalf("err = %v, outcome %q", err, res.Cost.Outcome)
	}
	if el := time.Since(start); el > 2*time.Second {
		t.Fatalf("timeout of 50ms took %v", el)
	}
	// The caller's context bounds the invocation too.
	deploy(t, rt, "spin2", "function handle() while true do end end", func(s *Spec) { s.Limits = Limits{Timeout: time.Hour, MaxSteps: 1 << 50} })
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	if _, err := rt.Invoke(ctx, "spin2", &Event{}, nil); !errors.Is(err, ErrTimeout) || !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("ctx deadline: %v", err)
	}
	// A context that ended before the call: it does not run (ErrBusy,
	// wrapping the context's error).
	cctx, ccancel := context.WithCancel(context.Background())
	ccancel()
	if _, err := rt.Invoke(cctx, "spin2", &Event{}, nil); !errors.Is(err, ErrBusy) || !errors.Is(err, context.Canceled) {
		t.Fatalf("cancelled ctx: %v", err)
	}
}

func TestStepsAreDeterministic(t *testing.T) {
	rt := newTestRuntime(t)
	deploy(t, rt, "work", `function handle(e)
  local s = 0
  for i = 1, 1000 do s = s + i end
  local parts = {}
  for w in ("a b c d e f"):gmatch("%a") do parts[#parts + 1] = w .. s end
  return {n = #table.concat(parts)}
end`)
	var steps []int64
	for i := 0; i < 3; i++ {
		res, err := invoke(t, rt, "work", nil)
		if err != nil {
			t.Fatal(err)
		}
		steps = append(steps, res.Cost.Steps)
		if res.Cost.PeakMemory <= 0 || res.Cost.BytesOut != int64(len(res.Value)) || res.Cost.Wall <= 0 {
			t.Fatalf("cost %+v", res.Cost)
		}
	}
	if steps[0] < 2000 || steps[0] != steps[1] || steps[1] != steps[2] {
		t.Fatalf("steps %v: want equal and >= 2000", steps)
	}
	// The budget applies at exactly that count.
	deploy(t, rt, "work2", string(mustRead(t, "testdata/reference.lua")), func(s *Spec) { s.Limits.MaxSteps = 3 })
	if _, err := invoke(t, rt, "work2", refEvent("10")); !errors.Is(err, ErrBudget) {
		t.Fatalf("tiny budget: %v", err)
	}
}

func TestLogCap(t *testing.T) {
	rt := newTestRuntime(t)
	deploy(t, rt, "chatty", "function handle() for i = 1, 10 do log.info('line ' .. i) end end", func(s *Spec) { s.Limits.MaxLogLines = 3 })
	res, err := invoke(t, rt, "chatty", nil)
	if err != nil || len(res.Logs) != 4 || !strings.Contains(res.Logs[3].Msg, "7 log lines dropped") {
		t.Fatalf("%v %+v", err, res.Logs)
	}
}

type failingState struct{}

func (failingState) GetState(context.Context, string, string) ([]byte, bool, error) {
	return nil, false, errors.New("disk on fire")
}

func TestStateReaderError(t *testing.T) {
	rt := newTestRuntime(t)
	deploy(t, rt, "s", "function handle() return {v = state.get('k')} end")
	_, err := rt.Invoke(context.Background(), "s", &Event{}, failingState{})
	if !errors.Is(err, ErrRuntime) || !strings.Contains(err.Error(), "disk on fire") {
		t.Fatalf("err = %v", err)
	}
}

// blockingState blocks GetState until released, to hold an invocation in
// flight.
type blockingState struct {
	entered chan struct{}
	release chan struct{}
}

func newBlockingState() *blockingState {
	return &blockingState{entered: make(chan struct{}, 16), release: make(chan struct{})}
}

func (b *blockingState) GetState(ctx context.Context, _, _ string) ([]byte, bool, error) {
	b.entered <- struct{}{}
	select {
	case <-b.release:
		return nil, false, nil
	case <-ctx.Done():
		return nil, false, ctx.Err()
	}
}

const blockingSrc = `function handle() state.get("k"); return "%s" end`

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(2 * time.Millisecond)
	}
}

func TestPoolMinInstancesAndReuse(t *testing.T) {
	rt := newTestRuntime(t)
	deploy(t, rt, "warm", string(mustRead(t, "testdata/reference.lua")), func(s *Spec) { s.MinInstances = 2; s.IdleTimeout = time.Millisecond })
	st, ok := rt.Stats("warm")
	if !ok || st.Warm != 2 || st.ColdStarts != 2 || st.Version != 1 {
		t.Fatalf("after deploy: %+v", st)
	}
	for i := 0; i < 5; i++ {
		if _, err := invoke(t, rt, "warm", refEvent("1")); err != nil {
			t.Fatal(err)
		}
	}
	// Idle reclaim keeps MinInstances.
	time.Sleep(30 * time.Millisecond)
	st, _ = rt.Stats("warm")
	if st.ColdStarts != 2 || st.Warm != 2 || st.Invocations != 5 {
		t.Fatalf("after invocations: %+v", st)
	}
}

func TestPoolIdleReclaim(t *testing.T) {
	rt := newTestRuntime(t)
	deploy(t, rt, "idle", `function handle() return "ok" end`, func(s *Spec) { s.IdleTimeout = 500 * time.Millisecond })
	if st, _ := rt.Stats("idle"); st.Warm != 0 {
		t.Fatalf("MinInstances 0 should start cold: %+v", st)
	}
	var wg sync.WaitGroup
	for i := 0; i < 3; i++ {
		wg.Add(1)
		go func() { defer wg.Done(); _, _ = rt.Invoke(context.Background(), "idle", &Event{}, nil) }()
	}
	wg.Wait()
	// Long enough an idle timeout that a slow wake-up from Wait does not
	// find the instances reclaimed already (with 20ms it could).
	if st, _ := rt.Stats("idle"); st.Warm < 1 {
		t.Fatalf("no warm instance after invocations: %+v", st)
	}
	waitFor(t, "scale to zero", func() bool { st, _ := rt.Stats("idle"); return st.Warm == 0 })
}

func TestPoolBusy(t *testing.T) {
	rt := newTestRuntime(t)
	deploy(t, rt, "one", fmt.Sprintf(blockingSrc, "v1"), func(s *Spec) {
		s.MaxConcurrency, s.MaxWaiting, s.QueueTimeout = 1, 1, 2*time.Second
		s.Limits.Timeout = time.Minute // the blocked invocation outlasts the queue timeout
	})
	bs := newBlockingState()
	first := make(chan error, 1)
	go func() {
		_, err := rt.Invoke(context.Background(), "one", &Event{}, bs)
		first <- err
	}()
	<-bs.entered
	second := make(chan error, 1)
	go func() {
		_, err := rt.Invoke(context.Background(), "one", &Event{}, nil)
		second <- err
	}()
	waitFor(t, "a waiter", func() bool { st, _ := rt.Stats("one"); return st.Waiting == 1 && st.Busy == 1 })
	// The queue is full: the third call fails at once, not after the
	// queue timeout (2s, so that the waiter is still queued however slow
	// this machine is).
	start := time.Now()
	res, err := rt.Invoke(context.Background(), "one", &Event{}, nil)
	if !errors.Is(err, ErrBusy) || res.Cost.Outcome != "busy" || time.Since(start) > time.Second {
		t.Fatalf("third call: %v after %v", err, time.Since(start))
	}
	// The waiter gives up after QueueTimeout.
	if err := <-second; !errors.Is(err, ErrBusy) {
		t.Fatalf("waiter: %v", err)
	}
	close(bs.release)
	if err := <-first; err != nil {
		t.Fatalf("first: %v", err)
	}
	// A waiter whose context ends stops waiting with ErrBusy (it did not
	// run) wrapping the context's error.
	bs2 := newBlockingState()
	go func() { _, _ = rt.Invoke(context.Background(), "one", &Event{}, bs2) }()
	<-bs2.entered
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
	defer cancel()
	if _, err := rt.Invoke(ctx, "one", &Event{}, nil); !errors.Is(err, ErrBusy) || !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("waiter with ctx: %v", err)
	}
	close(bs2.release)
}

func TestPoolAtomicSwap(t *testing.T) {
	rt := newTestRuntime(t)
	deploy(t, rt, "fn", fmt.Sprintf(blockingSrc, "v1"))
	rt.mu.RLock()
	oldPool := rt.fns["fn"]
	rt.mu.RUnlock()
	bs := newBlockingState()
	inflight := make(chan *Result, 1)
	go func() {
		res, err := rt.Invoke(context.Background(), "fn", &Event{}, bs)
		if err != nil {
			t.Error(err)
		}
		inflight <- res
	}()
	<-bs.entered
	deploy(t, rt, "fn", `function handle() return "v2" end`, func(s *Spec) { s.Version = 2 })
	res, err := invoke(t, rt, "fn", nil)
	if err != nil || string(res.Value) != "v2" || res.Version != 2 {
		t.Fatalf("after swap: %v %s v%d", err, res.Value, res.Version)
	}
	close(bs.release)
	old := <-inflight
	if string(old.Value) != "v1" || old.Version != 1 {
		t.Fatalf("in-flight call: %s v%d", old.Value, old.Version)
	}
	oldPool.mu.Lock()
	idle, retired := len(oldPool.idle), oldPool.retired
	oldPool.mu.Unlock()
	if !retired || idle != 0 {
		t.Fatalf("old pool not drained: retired %v, idle %d", retired, idle)
	}
}

func TestPoolSwapUnderLoad(t *testing.T) {
	rt := newTestRuntime(t)
	src := func(v int) string { return fmt.Sprintf(`function handle() return "v%d" end`, v) }
	deploy(t, rt, "fn", src(1))
	stop := make(chan struct{})
	var wg sync.WaitGroup
	errs := make(chan error, 100)
	for g := 0; g < 4; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-stop:
					return
				default:
				}
				res, err := rt.Invoke(context.Background(), "fn", &Event{}, nil)
				if err != nil {
					errs <- err
					return
				}
				if want := fmt.Sprintf("v%d", res.Version); string(res.Value) != want {
					errs <- fmt.Errorf("version %d returned %s", res.Version, res.Value)
					return
				}
			}
		}()
	}
	for v := 2; v <= 20; v++ {
		deploy(t, rt, "fn", src(v), func(s *Spec) { s.Version = int64(v); s.MinInstances = 1 })
	}
	close(stop)
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	res, err := invoke(t, rt, "fn", nil)
	if err != nil || string(res.Value) != "v20" {
		t.Fatalf("final: %v %s", err, res.Value)
	}
}

func TestRemoveAndClose(t *testing.T) {
	rt := NewRuntime(Options{})
	deploy(t, rt, "x", `function handle() return "x" end`)
	if !rt.Remove("x") || rt.Remove("x") {
		t.Fatal("Remove")
	}
	if _, err := invoke(t, rt, "x", nil); !errors.Is(err, ErrNotFound) {
		t.Fatalf("removed: %v", err)
	}
	if _, ok := rt.Stats("x"); ok {
		t.Fatal("stats of a removed function")
	}
	rt.Close()
	rt.Close()
	if _, err := invoke(t, rt, "x", nil); !errors.Is(err, ErrClosed) {
		t.Fatalf("closed: %v", err)
	}
	if err := rt.Deploy(context.Background(), Spec{Name: "y", Source: []byte("function handle() end")}); !errors.Is(err, ErrClosed) {
		t.Fatalf("deploy after close: %v", err)
	}
	if err := NewRuntime(Options{}).Deploy(context.Background(), Spec{Name: "bad", Source: []byte("x = ")}); !errors.Is(err, ErrCompile) {
		t.Fatalf("bad deploy: %v", err)
	}
}

// TestFunctionDefinitions: the closure instrumentation keeps the meaning of
// every form of function definition.
func TestFunctionDefinitions(t *testing.T) {
	rt := newTestRuntime(t)
	deploy(t, rt, "defs", `
local obj = {n = 10, inner = {}}
function obj:add(x) return self.n + x end
function obj.inner.twice(x) return 2 * x end
local function fact(n) if n <= 1 then return 1 end return n * fact(n - 1) end
local anon = function(...) return select("#", ...) end
function global_fn() return "g" end
function handle(event, ctx)
  local counter = 0
  local inc = function() counter = counter + 1; return counter end
  inc(); inc()
  return {add = obj:add(5), twice = obj.inner.twice(4), fact = fact(5), nargs = anon(1, nil, 3),
    g = global_fn(), counter = counter, concat = 1 .. "-" .. 2.5 .. "-" .. "x"}
end`)
	res, err := invoke(t, rt, "defs", nil)
	want := `{"add":15,"concat":"1-2.5-x","counter":2,"fact":120,"g":"g","nargs":3,"twice":8}`
	if err != nil || string(res.Value) != want {
		t.Fatalf("%v %s, want %s", err, res.Value, want)
	}
}

// TestConcatMetamethod: @concat falls back to __concat like the VM.
func TestConcatMetamethod(t *testing.T) {
	rt := newTestRuntime(t)
	deploy(t, rt, "cm", `
function handle()
  local mt = {__concat = function(a, b)
    local x = type(a) == "table" and a.v or a
    local y = type(b) == "table" and b.v or b
    return x .. "+" .. y
  end}
  local v = setmetatable({v = "V"}, mt)
  local ok, err = pcall(function() return "a" .. {} end)
  return {l = v .. "s", r = "s" .. v, chain = "a" .. v .. "b", err = err}
end`)
	res, err := invoke(t, rt, "cm", nil)
	if err != nil || !strings.Contains(string(res.Value), `"chain":"aV+b","err":"cm:9: attempt to concatenate a table value","l":"V+s","r":"s+V"`) {
		t.Fatalf("%v %s", err, res.Value)
	}
}

// TestStateReadBoundedByDeadline: a store read that hangs is cut at the
// invocation's deadline and reported as a timeout.
func TestStateReadBoundedByDeadline(t *testing.T) {
	rt := newTestRuntime(t)
	deploy(t, rt, "slow", `function handle() return {v = state.get("k")} end`, func(s *Spec) { s.Limits.Timeout = 50 * time.Millisecond })
	bs := newBlockingState() // never released
	start := time.Now()
	_, err := rt.Invoke(context.Background(), "slow", &Event{}, bs)
	if !errors.Is(err, ErrTimeout) || time.Since(start) > 5*time.Second {
		t.Fatalf("err %v after %v", err, time.Since(start))
	}
}

// TestAssignmentRewrite: t[k] = v through @set and computed constructor
// keys through @table keep Lua's meaning.
func TestAssignmentRewrite(t *testing.T) {
	rt := newTestRuntime(t)
	deploy(t, rt, "asg", `
local function two() return "x", "y" end
function handle()
  local a = {1, 2, 3}
  a[1], a[3] = a[3], a[1]
  local t = {}
  t[#t + 1] = "p"; t[#t + 1] = "q"
  local k = "key"
  t[k] = two()
  local x, y
  x, t[k .. 2], y = two()
  local logged = {}
  local proxy = setmetatable({}, {__newindex = function(_, key, v) logged[#logged + 1] = key .. "=" .. v end})
  proxy[1] = "one"; proxy["s" .. 1] = "two"
  local c = {"first", [k] = 1, "second", [2 + 1] = "third", n = 4, [two()] = "multi"}
  local sparse = {}
  sparse[100] = "far"
  return {a = a, t = t, x = x, y = y, logged = logged, c = c, far = sparse[100], n = #c}
end`)
	res, err := invoke(t, rt, "asg", nil)
	want := `{"a":[3,2,1],"c":{"1":"first","2":"second","3":"third","key":1,"n":4,"x":"multi"},"far":"far","logged":["1=one","s1=two"],"n":3,"t":{"1":"p","2":"q","key":"x","key2":"y"},"x":"x"}`
	if err != nil || string(res.Value) != want {
		t.Fatalf("%v\n got %s\nwant %s", err, res.Value, want)
	}
}

// TestChunkVarargHooksAreHarmless: the runtime's hooks reach the user's
// top-level `...`; calling them by hand must not refund steps or write to
// the read-only libraries.
func TestChunkVarargHooksAreHarmless(t *testing.T) {
	rt := newTestRuntime(t)
	deploy(t, rt, "va", `
local hooks = {...}
function handle()
  local errs = {}
  for i, h in ipairs(hooks) do
    local ok, err = pcall(h, string, "upper", "pwned")
    pcall(h, -1e18)
    errs[#errs + 1] = ok and "ok" or "error"
  end
  return {n = #hooks, upper = ("a"):upper(), errs = table.concat(errs, ",")}
end`, func(s *Spec) { s.Limits.MaxSteps = 1000 })
	for i := 0; i < 2; i++ {
		res, err := invoke(t, rt, "va", nil)
		if err != nil || !strings.Contains(string(res.Value), `"upper":"A"`) || res.Cost.Steps > 100 {
			t.Fatalf("%v %s steps %d", err, res.Value, res.Cost.Steps)
		}
		if i == 0 {
			t.Logf("%s", res.Value)
		}
	}
	deploy(t, rt, "spin", "local tick = ...\nfunction handle() while true do tick(-1e18) end end", func(s *Spec) { s.Limits.MaxSteps = 10000 })
	if _, err := invoke(t, rt, "spin", nil); !errors.Is(err, ErrBudget) {
		t.Fatalf("negative ticks: %v", err)
	}
}

// TestQueuedCallMovesToNewVersion: a call waiting for a slot of a
// function when a new version is deployed runs the new version, at once
// (the new version has slots of its own); before, it took the old pool's
// slot once one freed and ran the old code after Deploy had returned.
func TestQueuedCallMovesToNewVersion(t *testing.T) {
	rt, bs := oneSlotBlocked(t)
	first := make(chan *Result, 1)
	go func() { res, _ := rt.Invoke(context.Background(), "fn", &Event{}, bs); first <- res }()
	<-bs.entered
	second := make(chan *Result, 1)
	go func() { res, _ := rt.Invoke(context.Background(), "fn", &Event{}, nil); second <- res }()
	waitFor(t, "a waiter", func() bool { st, _ := rt.Stats("fn"); return st.Waiting == 1 })
	deploy(t, rt, "fn", `function handle() return "v2" end`, func(s *Spec) { s.Version = 2 })
	// The first call (v1) still holds its slot: the waiter is not behind it.
	if res := <-second; string(res.Value) != "v2" || res.Version != 2 {
		t.Fatalf("the call waiting during the deploy ran %q (version %d)", res.Value, res.Version)
	}
	close(bs.release)
	if res := <-first; res.Version != 1 {
		t.Fatalf("the running call: version %d", res.Version)
	}
}

// TestQueuedCallOfRemovedFunction: a call waiting for a slot when its
// function is removed fails with ErrNotFound instead of running it.
func TestQueuedCallOfRemovedFunction(t *testing.T) {
	rt, bs := oneSlotBlocked(t)
	first := make(chan struct{})
	go func() { _, _ = rt.Invoke(context.Background(), "fn", &Event{}, bs); close(first) }()
	<-bs.entered
	second := make(chan error, 1)
	go func() { _, err := rt.Invoke(context.Background(), "fn", &Event{}, nil); second <- err }()
	waitFor(t, "a waiter", func() bool { st, _ := rt.Stats("fn"); return st.Waiting == 1 })
	rt.Remove("fn")
	if err := <-second; !errors.Is(err, ErrNotFound) {
		t.Fatalf("the call waiting during the removal: %v, want ErrNotFound", err)
	}
	close(bs.release)
	<-first
}

// TestMinInstancesRestored: min_instances are kept: instances thrown away
// after a breach are started again in the background (before, the pool
// stayed below its minimum and the next calls started cold).
func TestMinInstancesRestored(t *testing.T) {
	rt := newTestRuntime(t) // reclaims every 10 ms
	deploy(t, rt, "fn", `function handle(e) if e.payload == "boom" then while true do end end return "ok" end`, func(s *Spec) {
		s.MinInstances = 2
		s.Limits.MaxSteps = 1000
	})
	if st, _ := rt.Stats("fn"); st.Warm != 2 {
		t.Fatalf("after deploy: %+v", st)
	}
	for range 2 {
		if _, err := rt.Invoke(context.Background(), "fn", &Event{Payload: []byte("boom")}, nil); !errors.Is(err, ErrBudget) {
			t.Fatalf("breach: %v", err)
		}
	}
	waitFor(t, "2 warm instances again", func() bool { st, _ := rt.Stats("fn"); return st.Warm == 2 })
	cold := func() uint64 { st, _ := rt.Stats("fn"); return st.ColdStarts }
	before := cold()
	if res, err := rt.Invoke(context.Background(), "fn", &Event{}, nil); err != nil || string(res.Value) != "ok" {
		t.Fatalf("%v %v", res, err)
	}
	if cold() != before {
		t.Fatalf("the next call started cold")
	}
}

// oneSlotBlocked deploys "fn" (version 1) with one concurrency slot whose
// calls block in state.get on the returned blockingState.
func oneSlotBlocked(t *testing.T) (*Runtime, *blockingState) {
	t.Helper()
	rt := newTestRuntime(t)
	deploy(t, rt, "fn", fmt.Sprintf(blockingSrc, "v1"), func(s *Spec) {
		s.MaxConcurrency, s.QueueTimeout = 1, time.Minute
		s.Limits.Timeout = time.Minute
	})
	return rt, newBlockingState()
}

// TryInvoke does not wait for an instance: with the only one busy it fails
// with ErrBusy at once, without queueing, and runs once one is free.
func TestTryInvokeDoesNotWait(t *testing.T) {
	rt := newTestRuntime(t)
	deploy(t, rt, "one", fmt.Sprintf(blockingSrc, "v1"), func(s *Spec) {
		s.MaxConcurrency, s.MaxWaiting, s.QueueTimeout = 1, 4, time.Minute
		s.Limits.Timeout = time.Minute
	})
	bs := newBlockingState()
	first := make(chan error, 1)
	go func() {
		_, err := rt.Invoke(context.Background(), "one", &Event{}, bs)
		first <- err
	}()
	<-bs.entered
	start := time.Now()
	if _, err := rt.TryInvoke(context.Background(), "one", &Event{}, nil); !errors.Is(err, ErrBusy) {
		t.Fatalf("TryInvoke with the only instance busy: %v, want ErrBusy", err)
	}
	if el := time.Since(start); el > 10*time.Second {
		t.Fatalf("TryInvoke waited %v (queue timeout one minute)", el)
	}
	if st, _ := rt.Stats("one"); st.Waiting != 0 {
		t.Fatalf("%d waiting after TryInvoke", st.Waiting)
	}
	close(bs.release)
	if err := <-first; err != nil {
		t.Fatal(err)
	}
	if _, err := rt.TryInvoke(context.Background(), "one", &Event{}, nil); err != nil {
		t.Fatalf("TryInvoke with an instance free: %v", err)
	}
}
