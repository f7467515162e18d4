package luavm

import (
	"math"
	"strconv"
	"strings"

	lua "github.com/yuin/gopher-lua"

	"github.com/moongate-edge/moongate/luavm/internal/pm"
)

// wrapString replaces the string functions that allocate in proportion to
// their input or can run long with accounted versions; string.dump is
// removed.
func (in *instance) wrapString(str *lua.LTable) {
	L := in.L
	orig := func(name string) lua.LGFunction { return str.RawGetString(name).(*lua.LFunction).GFunction }
	set := func(name string, f lua.LGFunction) { str.RawSetString(name, L.NewFunction(f)) }
	str.RawSetString("dump", lua.LNil)
	str.RawSetString("gfind", lua.LNil)
	str.RawSetString("__index", lua.LNil)
	sized := func(o lua.LGFunction) lua.LGFunction {
		return func(L *lua.LState) int {
			in.alloc(L, int64(len(L.CheckString(1))))
			return o(L)
		}
	}
	set("upper", sized(orig("upper")))
	set("lower", sized(orig("lower")))
	set("reverse", sized(orig("reverse")))
	set("byte", in.wrapCount(orig("byte"), 1))
	set("rep", in.strRep)
	origFormat := orig("format")
	set("format", func(L *lua.LState) int { return in.strFormat(L, origFormat) })
	set("find", func(L *lua.LState) int { return in.strFind(L, true) })
	set("match", func(L *lua.LState) int { return in.strFind(L, false) })
	set("gmatch", in.strGmatch)
	set("gsub", in.strGsub)
}

func (in *instance) strRep(L *lua.LState) int {
	s := L.CheckString(1)
	n := L.CheckInt(2)
	if n <= 0 || len(s) == 0 {
		L.Push(lua.LString(""))
		return 1
	}
	if int64(n) > in.inv.limits.MaxMemory/int64(len(s)) {
		in.raise(L, errMemory(in.inv.limits.MaxMemory, "string.rep"))
	}
	in.alloc(L, int64(len(s))*int64(n))
	L.Push(lua.LString(strings.Repeat(s, n)))
	return 1
}

// strFormat checks widths and precisions (at most two digits, as in Lua
// 5.1) and charges an upper bound of the output before formatting.
func (in *instance) strFormat(L *lua.LState, orig lua.LGFunction) int {
	f := L.CheckString(1)
	est := int64(len(f))
	arg := 2
	for i := 0; i < len(f); i++ {
		if f[i] != '%' {
			continue
		}
		i++
		if i < len(f) && f[i] == '%' {
			continue
		}
		for i < len(f) && strings.IndexByte("-+ #0", f[i]) >= 0 {
			i++
		}
		digits := 0
		for i < len(f) && f[i] >= '0' && f[i] <= '9' {
			i++
			digits++
		}
		if i < len(f) && f[i] == '.' {
			i++
			pd := 0
			for i < len(f) && f[i] >= '0' && f[i] <= '9' {
				i++
				pd++
			}
			if pd > 2 {
				digits = 3
			}
		}
		if digits > 2 {
			L.RaiseError("invalid format (width or precision too long)")
		}
		est += 128
		if s, ok := L.Get(arg).(lua.LString); ok {
			est += int64(len(s))
		}
		arg++
	}
	in.alloc(L, est)
	return orig(L)
}

// strIndex converts a Lua string index (1-based, negative from the end) to
// a Go offset in [0, n].
func strIndex(i, n int) int {
	if i < 0 {
		i = n + i + 1
		if i < 1 {
			i = 1
		}
	} else if i == 0 {
		i = 1
	}
	if i > n+1 {
		i = n + 1
	}
	return i - 1
}

func pushCaptures(L *lua.LState, m *pm.MatchData, s string, whole bool) int {
	if m.CaptureLength() == 2 {
		if whole {
			L.Push(lua.LString(s[m.Capture(0):m.Capture(1)]))
			return 1
		}
		return 0
	}
	n := 0
	for i := 2; i < m.CaptureLength(); i += 2 {
		if m.IsPosCapture(i) {
			L.Push(lua.LNumber(m.Capture(i)))
		} else {
			L.Push(lua.LString(s[m.Capture(i):m.Capture(i+1)]))
		}
		n++
	}
	return n
}

// strFind implements string.find (find=true) and string.match.
func (in *instance) strFind(L *lua.LState, find bool) int {
	s := L.CheckString(1)
	pat := L.CheckString(2)
	init := strIndex(L.OptInt(3, 1), len(s))
	in.charge(L, 1+int64(len(s)-init)/64)
	if init > len(s) && !(init == len(s) && pat == "") {
		L.Push(lua.LNil)
		return 1
	}
	if find && (lua.LVAsBool(L.Get(4)) || !strings.ContainsAny(pat, "^$*+?.([%-")) {
		pos := strings.Index(s[init:], pat)
		if pos < 0 {
			L.Push(lua.LNil)
			return 1
		}
		L.Push(lua.LNumber(init + pos + 1))
		L.Push(lua.LNumber(init + pos + len(pat)))
		return 2
	}
	var found *pm.MatchData
	err := pm.Each(pat, []byte(s), init, &in.pmb, func(m *pm.MatchData) bool { found = m; return false })
	if err != nil {
		L.RaiseError("%s", err.Error())
	}
	if found == nil {
		L.Push(lua.LNil)
		return 1
	}
	if find {
		L.Push(lua.LNumber(found.Capture(0) + 1))
		L.Push(lua.LNumber(found.Capture(1)))
		return 2 + pushCaptures(L, found, s, false)
	}
	return pushCaptures(L, found, s, true)
}

func (in *instance) strGmatch(L *lua.LState) int {
	s := L.CheckString(1)
	pat := L.CheckString(2)
	pos := 0
	src := []byte(s)
	in.alloc(L, int64(len(s)))
	L.Push(L.NewFunction(func(L *lua.LState) int {
		in.charge(L, 1)
		if pos > len(s) {
			return 0
		}
		var found *pm.MatchData
		err := pm.Each(pat, src, pos, &in.pmb, func(m *pm.MatchData) bool { found = m; return false })
		if err != nil {
			L.RaiseError("%s", err.Error())
		}
		if found == nil {
			pos = len(s) + 1
			return 0
		}
		next := found.Capture(1)
		if next <= found.Capture(0) {
			next = found.Capture(0) + 1
		}
		pos = next
		return pushCaptures(L, found, s, true)
	}))
	return 1
}

func (in *instance) strGsub(L *lua.LState) int {
	s := L.CheckString(1)
	pat := L.CheckString(2)
	L.CheckTypes(3, lua.LTString, lua.LTTable, lua.LTFunction, lua.LTNumber)
	repl := L.Get(3)
	limit := L.OptInt(4, -1)
	in.charge(L, 1+int64(len(s))/64)
	var b strings.Builder
	last, count := 0, 0
	var err error
	err = pm.Each(pat, []byte(s), 0, &in.pmb, func(m *pm.MatchData) bool {
		if limit >= 0 && count >= limit {
			return false
		}
		count++
		start, end := m.Capture(0), m.Capture(1)
		var rep string
		keep := true
		switch r := repl.(type) {
		case lua.LString, lua.LNumber:
			rep = gsubExpand(L, lua.LVAsString(r), m, s)
		case *lua.LTable:
			v := L.GetTable(r, firstCapture(m, s))
			rep, keep = gsubValue(L, v)
		case *lua.LFunction:
			L.Push(r)
			n := pushCaptures(L, m, s, true)
			L.Call(n, 1)
			v := L.Get(-1)
			L.Pop(1)
			rep, keep = gsubValue(L, v)
		}
		if !keep {
			rep = s[start:end]
		}
		in.alloc(L, int64(start-last+len(rep)))
		b.WriteString(s[last:start])
		b.WriteString(rep)
		last = end
		return true
	})
	if err != nil {
		L.RaiseError("%s", err.Error())
	}
	in.alloc(L, int64(len(s)-last))
	b.WriteString(s[last:])
	L.Push(lua.LString(b.String()))
	L.Push(lua.LNumber(count))
	return 2
}

func firstCapture(m *pm.MatchData, s string) lua.LValue {
	idx := 0
	if m.CaptureLength() > 2 {
		idx = 2
	}
	if m.IsPosCapture(idx) {
		return lua.LNumber(m.Capture(idx))
	}
	return lua.LString(s[m.Capture(idx):m.Capture(idx+1)])
}

func gsubValue(L *lua.LState, v lua.LValue) (string, bool) {
	switch x := v.(type) {
	case lua.LString:
		return string(x), true
	case lua.LNumber:
		return x.String(), true
	case *lua.LNilType, lua.LBool:
		if lua.LVIsFalse(v) {
			return "", false
		}
	}
	L.RaiseError("invalid replacement value (a %s)", v.Type().String())
	return "", false
}

func gsubExpand(L *lua.LState, repl string, m *pm.MatchData, s string) string {
	if strings.IndexByte(repl, '%') < 0 {
		return repl
	}
	var b strings.Builder
	for i := 0; i < len(repl); i++ {
		c := repl[i]
		if c != '%' || i+1 == len(repl) {
			b.WriteByte(c)
			continue
		}
		i++
		c = repl[i]
		if c < '0' || c > '9' {
			b.WriteByte(c)
			continue
		}
		idx := int(c - '0')
		if idx == 0 {
			b.WriteString(s[m.Capture(0):m.Capture(1)])
			continue
		}
		ci := 2 * idx
		if ci >= m.CaptureLength() {
			if idx == 1 && m.CaptureLength() == 2 {
				b.WriteString(s[m.Capture(0):m.Capture(1)])
				continue
			}
			L.RaiseError("invalid capture index")
		}
		if m.IsPosCapture(ci) {
			b.WriteString(strconv.Itoa(m.Capture(ci)))
		} else {
			b.WriteString(s[m.Capture(ci):m.Capture(ci+1)])
		}
	}
	return b.String()
}

func (in *instance) wrapTable(tbl *lua.LTable) {
	L := in.L
	orig := func(name string) lua.LGFunction { return tbl.RawGetString(name).(*lua.LFunction).GFunction }
	set := func(name string, f lua.LGFunction) { tbl.RawSetString(name, L.NewFunction(f)) }
	insert, remove, sort := orig("insert"), orig("remove"), orig("sort")
	set("insert", func(L *lua.LState) int {
		t := L.CheckTable(1)
		in.checkWritable(L, t)
		in.charge(L, 1)
		if L.GetTop() >= 3 {
			// Like Lua 5.2: a position past the end would pad the array.
			n := t.Len()
			pos := L.CheckInt(2)
			if pos < 1 || pos > n+1 {
				L.ArgError(2, "position out of bounds")
			}
			in.charge(L, int64(n-pos+1)/64) // the shift
		}
		return insert(L)
	})
	set("remove", func(L *lua.LState) int {
		t := L.CheckTable(1)
		in.checkWritable(L, t)
		n := t.Len()
		in.charge(L, 1+int64(n-L.OptInt(2, n))/64) // the shift
		return remove(L)
	})
	set("sort", func(L *lua.LState) int {
		t := L.CheckTable(1)
		in.checkWritable(L, t)
		n := t.Len()
		in.charge(L, 1+int64(float64(n)*math.Log2(float64(n)+1)))
		return sort(L)
	})
	set("concat", in.tableConcat)
}

func (in *instance) tableConcat(L *lua.LState) int {
	t := L.CheckTable(1)
	sep := L.OptString(2, "")
	i := L.OptInt(3, 1)
	j := L.OptInt(4, t.Len())
	if j < i {
		L.Push(lua.LString(""))
		return 1
	}
	in.charge(L, 1+int64(j-i)/8)
	total := int64(0)
	for k := i; k <= j; k++ {
		v := t.RawGetInt(k)
		switch x := v.(type) {
		case lua.LString:
			total += int64(len(x))
		case lua.LNumber:
			total += 24
		default:
			L.RaiseError("invalid value (at index %d) in table for 'concat'", k)
		}
		total += int64(len(sep))
	}
	in.alloc(L, total)
	var b strings.Builder
	b.Grow(int(total))
	for k := i; k <= j; k++ {
		if k > i {
			b.WriteString(sep)
		}
		b.WriteString(lua.LVAsString(t.RawGetInt(k)))
	}
	L.Push(lua.LString(b.String()))
	return 1
}
