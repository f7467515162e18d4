package luavm

import (
	"fmt"
	"math"
	"sort"
	"strconv"
	"unicode/utf16"
	"unicode/utf8"

	lua "github.com/yuin/gopher-lua"
)

const maxJSONDepth = 100

// Growth of the encoder's buffer: the first allocation holds jsonInitialCap
// bytes (one allocation for the small records of a typical function), each
// later one at least doubles the capacity. jsonSlack bounds how much a
// reservation overestimates the bytes it is for (an escape reserves 6 for
// 2 or more).
const (
	jsonInitialCap = 64
	jsonSlack      = 8
)

// jsonEncoder writes Lua values as JSON. Objects have sorted keys, so the
// output is deterministic. A table is an array when its keys are exactly
// 1..n (n >= 1) or when it was marked by json.array or decoded from a JSON
// array; an empty unmarked table is {}.
//
// Every write reserves its room first (reserve; a string its length, each
// escape its expansion), so the buffer only grows in grow: there the output
// limit is enforced and, with an instance, the new buffer, beside the old
// one being copied and what the invocation holds, must fit under the
// memory cap before it is allocated. A refused growth ends the encoding
// (e.err, and tooLarge for the output limit).
type jsonEncoder struct {
	in       *instance
	buf      []byte
	limit    int
	err      error
	tooLarge bool // err is the output limit
	// values counts the values written: every 1024 the invocation's
	// deadline is checked (a table referenced many times is written each
	// time, so the work is not bounded by the tables the function made).
	values int
	// keys is the size of the key lists of the tables on path, live
	// together (counted with the output against the memory cap).
	keys int64
}

// jsonEncodeStop unwinds the encoder after a refused growth (see encode).
type jsonEncodeStop struct{}

func (e *jsonEncoder) fail(format string, args ...any) {
	if e.err == nil {
		e.err = fmt.Errorf(format, args...)
	}
}

// encode writes v to e.buf; on failure e.err is set (e.buf then holds part
// of the output). An output longer than e.limit is a failure.
// JSONString returns s as a JSON string, as luavm encodes strings (no HTML
// escapes; a byte that is not UTF-8 becomes U+FFFD): how a string result
// is stored as a record. For a result of an event other than an HTTP
// request, Invoke checked that this fits Limits.MaxResultBytes.
func JSONString(s string) []byte {
	e := jsonEncoder{limit: len(s)*6 + 2}
	e.encode(lua.LString(s), 0)
	return e.buf
}

func (e *jsonEncoder) encode(v lua.LValue, depth int) {
	defer func() {
		if r := recover(); r != nil {
			if _, ok := r.(jsonEncodeStop); !ok {
				panic(r)
			}
		}
	}()
	e.value(v, depth, nil)
	if e.err == nil && len(e.buf) > e.limit {
		e.err, e.tooLarge = fmt.Errorf("output larger than %d bytes", e.limit), true
	}
}

// reserve makes room for n more bytes.
func (e *jsonEncoder) reserve(n int) {
	if cap(e.buf)-len(e.buf) < n {
		e.grow(n)
	}
}

func (e *jsonEncoder) byte(c byte) {
	if len(e.buf) == cap(e.buf) {
		e.grow(1)
	}
	e.buf = append(e.buf, c)
}

// grow replaces the buffer by one with room for n more bytes, or stops the
// encoding if the output would exceed the limit or the buffers the memory
// cap. n is at most jsonSlack bytes more than what is written next, so
// a refusal means the output really is larger than the limit.
func (e *jsonEncoder) grow(n int) {
	if e.err != nil {
		panic(jsonEncodeStop{}) // the output is abandoned anyway
	}
	need := len(e.buf) + n
	if need > e.limit+jsonSlack {
		e.err, e.tooLarge = fmt.Errorf("output larger than %d bytes", e.limit), true
		panic(jsonEncodeStop{})
	}
	c := min(max(need, 2*cap(e.buf), jsonInitialCap), e.limit+jsonSlack)
	if e.in != nil {
		// Both buffers are live while the output is copied.
		if err := e.in.transientErr(int64(cap(e.buf))+int64(c), "the JSON output buffer"); err != nil {
			e.err = err
			panic(jsonEncodeStop{})
		}
	}
	b := make([]byte, len(e.buf), c)
	copy(b, e.buf)
	e.buf = b
}

// jsonPath is the chain of tables being written, innermost first (on the
// encoder's stack): a table met again on it is a cycle, refused at once
// (each of the 101 levels down to the depth limit listed and sorted all
// its keys: 300 MiB for a table of 60,000 keys holding itself).
type jsonPath struct {
	t  *lua.LTable
	up *jsonPath
}

func (e *jsonEncoder) value(v lua.LValue, depth int, up *jsonPath) {
	if e.err != nil {
		return
	}
	if e.values++; e.values&1023 == 0 && e.in != nil {
		if err := e.in.timeErr(); err != nil {
			e.err = err
			panic(jsonEncodeStop{})
		}
	}
	if len(e.buf) > e.limit {
		e.err, e.tooLarge = fmt.Errorf("output larger than %d bytes", e.limit), true
		return
	}
	if depth > maxJSONDepth {
		e.fail("nesting deeper than %d (cycle?)", maxJSONDepth)
		return
	}
	switch x := v.(type) {
	case *lua.LNilType:
		e.reserve(4)
		e.buf = append(e.buf, "null"...)
	case lua.LBool:
		e.reserve(5)
		if x {
			e.buf = append(e.buf, "true"...)
		} else {
			e.buf = append(e.buf, "false"...)
		}
	case lua.LNumber:
		e.number(float64(x))
	case lua.LString:
		e.str(string(x))
	case *lua.LUserData:
		if e.in != nil && x == e.in.null {
			e.reserve(4)
			e.buf = append(e.buf, "null"...)
			return
		}
		e.fail("cannot encode a userdata")
	case *lua.LTable:
		e.table(x, depth, up)
	default:
		e.fail("cannot encode a %s", v.Type().String())
	}
}

func (e *jsonEncoder) number(f float64) {
	if math.IsNaN(f) || math.IsInf(f, 0) {
		e.fail("cannot encode %v", f)
		return
	}
	var tmp [32]byte // at most 24 bytes: -1.2345678901234567e-308
	b, _ := appendJSONNumber(tmp[:0], f)
	e.reserve(len(b))
	e.buf = append(e.buf, b...)
}

// appendJSONNumber appends f as a JSON number: an integer below 2^53 in
// magnitude without a fraction, otherwise the shortest representation;
// NaN and the infinities are errors.
func appendJSONNumber(b []byte, f float64) ([]byte, error) {
	if math.IsNaN(f) || math.IsInf(f, 0) {
		return b, fmt.Errorf("cannot encode %v", f)
	}
	if f == math.Trunc(f) && math.Abs(f) < 1<<53 {
		return strconv.AppendInt(b, int64(f), 10), nil
	}
	return strconv.AppendFloat(b, f, 'g', -1, 64), nil
}

func (e *jsonEncoder) table(t *lua.LTable, depth int, up *jsonPath) {
	for p := up; p != nil; p = p.up {
		if p.t == t {
			e.fail("cannot encode a table that contains itself")
			return
		}
	}
	here := &jsonPath{t: t, up: up}
	n := t.Len()
	count := 0
	intKeys := true // keys 1..n
	posInts := true // positive integer keys only (a marked array with holes)
	maxInt := 0.0
	var skeys []string
	var keyErr bool
	t.ForEach(func(k, _ lua.LValue) {
		count++
		switch kk := k.(type) {
		case lua.LNumber:
			f := float64(kk)
			if f != math.Trunc(f) || f < 1 || f > float64(n) {
				intKeys = false
			}
			if f != math.Trunc(f) || f < 1 {
				posInts = false
			} else {
				maxInt = max(maxInt, f)
			}
			skeys = append(skeys, kk.String())
		case lua.LString:
			intKeys, posInts = false, false
			skeys = append(skeys, string(kk))
		default:
			keyErr = true
		}
	})
	if keyErr {
		e.fail("cannot encode a table key of type other than string or number")
		return
	}
	// The key list: a string header per key and its bytes, live until
	// this table is written (so are its ancestors').
	listed := int64(len(skeys)) * 16
	for _, k := range skeys {
		listed += int64(len(k))
	}
	e.keys += listed
	defer func() { e.keys -= listed }()
	if e.in != nil && count >= 64 {
		err := e.in.transientErr(int64(cap(e.buf))+e.keys, "the JSON encoder's key lists")
		if err == nil {
			err = e.in.timeErr() // listing and sorting are work too
		}
		if err != nil {
			e.err = err
			panic(jsonEncodeStop{})
		}
	}
	_, marked := e.arrayMarks()[t]
	if (count > 0 && intKeys && count == n) || (count == 0 && marked) {
		e.byte('[')
		for i := 1; i <= n; i++ {
			if i > 1 {
				e.byte(',')
			}
			e.value(t.RawGetInt(i), depth+1, here)
		}
		e.byte(']')
		return
	}
	if marked && posInts && maxInt <= float64(2*count+64) {
		// An array (decoded from one, or json.array) with holes, t[2] =
		// nil: still an array, null in the holes (it was written as an
		// object, {"1":10,"3":30}). A sparse one (more holes than
		// elements, beyond 64) stays an object: a[1e9] = 1 would be a
		// billion nulls.
		e.byte('[')
		for i := 1.0; i <= maxInt && e.err == nil; i++ {
			if i > 1 {
				e.byte(',')
			}
			e.value(t.RawGet(lua.LNumber(i)), depth+1, here)
		}
		e.byte(']')
		return
	}
	sort.Strings(skeys)
	// The number 5 and the string "5" are the same JSON name: written
	// twice, the object is ambiguous (and one value was lost).
	for i := 1; i < len(skeys); i++ {
		if skeys[i] == skeys[i-1] {
			e.fail("cannot encode a table with a number key and a string key that are both the name %q", skeys[i])
			return
		}
	}
	e.byte('{')
	for i, k := range skeys {
		if i > 0 {
			e.byte(',')
		}
		e.str(k)
		e.byte(':')
		v := t.RawGetString(k)
		if v == lua.LNil {
			if f, err := strconv.ParseFloat(k, 64); err == nil {
				v = t.RawGet(lua.LNumber(f))
			}
		}
		e.value(v, depth+1, here)
	}
	e.byte('}')
}

func (e *jsonEncoder) arrayMarks() map[*lua.LTable]struct{} {
	if e.in == nil {
		return nil
	}
	return e.in.inv.arrays
}

const hexDigits = "0123456789abcdef"

// str writes s as a JSON string. It reserves len(s)+2 bytes, enough when
// nothing needs escaping; an escape (up to 6 bytes for one) or an invalid
// byte (3) reserves its expansion, with the rest of s, when it is written,
// so the common path does no more per byte than append does.
func (e *jsonEncoder) str(s string) {
	e.reserve(len(s) + 2)
	b := append(e.buf, '"')
	for i := 0; i < len(s); {
		c := s[i]
		if c < utf8.RuneSelf {
			switch {
			case c >= 0x20 && c != '"' && c != '\\' && c != 0x7f:
				b = append(b, c)
			default:
				if cap(b)-len(b) < len(s)-i+6 {
					e.buf = b
					e.grow(len(s) - i + 6)
					b = e.buf
				}
				switch {
				case c == '"' || c == '\\':
					b = append(b, '\\', c)
				case c == '\n':
					b = append(b, '\\', 'n')
				case c == '\r':
					b = append(b, '\\', 'r')
				case c == '\t':
					b = append(b, '\\', 't')
				default:
					b = append(b, '\\', 'u', '0', '0', hexDigits[c>>4], hexDigits[c&0xf])
				}
			}
			i++
			continue
		}
		r, size := utf8.DecodeRuneInString(s[i:])
		if r == utf8.RuneError && size == 1 {
			if cap(b)-len(b) < len(s)-i+6 {
				e.buf = b
				e.grow(len(s) - i + 6)
				b = e.buf
			}
			b = append(b, "\uFFFD"...) // U+FFFD as UTF-8, like encoding/json
		} else {
			b = append(b, s[i:i+size]...)
		}
		i += size
	}
	e.buf = append(b, '"')
}

// jsonDecoder parses JSON straight into Lua values. Objects become tables
// with string keys, arrays tables with keys 1..n (marked as arrays, so they
// encode back as arrays even when empty), null becomes json.null, numbers
// are Lua numbers (float64: integers above 2^53 lose precision).
type jsonDecoder struct {
	in     *instance
	L      *lua.LState
	s      []byte
	pos    int
	values int   // decoded so far, for the periodic deadline check
	tables int64 // bytes of tables charged so far (given back if the document is refused)
}

// chargeTable charges n bytes of the document's tables.
func (d *jsonDecoder) chargeTable(n int64) {
	d.tables += n
	d.in.chargeTable(d.L, n, "json.decode")
}

type jsonSyntaxError struct {
	msg string
	off int
}

func (e *jsonSyntaxError) Error() string { return fmt.Sprintf("%s at offset %d", e.msg, e.off) }

func (d *jsonDecoder) fail(msg string) { panic(&jsonSyntaxError{msg, d.pos}) }

// closes consumes what follows a member of an object or array: ',' (more
// members: false) or the closer (true); anything else is a syntax error.
func (d *jsonDecoder) closes(closer byte, what string) bool {
	d.ws()
	if d.pos >= len(d.s) {
		d.fail("unexpected end of input")
	}
	switch d.s[d.pos] {
	case ',':
		d.pos++
		return false
	case closer:
		d.pos++
		return true
	}
	d.fail(fmt.Sprintf("unexpected %q in %s", d.s[d.pos], what))
	return false
}

func (d *jsonDecoder) decodeAll() (v lua.LValue, err error) {
	defer func() {
		if r := recover(); r != nil {
			se, ok := r.(*jsonSyntaxError)
			if !ok {
				panic(r)
			}
			err = se
		}
	}()
	d.ws()
	v = d.value(0)
	d.ws()
	if d.pos < len(d.s) {
		d.fail(fmt.Sprintf("unexpected %q after value", d.s[d.pos]))
	}
	return v, nil
}

func (d *jsonDecoder) ws() {
	for d.pos < len(d.s) {
		switch d.s[d.pos] {
		case ' ', '\t', '\n', '\r':
			d.pos++
		default:
			return
		}
	}
}

// newTable creates a table of the document (empty when narr and nhash are
// 0). Its size in the table model is charged before it is made, so that a
// document of a million small tables is refused at the memory cap rather
// than after being built; the decoded tables are measured again when the
// document is complete.
func (d *jsonDecoder) newTable(narr, nhash int) *lua.LTable {
	if d.in != nil {
		n := int64(tableBaseBytes + tableSlotBytes*narr)
		if nhash > 0 {
			n += tableHashBytes
		}
		d.chargeTable(n)
	}
	t := d.L.CreateTable(narr, nhash)
	if d.in != nil {
		d.in.inv.tables = append(d.in.inv.tables, t)
	}
	return t
}

// member is called before a value is stored in a table of the document:
// an array element beyond the slots charged so far (*slots) charges the
// array's growth (doubling, as the array grows), an object member a hash
// entry (a repeated key too: bounded by the input's length, and the tables
// are measured again after decoding); every 1024 values the deadline is
// checked.
func (d *jsonDecoder) member(i int, slots *int) {
	if d.in == nil {
		return
	}
	if d.values++; d.values&1023 == 0 {
		d.in.checkTime(d.L)
	}
	if i == 0 {
		d.chargeTable(tableEntryBytes)
		return
	}
	if i > *slots {
		d.chargeTable(int64(tableSlotBytes * *slots))
		*slots *= 2
	}
}

func (d *jsonDecoder) value(depth int) lua.LValue {
	if depth > maxJSONDepth {
		d.fail("nesting too deep")
	}
	if d.pos >= len(d.s) {
		d.fail("unexpected end of input")
	}
	switch c := d.s[d.pos]; {
	case c == '{':
		d.pos++
		d.ws()
		if d.pos < len(d.s) && d.s[d.pos] == '}' {
			d.pos++
			return d.newTable(0, 0)
		}
		t := d.newTable(0, 4)
		for {
			d.ws()
			if d.pos >= len(d.s) || d.s[d.pos] != '"' {
				d.fail("expected string key")
			}
			k := d.str()
			d.ws()
			if d.pos >= len(d.s) || d.s[d.pos] != ':' {
				d.fail("expected ':'")
			}
			d.pos++
			d.ws()
			v := d.value(depth + 1)
			d.member(0, nil)
			t.RawSetString(k, v)
			if d.closes('}', "object") {
				return t
			}
		}
	case c == '[':
		d.pos++
		d.ws()
		empty := d.pos < len(d.s) && d.s[d.pos] == ']'
		var t *lua.LTable
		if empty {
			d.pos++
			t = d.newTable(0, 0)
		} else {
			t = d.newTable(4, 0)
		}
		if d.in != nil {
			d.in.markArray(d.L, t, "json.decode")
		}
		if empty {
			return t
		}
		slots := 4 // made with 4, charged by newTable
		for i := 1; ; i++ {
			d.ws()
			v := d.value(depth + 1)
			d.member(i, &slots)
			t.RawSetInt(i, v)
			if d.closes(']', "array") {
				return t
			}
		}
	case c == '"':
		return lua.LString(d.str())
	case c == 't':
		d.lit("true")
		return lua.LTrue
	case c == 'f':
		d.lit("false")
		return lua.LFalse
	case c == 'n':
		d.lit("null")
		if d.in != nil {
			return d.in.null
		}
		return lua.LNil
	case c == '-' || (c >= '0' && c <= '9'):
		return d.number()
	default:
		d.fail(fmt.Sprintf("unexpected %q", c))
	}
	return lua.LNil
}

func (d *jsonDecoder) lit(w string) {
	if len(d.s)-d.pos < len(w) || string(d.s[d.pos:d.pos+len(w)]) != w {
		d.fail("invalid literal")
	}
	d.pos += len(w)
}

func (d *jsonDecoder) number() lua.LValue {
	start := d.pos
	if d.s[d.pos] == '-' {
		d.pos++
	}
	digits := func() int {
		n := 0
		for d.pos < len(d.s) && d.s[d.pos] >= '0' && d.s[d.pos] <= '9' {
			d.pos++
			n++
		}
		return n
	}
	if d.pos < len(d.s) && d.s[d.pos] == '0' {
		d.pos++
	} else if digits() == 0 {
		d.fail("invalid number")
	}
	if d.pos < len(d.s) && d.s[d.pos] == '.' {
		d.pos++
		if digits() == 0 {
			d.fail("invalid number")
		}
	}
	if d.pos < len(d.s) && (d.s[d.pos] == 'e' || d.s[d.pos] == 'E') {
		d.pos++
		if d.pos < len(d.s) && (d.s[d.pos] == '+' || d.s[d.pos] == '-') {
			d.pos++
		}
		if digits() == 0 {
			d.fail("invalid number")
		}
	}
	f, err := strconv.ParseFloat(string(d.s[start:d.pos]), 64)
	if err != nil {
		d.pos = start
		d.fail("number out of range")
	}
	return lua.LNumber(f)
}

func (d *jsonDecoder) str() string {
	d.pos++ // opening quote
	start := d.pos
	for d.pos < len(d.s) {
		c := d.s[d.pos]
		if c == '"' {
			s := string(d.s[start:d.pos])
			d.pos++
			return s
		}
		if c == '\\' {
			break
		}
		if c < 0x20 {
			d.fail("control character in string")
		}
		d.pos++
	}
	buf := append([]byte(nil), d.s[start:d.pos]...)
	for {
		if d.pos >= len(d.s) {
			d.fail("unterminated string")
		}
		c := d.s[d.pos]
		switch {
		case c == '"':
			d.pos++
			return string(buf)
		case c < 0x20:
			d.fail("control character in string")
		case c == '\\':
			d.pos++
			if d.pos >= len(d.s) {
				d.fail("unterminated string")
			}
			e := d.s[d.pos]
			d.pos++
			switch e {
			case '"', '\\', '/':
				buf = append(buf, e)
			case 'b':
				buf = append(buf, '\b')
			case 'f':
				buf = append(buf, '\f')
			case 'n':
				buf = append(buf, '\n')
			case 'r':
				buf = append(buf, '\r')
			case 't':
				buf = append(buf, '\t')
			case 'u':
				r := d.hex4()
				if utf16.IsSurrogate(r) {
					// A pair makes one character; anything else after a
					// surrogate stays itself (as encoding/json reads it).
					dec := utf8.RuneError
					if at := d.pos; at+1 < len(d.s) && d.s[at] == '\\' && d.s[at+1] == 'u' {
						d.pos += 2
						if dec = utf16.DecodeRune(r, d.hex4()); dec == utf8.RuneError {
							d.pos = at
						}
					}
					r = dec
				}
				buf = utf8.AppendRune(buf, r)
			default:
				d.pos--
				d.fail("invalid escape")
			}
		default:
			buf = append(buf, c)
			d.pos++
		}
	}
}

func (d *jsonDecoder) hex4() rune {
	if len(d.s)-d.pos < 4 {
		d.fail("invalid \\u escape")
	}
	v, err := strconv.ParseUint(string(d.s[d.pos:d.pos+4]), 16, 32)
	if err != nil {
		d.fail("invalid \\u escape")
	}
	d.pos += 4
	return rune(v)
}
