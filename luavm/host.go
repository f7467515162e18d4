package luavm

import (
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"
	"unsafe"

	"github.com/moongate-edge/moongate/mqtt/topics"
	lua "github.com/yuin/gopher-lua"
)

const maxLogBytes = 8 << 10 // one log message or its fields, truncated beyond

func errMemory(capBytes int64, what string) error {
	return fmt.Errorf("%w (%s over cap %d bytes)", ErrMemory, what, capBytes)
}

// openHost makes the host API modules available in lib. They are built on
// first use (lib's __index), so a cold start pays only for the modules the
// function touches; once built, a module is a read-only field of lib.
func (in *instance) openHost(lib *lua.LTable, newindex *lua.LFunction) {
	L := in.L
	in.null = L.NewUserData()
	in.lib, in.newindex = lib, newindex
	mt := L.CreateTable(0, 2)
	mt.RawSetString("__index", L.NewFunction(in.libIndex))
	lib.Metatable = mt
}

// hostModule builds the host module name, or returns nil.
func (in *instance) hostModule(name string) lua.LValue {
	L := in.L
	mod := func(fns map[string]lua.LGFunction) *lua.LTable {
		t := L.CreateTable(0, len(fns)+1)
		for k, f := range fns {
			t.RawSetString(k, L.NewFunction(f))
		}
		return t
	}
	switch name {
	case "json":
		js := mod(map[string]lua.LGFunction{"encode": in.jsonEncode, "decode": in.jsonDecode, "array": in.jsonArray})
		js.RawSetString("null", in.null)
		return in.freeze(js, in.newindex)
	case "log":
		return in.freeze(mod(map[string]lua.LGFunction{
			"debug": in.logFn(slog.LevelDebug), "info": in.logFn(slog.LevelInfo),
			"warn": in.logFn(slog.LevelWarn), "error": in.logFn(slog.LevelError),
		}), in.newindex)
	case "print":
		return L.NewFunction(in.print)
	case "time":
		return in.freeze(mod(map[string]lua.LGFunction{"now_ms": func(L *lua.LState) int {
			L.Push(lua.LNumber(time.Now().UnixMilli()))
			return 1
		}}), in.newindex)
	case "base64":
		return in.freeze(mod(map[string]lua.LGFunction{
			"encode": in.codec(func(b []byte) ([]byte, error) { return []byte(base64.StdEncoding.EncodeToString(b)), nil }),
			"decode": in.codec(func(b []byte) ([]byte, error) { return base64.StdEncoding.DecodeString(string(b)) }),
		}), in.newindex)
	case "hex":
		return in.freeze(mod(map[string]lua.LGFunction{
			"encode": in.codec(func(b []byte) ([]byte, error) { return []byte(hex.EncodeToString(b)), nil }),
			"decode": in.codec(func(b []byte) ([]byte, error) { return hex.DecodeString(string(b)) }),
		}), in.newindex)
	case "crypto":
		return in.freeze(mod(map[string]lua.LGFunction{
			"sha256": func(L *lua.LState) int {
				s := L.CheckString(1)
				in.charge(L, 1+int64(len(s))/64)
				in.alloc(L, 2*sha256.Size) // the hex digest
				sum := sha256.Sum256([]byte(s))
				L.Push(lua.LString(hex.EncodeToString(sum[:])))
				return 1
			},
			"hmac_sha256": func(L *lua.LState) int {
				key, msg := L.CheckString(1), L.CheckString(2)
				in.charge(L, 1+int64(len(msg)+len(key))/64)
				in.alloc(L, 2*sha256.Size) // the hex digest
				m := hmac.New(sha256.New, []byte(key))
				m.Write([]byte(msg))
				L.Push(lua.LString(hex.EncodeToString(m.Sum(nil))))
				return 1
			},
		}), in.newindex)
	case "mqtt":
		return in.freeze(mod(map[string]lua.LGFunction{"publish": in.publish}), in.newindex)
	case "emit":
		return L.NewFunction(in.emit)
	case "blob":
		return in.freeze(mod(map[string]lua.LGFunction{"read": in.blobRead, "write": in.blobWrite, "delete": in.blobDelete}), in.newindex)
	case "state":
		return in.freeze(mod(map[string]lua.LGFunction{"get": in.stateGet, "set": in.stateSet, "delete": in.stateDelete, "incr": in.stateIncr}), in.newindex)
	}
	return nil
}

// libIndex is lib's __index: it builds a host module on first use.
func (in *instance) libIndex(L *lua.LState) int {
	name, ok := L.Get(2).(lua.LString)
	if !ok {
		return 0
	}
	v := in.hostModule(string(name))
	if v == nil {
		return 0
	}
	in.lib.RawSetString(string(name), v)
	L.Push(v)
	return 1
}

// configTable returns ctx.config: a private copy per invocation, so a
// function cannot change its settings for later invocations.
func (in *instance) configTable() lua.LValue {
	if in.spec == nil || len(in.spec.Config) == 0 {
		return in.track(in.L.CreateTable(0, 0))
	}
	return in.goToLua(in.spec.Config, 0)
}

// goToLua converts configuration values (JSON-like Go values) to Lua
// values.
func (in *instance) goToLua(v any, depth int) lua.LValue {
	if depth > maxJSONDepth {
		return lua.LNil
	}
	L := in.L
	switch x := v.(type) {
	case nil:
		return in.null
	case bool:
		return lua.LBool(x)
	case string:
		return lua.LString(x)
	case int:
		return lua.LNumber(x)
	case int64:
		return lua.LNumber(x)
	case float64:
		return lua.LNumber(x)
	case float32:
		return lua.LNumber(x)
	case map[string]any:
		t := L.CreateTable(0, len(x))
		for _, k := range sortedKeys(x) {
			t.RawSetString(k, in.goToLua(x[k], depth+1))
		}
		return in.track(t)
	case []any:
		t := L.CreateTable(len(x), 0)
		for i, e := range x {
			t.RawSetInt(i+1, in.goToLua(e, depth+1))
		}
		in.markArray(nil, t, "ctx.config")
		return in.track(t)
	default:
		return lua.LString(fmt.Sprint(x))
	}
}

// markArray marks t as a JSON array for json.encode (see jsonEncoder). A
// new mark is an entry of the invocation's map of marks: it is charged like
// a table entry (tableEntryBytes) before it is added, in the name of what,
// and every table scan counts the marks. With L nil (ctx.config, made
// before the call) the next scan counts it.
func (in *instance) markArray(L *lua.LState, t *lua.LTable, what string) {
	iv := &in.inv
	if _, ok := iv.arrays[t]; ok {
		return
	}
	if L != nil {
		in.chargeTable(L, tableEntryBytes, what)
	}
	if iv.arrays == nil {
		iv.arrays = make(map[*lua.LTable]struct{})
	}
	iv.arrays[t] = struct{}{}
}

// encodeJSON encodes v with the invocation's memory accounting; limit caps
// the output size. The encoder checks each growth of its buffer against
// the memory cap before making it (jsonEncoder.grow): a refusal is the
// invocation's breach. The buffer returned is then charged whole
// (capacity: a string made from it keeps it all) as a string built.
func (in *instance) encodeJSON(L *lua.LState, v lua.LValue, limit int) ([]byte, error) {
	e := jsonEncoder{in: in, limit: limit}
	e.encode(v, 0)
	if e.err != nil {
		in.charge(L, 1+int64(len(e.buf))/64) // the work done up to the failure
		if errors.Is(e.err, ErrMemory) || errors.Is(e.err, ErrTimeout) {
			in.raise(L, e.err)
		}
		return nil, e.err
	}
	in.alloc(L, int64(cap(e.buf)))
	return e.buf, nil
}

func (in *instance) jsonEncode(L *lua.LState) int {
	b, err := in.encodeJSON(L, L.CheckAny(1), int(in.inv.limits.MaxMemory))
	if err != nil {
		L.RaiseError("json.encode: %s", err.Error())
	}
	s := ""
	if len(b) > 0 {
		// b is never written again: the string shares it rather than copy
		// it (charged by encodeJSON).
		s = unsafe.String(&b[0], len(b))
	}
	L.Push(lua.LString(s))
	return 1
}

func (in *instance) decodeJSON(L *lua.LState, s []byte) (lua.LValue, error) {
	in.alloc(L, 2*int64(len(s)))
	d := jsonDecoder{in: in, L: L, s: s}
	n0 := len(in.inv.tables)
	v, err := d.decodeAll()
	if err != nil {
		// The tables of a refused document are garbage: no longer tracked
		// nor charged (a loop validating bad input with pcall ran into the
		// memory cap on the tables of documents it never got).
		clear(in.inv.tables[n0:])
		in.inv.tables = in.inv.tables[:n0]
		in.inv.tableBytes -= d.tables
		return nil, err
	}
	in.scanTables(L)
	return v, err
}

func (in *instance) jsonDecode(L *lua.LState) int {
	v, err := in.decodeJSON(L, []byte(L.CheckString(1)))
	if err != nil {
		L.RaiseError("json.decode: %s", err.Error())
	}
	L.Push(v)
	return 1
}

func (in *instance) jsonArray(L *lua.LState) int {
	t := L.CheckTable(1)
	in.markArray(L, t, "json.array")
	L.Push(t)
	return 1
}

func (in *instance) codec(f func([]byte) ([]byte, error)) lua.LGFunction {
	return func(L *lua.LState) int {
		s := L.CheckString(1)
		in.alloc(L, 2*int64(len(s)))
		out, err := f([]byte(s))
		if err != nil {
			L.RaiseError("%s", err.Error())
		}
		L.Push(lua.LString(out))
		return 1
	}
}

func (in *instance) logFn(level slog.Level) lua.LGFunction {
	return func(L *lua.LState) int {
		if in.logsFull(L) {
			return 0
		}
		msg := lua.LVAsString(L.Get(1))
		if msg == "" && L.Get(1).Type() != lua.LTString {
			msg = L.ToStringMeta(L.Get(1)).String()
		}
		var fields []byte
		if t, ok := L.Get(2).(*lua.LTable); ok {
			b, err := in.encodeJSON(L, t, maxLogBytes)
			if err != nil {
				b = []byte(strconv.Quote("unencodable fields: " + err.Error()))
				b = []byte(`{"error":` + string(b) + `}`)
			}
			if len(b) > 0 && b[0] == '[' {
				// Fields are an object (the API drops anything else): a
				// list is kept under "fields".
				b = append(append([]byte(`{"fields":`), b...), '}')
			}
			fields = b
		}
		in.addLog(L, level, msg, fields)
		return 0
	}
}

// logsFull counts (and charges a step for) a log line past the
// invocation's MaxLogLines: it is dropped before anything of it is built
// (cutting, cleaning and encoding 8 KiB lines nobody keeps allocated 1-2
// GB for 100,000 calls, charged one step each).
func (in *instance) logsFull(L *lua.LState) bool {
	if len(in.inv.res.Logs) < in.inv.limits.MaxLogLines {
		return false
	}
	in.charge(L, 1)
	in.inv.logDropped++
	return true
}

func (in *instance) addLog(L *lua.LState, level slog.Level, msg string, fields []byte) {
	if in.logsFull(L) {
		return
	}
	in.charge(L, 1)
	if len(msg) > maxLogBytes {
		n := maxLogBytes
		for n > 0 && !utf8.RuneStart(msg[n]) {
			n-- // cut before a character, not inside it
		}
		msg = msg[:n] + "...(truncated)"
	}
	// Log lines are text (the API returns them as such): each invalid
	// UTF-8 sequence a function logs becomes U+FFFD.
	msg = strings.ToValidUTF8(msg, "\uFFFD")
	r := in.inv.res
	in.alloc(L, int64(len(msg)+len(fields)))
	r.Logs = append(r.Logs, LogEntry{Level: level, Msg: msg, Fields: fields, TimeMS: time.Now().UnixMilli()})
}

// print logs its arguments separated by tabs. The message is built only up
// to the log message cap: joining first would copy every argument, however
// large (8,000 arguments of 2 MB each were a 16 GB string).
func (in *instance) print(L *lua.LState) int {
	if in.logsFull(L) {
		return 0
	}
	top := L.GetTop()
	if top > 8 {
		in.charge(L, int64(top)/8)
	}
	var b strings.Builder
	for i := 1; i <= top; i++ {
		s := L.ToStringMeta(L.Get(i)).String()
		// Up to one byte past the cap, so that addLog marks the cut.
		room := maxLogBytes + 1 - b.Len()
		if i > 1 && room > 0 {
			b.WriteByte('\t')
			room--
		}
		if room > 0 {
			b.WriteString(s[:min(len(s), room)])
		}
	}
	in.addLog(L, slog.LevelInfo, b.String(), nil)
	return 0
}

// ---- effects ----

func (in *instance) addEffect(L *lua.LState, e Effect, size int) {
	in.charge(L, 1)
	lim := in.inv.limits
	r := in.inv.res
	if len(r.Effects) >= lim.MaxEffects {
		in.raise(L, fmt.Errorf("%w (max %d)", ErrTooManyEffects, lim.MaxEffects))
	}
	if size > lim.MaxEffectBytes {
		in.raise(L, fmt.Errorf("%w (%d bytes, max %d)", ErrEffectTooLarge, size, lim.MaxEffectBytes))
	}
	in.alloc(L, int64(size))
	in.inv.effBytes += int64(size)
	r.Effects = append(r.Effects, e)
}

// payloadBytes turns a payload argument into bytes: strings are raw,
// tables are JSON-encoded.
func (in *instance) payloadBytes(L *lua.LState, n int) []byte {
	switch v := L.Get(n).(type) {
	case lua.LString:
		return []byte(v)
	case lua.LNumber:
		return []byte(v.String())
	case *lua.LTable:
		b, err := in.encodeJSON(L, v, in.inv.limits.MaxEffectBytes+1)
		if err != nil {
			if strings.HasPrefix(err.Error(), "output larger") {
				in.raise(L, fmt.Errorf("%w (max %d)", ErrEffectTooLarge, in.inv.limits.MaxEffectBytes))
			}
			L.ArgError(n, err.Error())
		}
		return b
	default:
		L.ArgError(n, "string or table expected, got "+v.Type().String())
	}
	return nil
}

func (in *instance) publish(L *lua.LState) int {
	topic := L.CheckString(1)
	// The broker's rule: a topic it would refuse must not reach the
	// gateway's publish outbox.
	if err := topics.ValidName(topic); err != nil {
		L.ArgError(1, err.Error())
	}
	payload := in.payloadBytes(L, 2)
	e := Effect{Kind: EffectPublish, Topic: topic, Payload: payload}
	// Options are checked, not guessed: {qos = "1"}, {QoS = 1} or a bare
	// 1 went out at QoS 0, and a QoS 0 command is not queued for a device
	// that is offline.
	switch opts := L.Get(3).(type) {
	case *lua.LNilType:
	case *lua.LTable:
		for k, v := opts.Next(lua.LNil); k != lua.LNil; k, v = opts.Next(k) {
			switch k {
			case lua.LString("qos"):
				q, ok := v.(lua.LNumber)
				if !ok || q < 0 || q > 2 || q != lua.LNumber(int(q)) {
					L.ArgError(3, "qos must be 0, 1 or 2")
				}
				e.QoS = byte(q)
			case lua.LString("retain"):
				b, ok := v.(lua.LBool)
				if !ok {
					L.ArgError(3, "retain must be true or false")
				}
				e.Retain = bool(b)
			default:
				L.ArgError(3, fmt.Sprintf("unknown option %s (qos, retain)", quoteCut(lua.LVAsString(k))))
			}
		}
	default:
		L.ArgError(3, "options table expected ({qos = 1, retain = true}), got "+opts.Type().String())
	}
	in.addEffect(L, e, len(topic)+len(payload))
	return 0
}

func (in *instance) emit(L *lua.LState) int {
	stream := L.CheckString(1)
	if stream == "" {
		L.ArgError(1, "empty stream name")
	}
	if !utf8.ValidString(stream) {
		L.ArgError(1, "stream name is not valid UTF-8")
	}
	// The store's rule for names (a record it would refuse sends the
	// event to the dead letters; here the function learns why at once,
	// and fn test says so).
	if len(stream) > MaxStreamNameBytes {
		L.ArgError(1, fmt.Sprintf("stream name longer than %d bytes", MaxStreamNameBytes))
	}
	if strings.IndexByte(stream, 0) >= 0 {
		L.ArgError(1, "stream name contains a NUL byte")
	}
	var rec []byte
	switch v := L.Get(2).(type) {
	case lua.LString:
		b, err := in.encodeJSON(L, v, len(v)*6+2)
		if err != nil {
			L.ArgError(2, err.Error())
		}
		rec = b
	case lua.LNumber:
		// A record is JSON: NaN and the infinities are not (they were
		// stored as the text NaN, +Inf).
		b, err := appendJSONNumber(nil, float64(v))
		if err != nil {
			L.ArgError(2, err.Error())
		}
		rec = b
	default:
		rec = in.payloadBytes(L, 2)
	}
	in.addEffect(L, Effect{Kind: EffectEmit, Stream: stream, Record: rec}, len(stream)+len(rec))
	return 0
}

// ---- state ----

func (in *instance) stateOp(L *lua.LState, op StateOp) {
	lim := in.inv.limits
	r := in.inv.res
	in.charge(L, 1)
	if len(r.State) >= lim.MaxStateOps {
		in.raise(L, fmt.Errorf("%w (more than %d state operations)", ErrTooManyEffects, lim.MaxStateOps))
	}
	if len(op.Key)+len(op.Value) > lim.MaxEffectBytes {
		in.raise(L, fmt.Errorf("%w (state value of %d bytes, max %d)", ErrEffectTooLarge, len(op.Value), lim.MaxEffectBytes))
	}
	in.alloc(L, int64(len(op.Key)+len(op.Value)))
	r.State = append(r.State, op)
	if in.inv.stateBuf == nil {
		in.inv.stateBuf = make(map[string][]byte)
	}
	in.inv.stateBuf[op.Key] = op.Value
}

func checkKey(L *lua.LState) string {
	k := L.CheckString(1)
	if k == "" || len(k) > 512 {
		L.ArgError(1, "key must be 1..512 bytes")
	}
	if !utf8.ValidString(k) {
		L.ArgError(1, "key is not valid UTF-8")
	}
	return k
}

// readState returns the current JSON value of key: the invocation's own
// writes first, then the StateReader.
func (in *instance) readState(L *lua.LState, key string) ([]byte, bool) {
	if v, ok := in.inv.stateBuf[key]; ok {
		return v, v != nil
	}
	if in.inv.state == nil {
		return nil, false
	}
	in.checkTime(L)
	iv := &in.inv
	if iv.stateCtx == nil {
		iv.stateCtx, iv.stateStop = context.WithDeadline(iv.ctx, iv.deadline)
	}
	v, ok, err := iv.state.GetState(iv.stateCtx, iv.function, key)
	if err != nil {
		if iv.stateCtx.Err() != nil {
			// The read outlived the invocation's deadline or context.
			in.raise(L, fmt.Errorf("%w: state.get(%s): %w", ErrTimeout, quoteCut(key), err))
		}
		L.RaiseError("state.get(%s): %s", quoteCut(key), err.Error())
	}
	if ok {
		in.inv.res.Cost.BytesIn += int64(len(v))
	}
	return v, ok
}

func (in *instance) stateGet(L *lua.LState) int {
	key := checkKey(L)
	in.charge(L, 1)
	raw, ok := in.readState(L, key)
	if !ok {
		L.Push(lua.LNil)
		return 1
	}
	v, err := in.decodeJSON(L, raw)
	if err != nil {
		L.RaiseError("state.get(%s): stored value is not JSON: %s", quoteCut(key), err.Error())
	}
	L.Push(v)
	return 1
}

func (in *instance) stateSet(L *lua.LState) int {
	key := checkKey(L)
	v := L.CheckAny(2)
	if v == lua.LNil {
		in.stateOp(L, StateOp{Op: StateDelete, Key: key})
		return 0
	}
	b, err := in.encodeJSON(L, v, in.inv.limits.MaxEffectBytes+1)
	if err != nil {
		L.ArgError(2, err.Error())
	}
	in.stateOp(L, StateOp{Op: StateSet, Key: key, Value: b})
	return 0
}

func (in *instance) stateDelete(L *lua.LState) int {
	in.stateOp(L, StateOp{Op: StateDelete, Key: checkKey(L)})
	return 0
}

// stateIncr adds delta (default 1) to a numeric value (missing = 0) and
// returns the new value. It is recorded as a delta (StateIncr), so
// concurrent increments commit correctly; the returned value is what this
// invocation sees.
func (in *instance) stateIncr(L *lua.LState) int {
	key := checkKey(L)
	delta := float64(L.OptNumber(2, 1))
	cur := 0.0
	if raw, ok := in.readState(L, key); ok {
		f, err := strconv.ParseFloat(strings.TrimSpace(string(raw)), 64)
		if err != nil {
			L.RaiseError("state.incr(%s): stored value is not a number", quoteCut(key))
		}
		cur = f
	}
	nv := cur + delta
	b, err := appendJSONNumber(nil, nv)
	if err != nil {
		L.RaiseError("state.incr(%s): %s", quoteCut(key), err.Error())
	}
	in.stateOp(L, StateOp{Op: StateIncr, Key: key, Value: b, Delta: delta})
	L.Push(lua.LNumber(nv))
	return 1
}

// ---- event and ctx ----

// track accounts a table the host made for the invocation outside any Lua
// call (the event, ctx and its config, the global environment): it joins
// the tables every scan measures, charged now at its current size, so
// that what a function adds to it counts against the memory cap like a
// table of its own.
func (in *instance) track(t *lua.LTable) *lua.LTable {
	in.inv.tables = append(in.inv.tables, t)
	in.inv.tableBytes += tableBytes(t)
	return t
}

// quoteCut quotes s for an error message, cut to its first 64 bytes: a
// message kept by the function (pcall) is memory no hook accounts, and a
// key or name may be long.
func quoteCut(s string) string {
	const keep = 64
	if len(s) <= keep {
		if q := strconv.Quote(s); len(q) <= 2*keep {
			return q
		}
	}
	n := min(len(s), keep)
	for {
		for n > 0 && n < len(s) && !utf8.RuneStart(s[n]) {
			n--
		}
		if q := strconv.Quote(s[:n]); len(q) <= 2*keep || n == 0 {
			return q + "..."
		}
		n /= 2 // escapes: up to 4 bytes each
	}
}

// sortedKeys returns m's keys in order: tables made from Go maps get
// their keys in the same order every time, so that pairs over them (whose
// order is the insertion order) and a name given twice in different case
// (headers) come out the same for the same input.
func sortedKeys[V any](m map[string]V) []string {
	return slices.Sorted(maps.Keys(m))
}

func (in *instance) eventTable(ev *Event) *lua.LTable {
	L := in.L
	t := L.CreateTable(0, 8+len(ev.Captures))
	// Captures first: the fixed fields below win over a capture of the
	// same name.
	if len(ev.Captures) == 1 { // the common case: no order to keep
		for k, v := range ev.Captures {
			t.RawSetString(k, lua.LString(v))
		}
	} else {
		for _, k := range sortedKeys(ev.Captures) {
			t.RawSetString(k, lua.LString(ev.Captures[k]))
		}
	}
	t.RawSetString("id", lua.LString(ev.ID))
	t.RawSetString("topic", lua.LString(ev.Topic))
	t.RawSetString("payload", lua.LString(ev.Payload))
	t.RawSetString("ts", lua.LNumber(ev.TS))
	t.RawSetString("qos", lua.LNumber(ev.QoS))
	t.RawSetString("trigger", lua.LString(ev.Trigger))
	if h := ev.HTTP; h != nil {
		t.RawSetString("method", lua.LString(h.Method))
		t.RawSetString("path", lua.LString(h.Path))
		q := L.CreateTable(0, len(h.Query))
		for _, k := range sortedKeys(h.Query) {
			if vs := h.Query[k]; len(vs) > 0 {
				q.RawSetString(k, lua.LString(vs[0]))
			}
		}
		t.RawSetString("query", in.track(q))
		hd := L.CreateTable(0, len(h.Headers))
		for _, k := range sortedKeys(h.Headers) {
			hd.RawSetString(strings.ToLower(k), lua.LString(h.Headers[k]))
		}
		t.RawSetString("headers", in.track(hd))
		t.RawSetString("body", lua.LString(h.Body))
	}
	return in.track(t)
}

func (in *instance) ctxTable(id string) *lua.LTable {
	L := in.L
	t := L.CreateTable(0, 5)
	t.RawSetString("function", lua.LString(in.inv.function))
	if in.spec != nil {
		t.RawSetString("version", lua.LNumber(in.spec.Version))
	}
	t.RawSetString("invocation_id", lua.LString(id))
	t.RawSetString("deadline_ms", lua.LNumber(in.inv.deadline.UnixMilli()))
	t.RawSetString("config", in.configTable())
	return in.track(t)
}
