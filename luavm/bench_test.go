package luavm

import (
	"context"
	"encoding/json"
	"slices"
	"strings"
	"testing"
	"time"

	lua "github.com/yuin/gopher-lua"
	"github.com/yuin/gopher-lua/parse"
)

const refPayload = `{"temp":85,"hum":40,"device":"d1"}`

func refSource(tb testing.TB) string { return string(mustRead(tb, "testdata/reference.lua")) }

// BenchmarkWarmInvoke: the reference transform through Runtime.Invoke on
// a warm instance (sandbox, limits and metering on). Reports the median.
func BenchmarkWarmInvoke(b *testing.B) {
	rt := NewRuntime(Options{})
	defer rt.Close()
	deploy(b, rt, "ref", refSource(b), func(s *Spec) { s.MinInstances = 1 })
	ev := refEvent("85")
	ev.Payload = []byte(refPayload)
	ctx := context.Background()
	samples := make([]time.Duration, 0, min(b.N, 1<<20))
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		t0 := time.Now()
		res, err := rt.Invoke(ctx, "ref", ev, nil)
		if len(samples) < cap(samples) {
			samples = append(samples, time.Since(t0))
		}
		if err != nil || len(res.Effects) != 1 {
			b.Fatal(err)
		}
	}
	reportMedian(b, samples)
}

func reportMedian(b *testing.B, s []time.Duration) {
	if len(s) == 0 {
		return
	}
	slices.Sort(s)
	b.ReportMetric(float64(s[len(s)/2].Nanoseconds()), "median-ns")
}

// BenchmarkColdStart: a new sandboxed instance from the compiled prototype
// (state, libraries, sandbox, host modules) plus its first invocation.
func BenchmarkColdStart(b *testing.B) {
	prog := mustCompile(b, refSource(b))
	spec := &Spec{Name: "ref", Version: 1}
	lim := DefaultLimits()
	ev := refEvent("85")
	ev.Payload = []byte(refPayload)
	samples := make([]time.Duration, 0, min(b.N, 1<<20))
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		t0 := time.Now()
		in, err := newInstance(prog, spec, lim)
		if err != nil {
			b.Fatal(err)
		}
		res := &Result{}
		if err := in.run(context.Background(), "ref", ev, nil, lim, "id", res); err != nil || len(res.Effects) != 1 {
			b.Fatal(err)
		}
		if len(samples) < cap(samples) {
			samples = append(samples, time.Since(t0))
		}
		in.close()
	}
	reportMedian(b, samples)
}

// bare is the baseline: plain gopher-lua with base/string/table/math, no
// sandbox, no limits, no metering; json through encoding/json.
type bare struct {
	L       *lua.LState
	handle  *lua.LFunction
	effects []string
}

func bareProto(tb testing.TB) *lua.FunctionProto {
	chunk, err := parse.Parse(strings.NewReader(refSource(tb)), "ref")
	if err != nil {
		tb.Fatal(err)
	}
	proto, err := lua.Compile(chunk, "ref")
	if err != nil {
		tb.Fatal(err)
	}
	return proto
}

func newBare(proto *lua.FunctionProto) *bare {
	L := lua.NewState(lua.Options{SkipOpenLibs: true})
	for _, open := range []lua.LGFunction{lua.OpenBase, lua.OpenString, lua.OpenTable, lua.OpenMath} {
		L.Push(L.NewFunction(open))
		L.Call(0, 0)
	}
	b := &bare{L: L}
	js := L.NewTable()
	js.RawSetString("decode", L.NewFunction(func(L *lua.LState) int {
		var v any
		if err := json.Unmarshal([]byte(L.CheckString(1)), &v); err != nil {
			L.RaiseError("%s", err.Error())
		}
		L.Push(bareToLua(L, v))
		return 1
	}))
	js.RawSetString("encode", L.NewFunction(func(L *lua.LState) int {
		out, err := json.Marshal(bareFromLua(L.CheckAny(1)))
		if err != nil {
			L.RaiseError("%s", err.Error())
		}
		L.Push(lua.LString(out))
		return 1
	}))
	L.SetGlobal("json", js)
	mq := L.NewTable()
	mq.RawSetString("publish", L.NewFunction(func(L *lua.LState) int {
		b.effects = append(b.effects, L.CheckString(1), L.CheckString(2))
		return 0
	}))
	L.SetGlobal("mqtt", mq)
	L.Push(L.NewFunctionFromProto(proto))
	L.Call(0, 0)
	b.handle = L.GetGlobal("handle").(*lua.LFunction)
	return b
}

func bareToLua(L *lua.LState, v any) lua.LValue {
	switch x := v.(type) {
	case map[string]any:
		t := L.CreateTable(0, len(x))
		for k, e := range x {
			t.RawSetString(k, bareToLua(L, e))
		}
		return t
	case []any:
		t := L.CreateTable(len(x), 0)
		for i, e := range x {
			t.RawSetInt(i+1, bareToLua(L, e))
		}
		return t
	case string:
		return lua.LString(x)
	case float64:
		return lua.LNumber(x)
	case bool:
		return lua.LBool(x)
	}
	return lua.LNil
}

func bareFromLua(v lua.LValue) any {
	switch x := v.(type) {
	case *lua.LTable:
		m := map[string]any{}
		x.ForEach(func(k, e lua.LValue) { m[k.String()] = bareFromLua(e) })
		return m
	case lua.LString:
		return string(x)
	case lua.LNumber:
		return float64(x)
	case lua.LBool:
		return bool(x)
	}
	return nil
}

func (b *bare) call(ev *Event) (string, error) {
	L := b.L
	b.effects = b.effects[:0]
	evt := L.CreateTable(0, 4)
	evt.RawSetString("payload", lua.LString(ev.Payload))
	evt.RawSetString("device", lua.LString(ev.Captures["device"]))
	L.Push(b.handle)
	L.Push(evt)
	L.Push(L.CreateTable(0, 0))
	if err := L.PCall(2, 1, nil); err != nil {
		return "", err
	}
	ret := L.Get(-1)
	L.Pop(1)
	out, err := json.Marshal(bareFromLua(ret))
	return string(out), err
}

// BenchmarkBareWarm: the baseline, warm.
func BenchmarkBareWarm(b *testing.B) {
	br := newBare(bareProto(b))
	ev := refEvent("85")
	ev.Payload = []byte(refPayload)
	samples := make([]time.Duration, 0, min(b.N, 1<<20))
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		t0 := time.Now()
		if _, err := br.call(ev); err != nil || len(br.effects) != 2 {
			b.Fatal(err)
		}
		if len(samples) < cap(samples) {
			samples = append(samples, time.Since(t0))
		}
	}
	reportMedian(b, samples)
}

// BenchmarkBareCold: the baseline, a new state with the four libraries and
// the two host functions from the compiled prototype, plus one call.
func BenchmarkBareCold(b *testing.B) {
	proto := bareProto(b)
	ev := refEvent("85")
	ev.Payload = []byte(refPayload)
	samples := make([]time.Duration, 0, min(b.N, 1<<20))
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		t0 := time.Now()
		br := newBare(proto)
		if _, err := br.call(ev); err != nil {
			b.Fatal(err)
		}
		if len(samples) < cap(samples) {
			samples = append(samples, time.Since(t0))
		}
		br.L.Close()
	}
	reportMedian(b, samples)
}

// BenchmarkRatio interleaves sandboxed and bare invocations, warm and cold,
// in one run and reports the median of each and their ratios.
func BenchmarkRatio(b *testing.B) {
	rt := NewRuntime(Options{})
	defer rt.Close()
	deploy(b, rt, "ref", refSource(b), func(s *Spec) { s.MinInstances = 1 })
	prog := mustCompile(b, refSource(b))
	proto := bareProto(b)
	br := newBare(proto)
	ev := refEvent("85")
	ev.Payload = []byte(refPayload)
	lim := DefaultLimits()
	spec := &Spec{Name: "ref"}
	var warm, bareWarm, cold, bareCold []time.Duration
	ctx := context.Background()
	for i := 0; i < b.N; i++ {
		t0 := time.Now()
		if _, err := rt.Invoke(ctx, "ref", ev, nil); err != nil {
			b.Fatal(err)
		}
		t1 := time.Now()
		if _, err := br.call(ev); err != nil {
			b.Fatal(err)
		}
		t2 := time.Now()
		warm, bareWarm = append(warm, t1.Sub(t0)), append(bareWarm, t2.Sub(t1))
		if i%10 == 0 {
			t3 := time.Now()
			in, err := newInstance(prog, spec, lim)
			if err != nil {
				b.Fatal(err)
			}
			if err := in.run(ctx, "ref", ev, nil, lim, "id", &Result{}); err != nil {
				b.Fatal(err)
			}
			t4 := time.Now()
			nb := newBare(proto)
			if _, err := nb.call(ev); err != nil {
				b.Fatal(err)
			}
			t5 := time.Now()
			in.close()
			nb.L.Close()
			cold, bareCold = append(cold, t4.Sub(t3)), append(bareCold, t5.Sub(t4))
		}
	}
	med := func(s []time.Duration) float64 { slices.Sort(s); return float64(s[len(s)/2].Nanoseconds()) }
	w, bw, c, bc := med(warm), med(bareWarm), med(cold), med(bareCold)
	b.ReportMetric(w, "warm-median-ns")
	b.ReportMetric(bw, "bare-warm-median-ns")
	b.ReportMetric(w/bw, "warm-ratio")
	b.ReportMetric(c, "cold-median-ns")
	b.ReportMetric(bc, "bare-cold-median-ns")
	b.ReportMetric(c/bc, "cold-ratio")
}
