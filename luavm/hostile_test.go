package luavm

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
	"unicode/utf8"

	lua "github.com/yuin/gopher-lua"
)

// hostileLimits are the limits the hostile scripts run under: small enough
// to keep the test fast under -race, large enough for real functions.
var hostileLimits = Limits{MaxSteps: 300_000, MaxMemory: 512 << 10, Timeout: 10 * time.Second}

var kindErrors = map[string]error{
	"budget":           ErrBudget,
	"memory":           ErrMemory,
	"call_depth":       ErrCallDepth,
	"timeout":          ErrTimeout,
	"error":            ErrRuntime,
	"panic":            ErrPanic,
	"too_many_effects": ErrTooManyEffects,
	"effect_too_large": ErrEffectTooLarge,
	"result_too_large": ErrResultTooLarge,
}

// hostileExpect is what the header of a hostile script expects: the first
// line "-- expect: KIND" names the error kind; optional lines after it are
// "-- error: TEXT" (the error message contains TEXT) and "-- max_alloc_mib:
// N" (the invocation allocates at most N MiB of Go heap in all, garbage
// included: the limit must refuse an allocation before it happens, not
// after).
type hostileExpect struct {
	kind     string
	errText  string
	maxAlloc uint64
}

func expectedKind(t *testing.T, src []byte) hostileExpect {
	t.Helper()
	sc := bufio.NewScanner(bytes.NewReader(src))
	sc.Scan()
	kind, ok := strings.CutPrefix(sc.Text(), "-- expect: ")
	if !ok || kindErrors[kind] == nil {
		t.Fatalf("first line must be '-- expect: KIND', got %q", sc.Text())
	}
	exp := hostileExpect{kind: kind}
	for sc.Scan() {
		line := sc.Text()
		if v, ok := strings.CutPrefix(line, "-- error: "); ok {
			exp.errText = v
		} else if v, ok := strings.CutPrefix(line, "-- max_alloc_mib: "); ok {
			n, err := strconv.ParseUint(v, 10, 64)
			if err != nil {
				t.Fatalf("bad max_alloc_mib line %q", line)
			}
			exp.maxAlloc = n << 20
		} else {
			break
		}
	}
	return exp
}

// totalAlloc returns the bytes allocated by the process so far.
func totalAlloc() uint64 {
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return ms.TotalAlloc
}

func heapInUse() uint64 {
	runtime.GC()
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return ms.HeapAlloc
}

// TestHostile runs every script of testdata/hostile and checks, for each,
// the error kind, that the breached instance is discarded, that the Go
// heap comes back, and that a well-behaved function running concurrently
// keeps producing correct results.
func TestHostile(t *testing.T) {
	files, err := filepath.Glob("testdata/hostile/*.lua")
	if err != nil || len(files) < 30 {
		t.Fatalf("want at least 30 hostile scripts, have %d (%v)", len(files), err)
	}
	rt := NewRuntime(Options{DefaultLimits: hostileLimits, ReclaimInterval: time.Hour, Logger: slog.New(slog.DiscardHandler)})
	defer rt.Close()
	deploy(t, rt, "good", string(mustRead(t, "testdata/reference.lua")))

	// The well-behaved neighbour.
	// The neighbour pauses while the heap is measured, so that its own
	// in-flight garbage does not count.
	var pause sync.RWMutex
	measure := func() uint64 {
		pause.Lock()
		defer pause.Unlock()
		return heapInUse()
	}
	var good, bad atomic.Int64
	var firstBad atomic.Value
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			select {
			case <-stop:
				return
			default:
			}
			pause.RLock()
			res, err := rt.Invoke(context.Background(), "good", refEvent("90"), nil)
			pause.RUnlock()
			if err != nil || string(res.Value) != `{"hum":40,"temp":90,"temp_f":194}` || len(res.Effects) != 1 {
				bad.Add(1)
				firstBad.CompareAndSwap(nil, err)
			} else {
				good.Add(1)
			}
		}
	}()

	for _, f := range files {
		name := strings.TrimSuffix(filepath.Base(f), ".lua")
		t.Run(name, func(t *testing.T) {
			src := mustRead(t, f)
			exp := expectedKind(t, src)
			kind := exp.kind
			before := measure()
			goodBefore := good.Load()
			deploy(t, rt, name, string(src))
			var res *Result
			var err error
			if exp.maxAlloc > 0 {
				// Alone, so that the bytes allocated are the script's.
				pause.Lock()
				a := totalAlloc()
				res, err = rt.Invoke(context.Background(), name, refEvent("1"), nil)
				allocated := totalAlloc() - a
				pause.Unlock()
				t.Logf("allocated %d bytes of Go heap", allocated)
				if allocated > exp.maxAlloc {
					t.Errorf("allocated %d bytes of Go heap, want at most %d", allocated, exp.maxAlloc)
				}
			} else {
				res, err = rt.Invoke(context.Background(), name, refEvent("1"), nil)
			}
			if err == nil {
				t.Fatalf("no error; result %.200s", res.Value)
			}
			if !errors.Is(err, kindErrors[kind]) {
				t.Fatalf("error %.300v, want kind %s", err, kind)
			}
			if !strings.Contains(err.Error(), exp.errText) {
				t.Fatalf("error %.300v, want one containing %q", err, exp.errText)
			}
			if res == nil || res.Cost.Outcome != kind {
				t.Fatalf("outcome %q, want %q", res.Cost.Outcome, kind)
			}
			if IsLimit(err) != (kind != "error" && kind != "panic") {
				t.Errorf("IsLimit(%v) = %v", err, IsLimit(err))
			}
			if st, _ := rt.Stats(name); (IsLimit(err) || kind == "panic") && st.Warm != 0 {
				t.Errorf("breached instance kept warm: %+v", st)
			}
			lim := hostileLimits
			if res.Cost.Steps > lim.MaxSteps+1<<16 {
				t.Errorf("steps %d beyond the budget %d", res.Cost.Steps, lim.MaxSteps)
			}
			if res.Cost.PeakMemory > lim.MaxMemory+1<<20 {
				t.Errorf("peak memory %d beyond the cap %d", res.Cost.PeakMemory, lim.MaxMemory)
			}
			t.Logf("%v (steps %d, peak %d B, %v)", err, res.Cost.Steps, res.Cost.PeakMemory, res.Cost.Wall)
			rt.Remove(name)
			// The neighbour keeps working while and after the script runs.
			deadline := time.Now().Add(10 * time.Second)
			for good.Load() < goodBefore+3 && time.Now().Before(deadline) {
				runtime.Gosched()
			}
			if good.Load() < goodBefore+3 {
				t.Errorf("the well-behaved function made no progress")
			}
			after := measure()
			if after > before+4<<20 {
				t.Errorf("heap grew from %d to %d bytes", before, after)
			}
		})
	}
	close(stop)
	wg.Wait()
	if bad.Load() != 0 {
		t.Fatalf("well-behaved function failed %d times (first: %v)", bad.Load(), firstBad.Load())
	}
	t.Logf("well-behaved function: %d correct invocations", good.Load())
}

// refJSONString is the JSON string encoding without reservations (the
// encoder's before it charged its buffer as it grows), for comparison.
func refJSONString(s string) string {
	const hex = "0123456789abcdef"
	b := []byte{'"'}
	for i := 0; i < len(s); {
		c := s[i]
		if c < utf8.RuneSelf {
			switch {
			case c == '"' || c == '\\':
				b = append(b, '\\', c)
			case c == '\n':
				b = append(b, '\\', 'n')
			case c == '\r':
				b = append(b, '\\', 'r')
			case c == '\t':
				b = append(b, '\\', 't')
			case c < 0x20 || c == 0x7f:
				b = append(b, '\\', 'u', '0', '0', hex[c>>4], hex[c&0xf])
			default:
				b = append(b, c)
			}
			i++
			continue
		}
		r, size := utf8.DecodeRuneInString(s[i:])
		if r == utf8.RuneError && size == 1 {
			b = append(b, "\uFFFD"...)
		} else {
			b = append(b, s[i:i+size]...)
		}
		i += size
	}
	return string(append(b, '"'))
}

// TestJSONEncodeBufferGrowth checks the encoder's reservations: the output
// is unchanged wherever the buffer grows (escapes and invalid bytes across
// growth points), the output limit is exact (never refused when the output
// fits), and each growth is checked against the memory cap beside what
// the invocation holds, so the peak stays under the cap.
func TestJSONEncodeBufferGrowth(t *testing.T) {
	pieces := []string{"a", "\x00", "\"", "\\", "\n", "\x7f", "é", "\xff", "😀", "\t", "xyz", "\x1f"}
	for n := 0; n < 300; n++ {
		var sb strings.Builder
		for i := 0; i < n; i++ {
			sb.WriteString(pieces[(i*7+n)%len(pieces)])
		}
		s := sb.String()
		want := refJSONString(s)
		v := lua.LTable{}
		v.Append(lua.LString(s))
		v.Append(lua.LNumber(-1.2345678901234567e-308))
		v.Append(lua.LString(s))
		wantArr := "[" + want + ",-1.2345678901234567e-308," + want + "]"
		for _, limit := range []int{len(wantArr), len(wantArr) - 1} {
			e := jsonEncoder{limit: limit}
			e.encode(&v, 0)
			if limit == len(wantArr) && (e.err != nil || string(e.buf) != wantArr) {
				t.Fatalf("n=%d limit %d: %q %v, want %q", n, limit, e.buf, e.err, wantArr)
			}
			if limit < len(wantArr) && (!e.tooLarge || cap(e.buf) > limit+jsonSlack) {
				t.Fatalf("n=%d limit %d: %v (tooLarge %v), cap %d", n, limit, e.err, e.tooLarge, cap(e.buf))
			}
		}
		e := jsonEncoder{limit: 1 << 20}
		e.encode(lua.LString(s), 0)
		if e.err != nil || string(e.buf) != want || !json.Valid(e.buf) {
			t.Fatalf("n=%d: %q %v, want %q", n, e.buf, e.err, want)
		}
	}

	in, err := newInstance(mustCompile(t, "function handle() end"), &Spec{}, hostileLimits)
	if err != nil {
		t.Fatal(err)
	}
	defer in.close()
	lim := hostileLimits.WithDefaults()
	big := lua.LString(strings.Repeat("\x01", 100_000)) // 600 KB encoded
	for _, held := range []int64{0, 200 << 10, 400 << 10, 500 << 10} {
		in.inv = invocation{limits: lim, ctx: context.Background(), deadline: time.Now().Add(time.Minute), nextScan: 1 << 62}
		in.inv.strBytes = held
		e := jsonEncoder{in: in, limit: 1 << 30}
		e.encode(big, 0)
		if !errors.Is(e.err, ErrMemory) {
			t.Fatalf("holding %d: %v, want ErrMemory", held, e.err)
		}
		if held+int64(cap(e.buf)) > lim.MaxMemory || in.inv.peak > lim.MaxMemory {
			t.Fatalf("holding %d: buffer of %d bytes, peak %d, over the cap %d", held, cap(e.buf), in.inv.peak, lim.MaxMemory)
		}
	}
}

// TestIndexErrorKeyCut: indexing nil with a long key raises a message that
// names at most 64 bytes of it (patched gopher-lua, errKey), so catching
// such errors in a loop does not copy the key, uncharged, each time: 300
// iterations with a 1 MB key allocated 1.1 GiB before.
func TestIndexErrorKeyCut(t *testing.T) {
	rt := NewRuntime(Options{DefaultLimits: DefaultLimits(), ReclaimInterval: time.Hour, Logger: slog.New(slog.DiscardHandler)})
	defer rt.Close()
	deploy(t, rt, "f", `
function handle(event, ctx)
  local big = string.rep("\226\130\172", 350000) -- a 1 MB key of 3-byte characters
  local keep = {}
  for i = 1, 300 do
    local ok, e = pcall(function() local n = nil; return n[big] end)
    keep[i] = e
    ok, e = pcall(function() local n = nil; n[big] = 1 end)
    keep[300 + i] = e
  end
  return {first = keep[1], set = keep[301], n = #keep}
end`)
	a := totalAlloc()
	res, err := rt.Invoke(context.Background(), "f", refEvent("1"), nil)
	allocated := totalAlloc() - a
	if err != nil {
		t.Fatal(err)
	}
	var out struct {
		First, Set string
		N          int
	}
	if err := json.Unmarshal(res.Value, &out); err != nil {
		t.Fatal(err)
	}
	if out.N != 600 || !strings.Contains(out.First, "with key '\u20ac") || !strings.HasSuffix(out.First, "...'") || len(out.First) > 200 || len(out.Set) > 200 {
		t.Fatalf("result %s", res.Value)
	}
	if !utf8.ValidString(out.First) || !utf8.ValidString(out.Set) {
		t.Fatalf("a message cut inside a character: %q %q", out.First, out.Set)
	}
	if allocated > 32<<20 {
		t.Fatalf("allocated %d MiB of Go heap", allocated>>20)
	}
}

// TestJSONEncodeDeadline: json.encode of a table that references its
// subtables many times (2^22 values written from 22 tables) stops at the
// invocation's deadline instead of running to its output limit.
func TestJSONEncodeDeadline(t *testing.T) {
	lim := DefaultLimits()
	lim.Timeout = 50 * time.Millisecond
	lim.MaxMemory = 256 << 20 // the output limit of json.encode is the memory cap
	rt := NewRuntime(Options{DefaultLimits: lim, ReclaimInterval: time.Hour, Logger: slog.New(slog.DiscardHandler)})
	defer rt.Close()
	// (The result, state values and effects have output limits of their
	// own, far below the memory cap.)
	for _, src := range []string{
		`function handle() local t = {} for i = 1, 24 do t = {t, t} end return {n = #json.encode(t)} end`,
	} {
		deploy(t, rt, "f", src)
		res, err := rt.Invoke(context.Background(), "f", refEvent("1"), nil)
		if !errors.Is(err, ErrTimeout) {
			t.Fatalf("%s: %v, want ErrTimeout", src, err)
		}
		// Without the check the encoding alone takes seconds (2^24 values,
		// ~50 MB of output) and the timeout is only seen after it (11 s); the
		// deadline is checked every 1,024 values.
		if res.Cost.Wall > 100*lim.Timeout { // a hang guard: without the check it ran 11 s
			t.Errorf("%s: stopped after %v with a timeout of %v", src, res.Cost.Wall, lim.Timeout)
		}
		if st, _ := rt.Stats("f"); st.Warm != 0 {
			t.Errorf("the instance that timed out was kept warm")
		}
	}
}

// panicState is a StateReader that panics, standing for a bug in a host
// component.
type panicState struct{}

func (panicState) GetState(context.Context, string, string) ([]byte, bool, error) {
	panic("host bug")
}

// TestHostPanicDiscardsInstance: a Go panic during an invocation, even
// one a function tries to catch with pcall, ends it with ErrPanic, the
// instance is discarded, and the next invocation runs on a fresh one.
func TestHostPanicDiscardsInstance(t *testing.T) {
	rt := NewRuntime(Options{DefaultLimits: hostileLimits, ReclaimInterval: time.Hour, Logger: slog.New(slog.DiscardHandler)})
	defer rt.Close()
	for _, src := range []string{
		`function handle() return {v = state.get("k")} end`,
		`function handle() local ok = pcall(state.get, "k") return {caught = ok} end`,
	} {
		deploy(t, rt, "f", src)
		res, err := rt.Invoke(context.Background(), "f", refEvent("1"), panicState{})
		if !errors.Is(err, ErrPanic) || !strings.Contains(err.Error(), "host bug") {
			t.Fatalf("%s: %v, want ErrPanic", src, err)
		}
		if res.Cost.Outcome != "panic" || res.Value != nil {
			t.Fatalf("%s: outcome %q, value %s", src, res.Cost.Outcome, res.Value)
		}
		if st, _ := rt.Stats("f"); st.Warm != 0 {
			t.Fatalf("%s: the instance was kept warm: %+v", src, st)
		}
		if _, err := rt.Invoke(context.Background(), "f", refEvent("1"), nil); err != nil && errors.Is(err, ErrPanic) {
			t.Fatalf("%s: the next invocation: %v", src, err)
		}
	}
}
