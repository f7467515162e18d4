package luavm

import (
	"fmt"
	"math"
	"sort"
	"strconv"
	"strings"
	"unsafe"

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
	// Lua 5.1 changes case byte by byte (the C locale): the length stays.
	// gopher-lua's use Go's Unicode mapping, which turns each byte that is
	// not UTF-8 into U+FFFD (three bytes) and some letters into longer
	// ones: binary strings were corrupted and the output charged a third.
	set("upper", sized(func(L *lua.LState) int {
		L.Push(lua.LString(asciiCase(L.CheckString(1), 'a', 'z', -32)))
		return 1
	}))
	set("lower", sized(func(L *lua.LState) int {
		L.Push(lua.LString(asciiCase(L.CheckString(1), 'A', 'Z', 32)))
		return 1
	}))
	set("reverse", sized(orig("reverse")))
	set("byte", in.wrapCount(orig("byte"), 1, true))
	char := orig("char")
	set("char", func(L *lua.LState) int {
		in.alloc(L, int64(L.GetTop()))
		return char(L)
	})
	set("rep", in.strRep)
	set("format", in.strFormat)
	set("find", func(L *lua.LState) int { return in.strFind(L, true) })
	set("match", func(L *lua.LState) int { return in.strFind(L, false) })
	set("gmatch", in.strGmatch)
	set("gsub", in.strGsub)
}

// asciiCase returns s with each byte in [lo, hi] shifted by delta, the
// others kept.
func asciiCase(s string, lo, hi byte, delta int) string {
	b := []byte(s)
	for i, c := range b {
		if c >= lo && c <= hi {
			b[i] = byte(int(c) + delta)
		}
	}
	return string(b)
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

// strFormat is string.format, written here so that no format string of the
// user reaches Go's fmt: each conversion is checked against Lua 5.1's syntax
// (flags "-+ #0", a width and a precision of at most two digits each,
// conversions c d i o u x X e E f g G q s and %%); anything else, such as
// Go's argument indexes (%[1]d), '*' or %v, is a Lua error. An upper bound
// of the output is charged before it is built.
func (in *instance) strFormat(L *lua.LState) int {
	f := L.CheckString(1)
	top := L.GetTop()
	specs := make([]fmtSpec, 0, 8)
	est := int64(len(f))
	arg := 1
	for i := 0; i < len(f); i++ {
		if f[i] != '%' {
			continue
		}
		sp, next := parseFmtSpec(L, f, i)
		i = next - 1
		if sp.verb == '%' {
			continue
		}
		arg++
		if arg > top {
			L.ArgError(arg, "no value")
		}
		sp.arg = arg
		est += 128 // the width, the precision, a number
		switch sp.verb {
		case 's':
			est += int64(len(fmtString(L.Get(arg))))
		case 'q':
			est += int64(quotedLen(L.CheckString(arg)))
		case 'f', 'e', 'E', 'g', 'G':
			// %f of 1e308 has 309 digits before the point.
			if x := math.Abs(float64(L.CheckNumber(arg))); x >= 1e21 && !math.IsInf(x, 0) {
				est += int64(math.Log10(x)) + 1
			}
		default:
			L.CheckNumber(arg)
		}
		specs = append(specs, sp)
	}
	in.alloc(L, est)
	var b strings.Builder
	b.Grow(int(est))
	last, k := 0, 0
	for i := 0; i < len(f); i++ {
		if f[i] != '%' {
			continue
		}
		b.WriteString(f[last:i])
		if f[i+1] == '%' {
			b.WriteByte('%')
			i++
			last = i + 1
			continue
		}
		sp := specs[k]
		k++
		sp.write(L, &b)
		i = sp.end - 1
		last = sp.end
	}
	b.WriteString(f[last:])
	L.Push(lua.LString(b.String()))
	return 1
}

// fmtSpec is one checked conversion of a string.format format.
type fmtSpec struct {
	flags string // a subset of "-+ #0"
	width string // at most two digits
	prec  string // "" or "." and at most two digits
	verb  byte
	arg   int // the argument it formats
	end   int // the offset after it in the format
}

// parseFmtSpec checks the conversion starting at f[i] ('%') against Lua
// 5.1's syntax.
func parseFmtSpec(L *lua.LState, f string, i int) (fmtSpec, int) {
	start := i
	i++
	sp := fmtSpec{}
	j := i
	for j < len(f) && strings.IndexByte("-+ #0", f[j]) >= 0 {
		j++
	}
	if j-i > 5 {
		L.RaiseError("invalid format (repeated flags)")
	}
	sp.flags = f[i:j]
	i = j
	for j < len(f) && j-i < 2 && isDigit(f[j]) {
		j++
	}
	sp.width = f[i:j]
	i = j
	if j < len(f) && f[j] == '.' {
		j++
		for j < len(f) && j-i < 3 && isDigit(f[j]) {
			j++
		}
		sp.prec = f[i:j]
		i = j
	}
	if j < len(f) && isDigit(f[j]) {
		L.RaiseError("invalid format (width or precision too long)")
	}
	if j == len(f) {
		L.RaiseError("invalid option '%s' to 'format' (the format ends inside a conversion)", fmtQuoteSpec(f[start:j]))
	}
	sp.verb = f[j]
	if strings.IndexByte("cdiouxXeEfgGqs%", sp.verb) < 0 || (sp.verb == '%' && j > start+1) {
		L.RaiseError("invalid option '%s' to 'format'", fmtQuoteSpec(f[start:j+1]))
	}
	sp.end = j + 1
	return sp, j + 1
}

func isDigit(c byte) bool { return c >= '0' && c <= '9' }

// fmtQuoteSpec shows a rejected conversion in an error message: printable
// ASCII as is, other bytes escaped.
func fmtQuoteSpec(s string) string {
	q := strconv.QuoteToASCII(s)
	return q[1 : len(q)-1]
}

// fmtString is what %s writes for v: strings and numbers as Lua converts
// them, other values as tostring without metamethods ("table: 0x...").
func fmtString(v lua.LValue) string {
	if s, ok := v.(lua.LString); ok {
		return string(s)
	}
	return v.String()
}

// write formats the spec's argument onto b, through a Go format built from
// the checked parts only.
func (sp *fmtSpec) write(L *lua.LState, b *strings.Builder) {
	gofmt := func(verb byte) string { return "%" + sp.flags + sp.width + sp.prec + string(verb) }
	// Flags that Go honours where C ignores them: '0' on strings, '+' and
	// ' ' on unsigned numbers.
	flags := func(drop string) string {
		return strings.Map(func(r rune) rune {
			if strings.ContainsRune(drop, r) {
				return -1
			}
			return r
		}, sp.flags)
	}
	without := func(drop string) string { return "%" + flags(drop) + sp.width + sp.prec }
	switch sp.verb {
	case 's':
		fmt.Fprintf(b, without("0")+"s", fmtString(L.Get(sp.arg)))
	case 'q':
		writeQuoted(b, L.CheckString(sp.arg))
	case 'c':
		fmt.Fprintf(b, without("0")+"s", string([]byte{byte(int64(L.CheckNumber(sp.arg)))}))
	case 'd', 'i':
		fmt.Fprintf(b, gofmt('d'), int64(L.CheckNumber(sp.arg)))
	case 'o', 'x', 'X':
		fmt.Fprintf(b, without("+ ")+string(sp.verb), uint64(int64(L.CheckNumber(sp.arg))))
	case 'u':
		fmt.Fprintf(b, without("+ ")+"d", uint64(int64(L.CheckNumber(sp.arg))))
	default: // e E f g G
		x := float64(L.CheckNumber(sp.arg))
		if math.IsInf(x, 0) || math.IsNaN(x) {
			// C's spelling, not Go's (+Inf, NaN).
			s := "inf"
			switch {
			case math.IsNaN(x):
				s = "nan"
			case x < 0:
				s = "-inf"
			case strings.IndexByte(sp.flags, '+') >= 0:
				s = "+inf"
			case strings.IndexByte(sp.flags, ' ') >= 0:
				s = " inf"
			}
			if sp.verb == 'E' || sp.verb == 'G' {
				s = strings.ToUpper(s)
			}
			fmt.Fprintf(b, "%"+flags("+ #0")+sp.width+"s", s)
			return
		}
		prec := sp.prec
		if prec == "" && (sp.verb == 'g' || sp.verb == 'G') {
			prec = ".6" // C's default; Go's %g would print the shortest form
		}
		fmt.Fprintf(b, "%"+sp.flags+sp.width+prec+string(sp.verb), x)
	}
}

// quotedLen is the length of %q's output for s.
func quotedLen(s string) int {
	n := 2
	for i := 0; i < len(s); i++ {
		switch s[i] {
		case '"', '\\', '\n', '\r':
			n += 2
		case 0:
			n += 4
		default:
			n++
		}
	}
	return n
}

// writeQuoted writes s as Lua 5.1's %q does: between double quotes, with
// '"', '\\', newline, carriage return and NUL escaped, so that Lua reads
// it back as s.
func writeQuoted(b *strings.Builder, s string) {
	b.WriteByte('"')
	for i := 0; i < len(s); i++ {
		switch c := s[i]; c {
		case '"', '\\', '\n':
			b.WriteByte('\\')
			b.WriteByte(c)
		case '\r':
			b.WriteString("\\r")
		case 0:
			b.WriteString("\\000")
		default:
			b.WriteByte(c)
		}
	}
	b.WriteByte('"')
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

// patternParseBytes bounds the Go heap that parsing and compiling a pattern
// allocate per byte of pattern (80 to 425 bytes measured, for sets and for
// repeated single characters).
const patternParseBytes = 512

// compilePattern compiles a pattern for find, match, gmatch or gsub. The
// parse's garbage (hundreds of bytes per byte of pattern) must fit under the
// memory cap, and the parse is charged one step per byte of pattern (at
// most MaxMemory/512 steps, then).
func (in *instance) compilePattern(L *lua.LState, pat string) *pm.Pattern {
	in.transient(L, patternParseBytes*int64(len(pat)), "parsing a pattern")
	in.charge(L, int64(len(pat)))
	p, err := pm.Compile(pat)
	if err != nil {
		L.RaiseError("%s", err.Error())
	}
	return p
}

// readOnlyBytes returns the bytes of s without copying them; the matcher
// only reads its subject.
func readOnlyBytes(s string) []byte { return unsafe.Slice(unsafe.StringData(s), len(s)) }

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
	err := in.compilePattern(L, pat).Each(readOnlyBytes(s), init, &in.pmb, func(m *pm.MatchData) bool { found = m; return false })
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

// strGmatch compiles the pattern once; the iterator it returns keeps the
// compiled pattern, which is charged as memory.
func (in *instance) strGmatch(L *lua.LState) int {
	s := L.CheckString(1)
	pat := L.CheckString(2)
	if strings.HasPrefix(pat, "^") {
		// Not an anchor in gmatch (Lua 5.1 matches it as a character;
		// as an anchor every call after the first found nothing, or an
		// empty match).
		pat = "%" + pat
	}
	p := in.compilePattern(L, pat)
	in.alloc(L, int64(p.Size()))
	pos := 0
	src := readOnlyBytes(s)
	L.Push(L.NewFunction(func(L *lua.LState) int {
		in.charge(L, 1)
		if pos > len(s) {
			return 0
		}
		var found *pm.MatchData
		err := p.Each(src, pos, &in.pmb, func(m *pm.MatchData) bool { found = m; return false })
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
	p := in.compilePattern(L, pat)
	var replStr string
	if repl.Type() == lua.LTString || repl.Type() == lua.LTNumber {
		replStr = lua.LVAsString(repl)
	}
	var b strings.Builder
	last, count := 0, 0
	err := p.Each(readOnlyBytes(s), 0, &in.pmb, func(m *pm.MatchData) bool {
		if limit >= 0 && count >= limit {
			return false
		}
		count++
		start, end := m.Capture(0), m.Capture(1)
		if repl.Type() == lua.LTString || repl.Type() == lua.LTNumber {
			// The expansion (%0 and %1-%9 copy captures, so a short
			// replacement can stand for gigabytes) is charged before
			// it is written.
			in.alloc(L, int64(start-last)+gsubExpandLen(L, replStr, m))
			b.WriteString(s[last:start])
			gsubExpand(&b, replStr, m, s)
			last = end
			return true
		}
		var rep string
		keep := true
		switch r := repl.(type) {
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

// gsubCapture returns the bounds of what %idx (0-9) of a replacement string
// stands for in match m: [a, b) of the subject, or a position capture
// (pos true, the position in a).
func gsubCapture(L *lua.LState, idx int, m *pm.MatchData) (a, b int, pos bool) {
	if idx == 0 {
		return m.Capture(0), m.Capture(1), false
	}
	ci := 2 * idx
	if ci >= m.CaptureLength() {
		if idx == 1 && m.CaptureLength() == 2 {
			return m.Capture(0), m.Capture(1), false
		}
		L.RaiseError("invalid capture index")
	}
	if m.IsPosCapture(ci) {
		return m.Capture(ci), 0, true
	}
	return m.Capture(ci), m.Capture(ci + 1), false
}

// gsubExpandLen is the length of the expansion of repl for match m (what
// gsubExpand writes).
func gsubExpandLen(L *lua.LState, repl string, m *pm.MatchData) int64 {
	var n int64
	for i := 0; i < len(repl); i++ {
		c := repl[i]
		if c != '%' || i+1 == len(repl) {
			n++
			continue
		}
		i++
		c = repl[i]
		if c < '0' || c > '9' {
			n++
			continue
		}
		a, b, pos := gsubCapture(L, int(c-'0'), m)
		if pos {
			n += int64(len(strconv.Itoa(a)))
		} else {
			n += int64(b - a)
		}
	}
	return n
}

// gsubExpand writes repl onto b with %0-%9 replaced by the captures of m
// and %x by x.
func gsubExpand(b *strings.Builder, repl string, m *pm.MatchData, s string) {
	if strings.IndexByte(repl, '%') < 0 {
		b.WriteString(repl)
		return
	}
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
		// gsubExpandLen has checked the capture indexes.
		a, e, pos := gsubCapture(nil, int(c-'0'), m)
		if pos {
			b.WriteString(strconv.Itoa(a))
		} else {
			b.WriteString(s[a:e])
		}
	}
}

func (in *instance) wrapTable(tbl *lua.LTable) {
	L := in.L
	orig := func(name string) lua.LGFunction { return tbl.RawGetString(name).(*lua.LFunction).GFunction }
	set := func(name string, f lua.LGFunction) { tbl.RawSetString(name, L.NewFunction(f)) }
	insert, remove := orig("insert"), orig("remove")
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
		shift := int64(0)
		if pos := L.OptInt(2, n); pos >= 1 && pos <= n {
			shift = int64(n-pos) / 64
		}
		in.charge(L, 1+shift)
		return remove(L)
	})
	set("sort", in.tableSort)
	set("concat", in.tableConcat)
}

// tableSort is table.sort as Lua 5.1 has it: t[1..#t] (gopher-lua's sorted
// its whole array part, nil slots after #t included: t[#t] = nil made the
// sort fail, or moved a nil into 1..#t), in order of the comparator or of
// <. Every comparison is charged a step (which checks the clock every 32),
// and, when it runs in Go (no comparator, or a builtin one such as
// rawequal), a step per 64 bytes of the strings compared: Go's sort loop
// never enters the VM, whose ticks and deadline interrupt would not stop
// it. It sorts in place, as Lua 5.1 does (a comparator that fails leaves
// the table part sorted): a copy, live while the comparator runs, let a
// comparator that sorts the table again hold a copy per level (201 MiB
// under a 16 MiB cap). An inconsistent comparator gives some order, not
// Lua 5.1's "invalid order function for sorting".
func (in *instance) tableSort(L *lua.LState) int {
	t := L.CheckTable(1)
	in.checkWritable(L, t)
	var fn *lua.LFunction
	if L.GetTop() >= 2 && L.Get(2) != lua.LNil {
		fn = L.CheckFunction(2)
	}
	n := t.Len()
	in.charge(L, 1)
	sort.Sort(&luaSorter{in: in, L: L, fn: fn, inGo: fn == nil || fn.IsG, t: t, n: n})
	return 0
}

// luaSorter sorts t[1..n] in place by a Lua order (tableSort).
type luaSorter struct {
	in   *instance
	L    *lua.LState
	fn   *lua.LFunction // nil: <
	inGo bool           // comparisons run in Go: strings are charged
	t    *lua.LTable
	n    int
}

func (s *luaSorter) Len() int { return s.n }

func (s *luaSorter) Swap(i, j int) {
	a, b := s.t.RawGetInt(i+1), s.t.RawGetInt(j+1)
	s.t.RawSetInt(i+1, b)
	s.t.RawSetInt(j+1, a)
}

func (s *luaSorter) Less(i, j int) bool {
	a, b := s.t.RawGetInt(i+1), s.t.RawGetInt(j+1)
	cost := int64(1)
	if s.inGo {
		if x, ok := a.(lua.LString); ok {
			cost += int64(len(x)) / 64
		}
		if x, ok := b.(lua.LString); ok {
			cost += int64(len(x)) / 64
		}
	}
	s.in.charge(s.L, cost)
	if s.fn == nil {
		return s.L.LessThan(a, b)
	}
	s.L.Push(s.fn)
	s.L.Push(a)
	s.L.Push(b)
	s.L.Call(2, 1)
	r := lua.LVAsBool(s.L.Get(-1))
	s.L.Pop(1)
	return r
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
	in.charge(L, 1+int64(min(j-i+1, 1024))/8)
	total := int64(0)
	for k := i; k <= j; k++ {
		if k > i && (k-i)&1023 == 0 {
			// The rest as it goes: a bad index (a hostile range) ends it
			// first.
			in.charge(L, int64(min(j-k+1, 1024))/8)
		}
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
