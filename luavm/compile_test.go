package luavm

import (
	"bytes"
	"errors"
	"fmt"
	"runtime"
	"strings"
	"testing"

	lua "github.com/yuin/gopher-lua"
)

func TestCompileErrors(t *testing.T) {
	cases := []struct {
		name, src  string
		want       error
		line, col  int
		msgContain string
	}{
		{"syntax", "function handle(event, ctx)\n  local x = = 1\nend\n", ErrCompile, 2, 13, "="},
		{"unclosed", "function handle(event, ctx)\n  if x then\nend\n", ErrCompile, 3, 0, ""},
		{"bad goto", "function handle(event, ctx)\n  goto nowhere\nend\n", ErrCompile, 0, 0, "nowhere"},
		{"no handle", "function other() end\n", ErrNoHandler, 0, 0, ""},
		{"local handle", "local function handle() end\n", ErrNoHandler, 0, 0, ""},
		{"method handle", "local t = {}\nfunction t.handle() end\n", ErrNoHandler, 0, 0, ""},
		{"bytecode", "\x1bLuaQ\x00\x01\x04", ErrBytecode, 0, 0, ""},
		{"too large", "function handle() end\n--" + strings.Repeat("x", DefaultMaxSourceBytes), ErrSourceTooLarge, 0, 0, ""},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			p, err := Compile(c.name, []byte(c.src))
			if p != nil || !errors.Is(err, c.want) {
				t.Fatalf("Compile = %v, %v; want %v", p, err, c.want)
			}
			var ce *CompileError
			if c.want == ErrCompile {
				if !errors.As(err, &ce) {
					t.Fatalf("%v is not a *CompileError", err)
				}
				if c.line != 0 && ce.Line != c.line {
					t.Errorf("line %d, want %d (%v)", ce.Line, c.line, err)
				}
				if c.col != 0 && ce.Column != c.col {
					t.Errorf("column %d, want %d (%v)", ce.Column, c.col, err)
				}
				if !strings.Contains(ce.Msg, c.msgContain) {
					t.Errorf("message %q does not contain %q", ce.Msg, c.msgContain)
				}
			}
		})
	}
}

func TestCompileAccepts(t *testing.T) {
	for _, src := range []string{
		"function handle(e, c) return nil end",
		"handle = function(e, c) return 'x' end",
		"local helper = 1\nfunction handle(e, c) return {helper} end",
	} {
		if _, err := Compile("ok", []byte(src)); err != nil {
			t.Errorf("Compile(%q): %v", src, err)
		}
	}
	rt := NewRuntime(Options{MaxSourceBytes: 64})
	defer rt.Close()
	if _, err := rt.Compile("big", bytes.Repeat([]byte(" "), 65)); !errors.Is(err, ErrSourceTooLarge) {
		t.Errorf("runtime source limit not applied: %v", err)
	}
}

// TestTableModel guards the reflection on gopher-lua's LTable that table
// accounting relies on: a table's accounted size must grow with its array
// and hash parts.
func TestTableModel(t *testing.T) {
	in, err := newInstance(mustCompile(t, "function handle() end"), &Spec{}, DefaultLimits())
	if err != nil {
		t.Fatal(err)
	}
	defer in.close()
	tb := in.L.CreateTable(0, 0)
	empty := tableBytes(tb)
	for i := 1; i <= 100; i++ {
		tb.RawSetInt(i, lvTrue)
	}
	arr := tableBytes(tb)
	for i := 0; i < 100; i++ {
		tb.RawSetString(strings.Repeat("k", i+1), lvTrue)
	}
	hash := tableBytes(tb)
	if !(empty == tableBaseBytes && arr >= empty+100*tableSlotBytes && hash >= arr+tableHashBytes+100*tableEntryBytes) {
		t.Fatalf("table model: empty %d, 100 array slots %d, +100 hash entries %d", empty, arr, hash)
	}
	// Keys set to nil are still held (gopher-lua's key list) and still
	// charged; setting one again adds nothing.
	for i := 0; i < 100; i++ {
		tb.RawSetString(strings.Repeat("k", i+1), lua.LNil)
	}
	if cleared := tableBytes(tb); cleared != hash {
		t.Fatalf("table model: %d after clearing the 100 hash entries, want %d (the keys are kept)", cleared, hash)
	}
	tb.RawSetString("k", lvTrue)
	tb.RawSetH(lua.LNumber(0.5), lvTrue)
	tb.RawSetH(lua.LNumber(0.5), lua.LNil)
	if got := tableBytes(tb); got != hash+tableEntryBytes {
		t.Fatalf("table model: %d after re-setting a kept key and adding and clearing one more, want %d", got, hash+tableEntryBytes)
	}
}

func mustCompile(t testing.TB, src string) *Program {
	t.Helper()
	p, err := Compile("test", []byte(src))
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func TestHandleUsesCtx(t *testing.T) {
	cases := map[string]bool{
		"function handle(e, ctx) return e end":                                     false,
		"function handle(e) return e end":                                          false,
		"function handle(e, ctx) return ctx.version end":                           true,
		"function handle(e, c) local f = function() return c end return f() end":   true,
		"function handle(e, ctx, ...) return select(1, ...) end":                   true,
		"function handle(e, ctx) return e end\nlocal h = handle":                   true,
		"function handle(e, ctx) return e end\nfunction handle(e, c) return c end": true,
		"handle = function(e, ctx) return e end":                                   true,
		"function handle(e, ctx) return _G end":                                    true,
		"function handle(e, ctx) return handle end":                                false, // the body never names ctx
	}
	for src, want := range cases {
		p, err := Compile("c", []byte(src))
		if err != nil {
			t.Fatal(err)
		}
		if got := !p.noCtx; got != want {
			t.Errorf("%q: uses ctx = %v, want %v", src, got, want)
		}
	}
}

// TestTableModelCoversHeap checks the table model against the Go heap that
// tables of the (patched) gopher-lua hold: for tables of 0 to 1,000 hash
// keys or array elements, the accounted size is at least what the heap
// grows by per table. (Key strings are made beforehand: luavm charges
// strings separately.)
func TestTableModelCoversHeap(t *testing.T) {
	heap := func() uint64 {
		runtime.GC()
		runtime.GC()
		var ms runtime.MemStats
		runtime.ReadMemStats(&ms)
		return ms.HeapAlloc
	}
	for _, size := range []int{0, 1, 2, 5, 8, 9, 16, 33, 64, 129, 500, 1000} {
		for _, array := range []bool{false, true} {
			count := 20000
			if size >= 100 {
				count = 1000
			}
			L := lua.NewState()
			if err := L.DoString(fmt.Sprintf("ks = {} for j = 1, %d do ks[j] = 'k'..j end", size)); err != nil {
				t.Fatal(err)
			}
			key := "ks[j]"
			if array {
				key = "j"
			}
			before := heap()
			if err := L.DoString(fmt.Sprintf("keep = {} for i = 1, %d do local t = {} for j = 1, %d do t[%s] = j end keep[i] = t end", count, size, key)); err != nil {
				t.Fatal(err)
			}
			perTable := float64(heap()-before) / float64(count)
			model := tableBytes(L.GetGlobal("keep").(*lua.LTable).RawGetInt(1).(*lua.LTable))
			t.Logf("size %4d array %-5v: heap %7.0f B per table, model %7d", size, array, perTable, model)
			if float64(model) < perTable {
				t.Errorf("size %d (array %v): the model charges %d B, the heap holds %.0f B per table", size, array, model, perTable)
			}
			L.Close()
		}
	}
}
