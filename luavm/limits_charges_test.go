package luavm

import (
	"context"
	"errors"
	"log/slog"
	"runtime"
	"sync"
	"testing"
	"time"
)

// heapProbe is a StateReader whose GetState (state.get from the function)
// records the live Go heap after a collection: what the function holds at
// that point, measured while it still holds it.
type heapProbe struct {
	mu   sync.Mutex
	live []uint64
}

func (p *heapProbe) GetState(context.Context, string, string) ([]byte, bool, error) {
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	p.mu.Lock()
	p.live = append(p.live, ms.HeapAlloc)
	p.mu.Unlock()
	return nil, false, nil
}

// runProbed runs src once under lim and returns the result, the error and
// the growth of the live heap seen by the last state.get probe (0 if the
// function never reached it).
func runProbed(t *testing.T, lim Limits, src string) (*Result, error, uint64) {
	t.Helper()
	rt := NewRuntime(Options{DefaultLimits: lim, ReclaimInterval: time.Hour, Logger: slog.New(slog.DiscardHandler)})
	defer rt.Close()
	deploy(t, rt, "f", src)
	base := heapInUse()
	p := &heapProbe{}
	res, err := rt.Invoke(context.Background(), "f", refEvent("1"), p)
	p.mu.Lock()
	defer p.mu.Unlock()
	if len(p.live) == 0 {
		return res, err, 0
	}
	last := p.live[len(p.live)-1]
	return res, err, last - min(last, base)
}

// A write through a __newindex table pads the table it lands in, but
// chargePadding returns early when the table written to has an array long
// enough (of nils), without following __newindex: the padding of the target
// is uncharged until the next table scan, and one scan window pads hundreds
// of tables.
func TestNewindexPaddingCharged(t *testing.T) {
	lim := DefaultLimits() // 16 MiB
	lim.Timeout = 20 * time.Second
	src := `
function handle()
  local N = 100000
  local t0 = {}
  t0[N] = true            -- an array of N slots (charged: 3.2 MB)
  local mt = {}
  setmetatable(t0, mt)
  local keep = {}
  for i = 1, 60 do
    local v = {}
    mt.__newindex = v
    t0[N - 1] = true       -- absent in t0: lands in v, padding it to N-1 slots
    keep[i] = v
  end
  state.get("probe")
  return {n = #keep}
end`
	res, err, live := runProbed(t, lim, src)
	t.Logf("err=%v peak_accounted=%d MiB live_heap_growth=%d MiB", err, res.Cost.PeakMemory>>20, live>>20)
	if !errors.Is(err, ErrMemory) {
		t.Errorf("err %v, want ErrMemory (accounted peak %d MiB, cap %d MiB)", err, res.Cost.PeakMemory>>20, lim.MaxMemory>>20)
	}
	if live > uint64(2*lim.MaxMemory) {
		t.Errorf("function held %d MiB of Go heap under a memory cap of %d MiB", live>>20, lim.MaxMemory>>20)
	}
}

// string.upper and string.lower are charged the length of their input, but
// gopher-lua's use strings.ToUpper/ToLower, which turn every byte that is not
// UTF-8 into U+FFFD (3 bytes): the output is three times what was charged
// (and the bytes of a binary string are corrupted, unlike Lua 5.1).
func TestUpperOfBinaryCharged(t *testing.T) {
	lim := DefaultLimits()
	src := `
function handle()
  local s = string.rep("\255", 1000000)
  local keep = {}
  for i = 1, 14 do keep[i] = s:upper() end
  state.get("probe")
  return {n = #keep[1]}
end`
	res, err, live := runProbed(t, lim, src)
	t.Logf("err=%v peak_accounted=%d live_heap_growth=%d MiB result=%s", err, res.Cost.PeakMemory, live>>20, res.Value)
	if err == nil && live > uint64(lim.MaxMemory)*3/2 {
		t.Errorf("function held %d MiB of Go heap, accounted peak %d MiB (cap %d MiB)", live>>20, res.Cost.PeakMemory>>20, lim.MaxMemory>>20)
	}
	if err == nil && string(res.Value) != `{"n":1000000}` {
		t.Errorf("upper of 1,000,000 bytes of \\255 gave a string of another length: %s (Lua 5.1: bytes are kept)", res.Value)
	}
}

func TestCryptoOutputCharged(t *testing.T) {
	lim := DefaultLimits()
	src := `
function handle()
  local keep = {}
  for i = 1, 380000 do keep[i] = crypto.sha256("x") end
  state.get("probe")
  return {n = #keep}
end`
	res, err, live := runProbed(t, lim, src)
	t.Logf("err=%v steps=%d peak_accounted=%d MiB live_heap_growth=%d MiB", err, res.Cost.Steps, res.Cost.PeakMemory>>20, live>>20)
	if err == nil && live > uint64(lim.MaxMemory)*3/2 {
		t.Errorf("function held %d MiB of Go heap, accounted peak %d MiB (cap %d MiB)", live>>20, res.Cost.PeakMemory>>20, lim.MaxMemory>>20)
	}
}

// unpack's guard computes j-i in int: with i = NaN or -1e300 (MinInt64 on
// amd64) it overflows to a negative count, the guard lets it through and
// gopher-lua pushes values until the value stack overflows: an uncatchable
// ErrCallDepth ("registry overflow") instead of the catchable "too many
// results" error of the guard (and of Lua 5.1).
func TestUnpackHugeRangeCatchable(t *testing.T) {
	rt := newTestRuntime(t)
	deploy(t, rt, "f", `function handle()
  local ok, err = pcall(unpack, {1, 2}, 0/0)
  local ok2, err2 = pcall(unpack, {}, -1e300, 5)
  return {ok = ok, ok2 = ok2}
end`)
	res, err := rt.Invoke(context.Background(), "f", refEvent("1"), nil)
	if err != nil {
		t.Fatalf("pcall(unpack, t, NaN) ended the invocation: %v", err)
	}
	if string(res.Value) != `{"ok":false,"ok2":false}` {
		t.Errorf("got %s", res.Value)
	}
}

// Table growth is measured by scans every scanEvery steps or more: an
// invocation that grew its tables past the cap since the last scan and
// returned before the next one was accepted. The scan at the end fails it.
func TestGrowthSinceLastScanFailsAtTheEnd(t *testing.T) {
	lim := DefaultLimits()
	lim.MaxMemory = 32 << 10 // 400 hash entries take more (about 50 KB with the event)
	rt := NewRuntime(Options{DefaultLimits: lim, Logger: slog.New(slog.DiscardHandler)})
	defer rt.Close()
	deploy(t, rt, "f", `function handle()
  local t = {}
  for i = 1, 400 do t[i * 0.5] = true end
  return {n = 1}
end`)
	res, err := rt.Invoke(context.Background(), "f", refEvent("1"), nil)
	if !errors.Is(err, ErrMemory) {
		t.Fatalf("err %v (steps %d, accounted peak %d), want ErrMemory: cap %d",
			err, res.Cost.Steps, res.Cost.PeakMemory, lim.MaxMemory)
	}
	if res.Value != nil {
		t.Errorf("a failed invocation returned %s", res.Value)
	}
}

// string.byte as Lua 5.1 has it: j defaults to i (gopher-lua's went to the
// end of the string, uncharged and past the 8000-value bound), and the
// range is clamped to the string before it is counted.
func TestStringByteLua51(t *testing.T) {
	rt := newTestRuntime(t)
	deploy(t, rt, "f", `
function handle()
  local s = "abc"
  local big = string.rep("x", 10000)
  local ok = pcall(function() return select('#', big:byte(1, -1)) end)
  return json.encode({
    select('#', s:byte()), select('#', string.byte(s, 2, nil)), select('#', big:byte()), ok,
    {string.byte(s, 1, 10000)}, {string.byte(s, -10000, -1)}, {s:byte(-1)}, select('#', s:byte(-10)),
    select('#', s:byte(3, 2)), {string.byte(42)},
  })
end`)
	res, err := rt.Invoke(context.Background(), "f", refEvent("1"), nil)
	if err != nil {
		t.Fatal(err)
	}
	if got, want := string(res.Value), `[1,1,1,false,[97,98,99],[97,98,99],[99],0,0,[52]]`; got != want {
		t.Fatalf("got %s, want %s (Lua 5.1)", got, want)
	}
}

// unpack as Lua 5.1 has it, bounds included.
func TestUnpackLua51(t *testing.T) {
	rt := newTestRuntime(t)
	deploy(t, rt, "f", `
function handle()
  local t = {1, 2, 3}
  local ok, err = pcall(unpack, {}, 1, 9000)
  return json.encode({ {unpack(t)}, {unpack(t, 2)}, {unpack(t, 2, 3)}, select('#', unpack(t, 3, 2)), select('#', unpack(t, -1, 1)), ok })
end`)
	res, err := rt.Invoke(context.Background(), "f", refEvent("1"), nil)
	if err != nil {
		t.Fatal(err)
	}
	if got, want := string(res.Value), `[[1,2,3],[2,3],[2,3],0,3,false]`; got != want {
		t.Fatalf("got %s, want %s (Lua 5.1)", got, want)
	}
}

// A write through a __newindex loop is a catchable error in Lua; the
// padding charge walked the loop and charged the table it stopped on,
// which for a large key failed the invocation with the memory error.
func TestNewindexLoopCatchable(t *testing.T) {
	rt := newTestRuntime(t)
	deploy(t, rt, "f", `
function handle()
  local a, b = {}, {}
  setmetatable(a, {__newindex = b})
  setmetatable(b, {__newindex = a})
  local ok = pcall(function() a[1000000] = 1 end)
  return {ok = ok}
end`)
	res, err := rt.Invoke(context.Background(), "f", refEvent("1"), nil)
	if err != nil {
		t.Fatalf("write through a __newindex loop: %v (Lua: a catchable error)", err)
	}
	if string(res.Value) != `{"ok":false}` {
		t.Fatalf("got %s, want the pcall to fail", res.Value)
	}
}

// unpack takes a table and string.byte a string (or a number), as in Lua
// 5.1: one wrapper serves both, and it picked its behaviour from the
// argument (unpack("abc") gave the bytes). A bound past 2^53 is clamped:
// string.byte("abc", 1, 2^60) is the three bytes.
func TestUnpackAndByteKeepTheirArgumentTypes(t *testing.T) {
	rt := newTestRuntime(t)
	deploy(t, rt, "f", `
function handle()
  local ok1 = pcall(function() return {unpack("abc", 1, 3)} end)
  local ok2 = pcall(function() return {string.byte({7, 8, 9}, 1, 3)} end)
  local ok3 = pcall(function() return {unpack(12)} end)
  local ok4 = pcall(unpack, {}, 1, 2^60)
  return json.encode({ok1, ok2, ok3, ok4, {string.byte("abc", 1, 2^60)}, {string.byte("abc", -2^60, 2)}})
end`)
	res, err := rt.Invoke(context.Background(), "f", refEvent("1"), nil)
	if err != nil {
		t.Fatal(err)
	}
	if got, want := string(res.Value), `[false,false,false,false,[97,98,99],[97,98]]`; got != want {
		t.Fatalf("got %s, want %s (Lua 5.1)", got, want)
	}
}
