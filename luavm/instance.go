package luavm

import (
	"context"
	"errors"
	"fmt"
	stdmath "math"
	"math/rand/v2"
	"reflect"
	"strings"
	"time"

	lua "github.com/yuin/gopher-lua"

	"github.com/moongate-edge/moongate/luavm/internal/pm"
)

// instance is one warm Lua state of a function version. It is used by one
// invocation at a time (the pool guarantees it) and thrown away after a
// breach or panic.
type instance struct {
	L        *lua.LState
	prog     *Program
	spec     *Spec
	envMT    *lua.LTable // metatable of every fresh global table: __index = lib
	chunk    [5]lua.LValue
	frozen   map[*lua.LTable]struct{}
	null     *lua.LUserData // json.null
	lib      *lua.LTable    // what every global environment reads through
	newindex *lua.LFunction // __newindex of the read-only proxies
	pmb      pm.Budget

	inv      invocation
	broken   bool // breached or panicked: do not reuse
	lastUsed time.Time
	// alarm interrupts the VM at the invocation's deadline (made on the
	// first invocation, reset for each): work that no instruction's
	// accounting sees (comparing or hashing long strings, converting them
	// to numbers, in straight-line code) cannot outrun the timeout.
	alarm *time.Timer
}

// invocation is the per-call accounting of an instance. It is reset at the
// start of every call.
type invocation struct {
	ctx         context.Context
	limits      Limits
	deadline    time.Time
	ctxDeadline bool // deadline is the caller's context deadline
	function    string
	steps       int64
	ticks       int
	strBytes    int64 // cumulative bytes of strings built by accounted operations
	userRaised  bool  // the error being raised comes from error or assert (charged there)
	tableBytes  int64 // estimated live size of the tables created so far
	peak        int64
	tables      []*lua.LTable
	nextScan    int64
	breach      error
	state       StateReader
	stateCtx    context.Context // ctx bounded by the deadline, made on first state read
	stateStop   context.CancelFunc
	stateBuf    map[string][]byte // nil value = deleted
	res         *Result
	arrays      map[*lua.LTable]struct{} // tables that json.encode writes as arrays
	effBytes    int64
	logDropped  int
	blobs       blobChunks // live strings returned by blob.read
	// versions are the blob versions this invocation reads
	// (BlobVersionReader), closed when it ends.
	versions map[[2]string]BlobVersion
}

// Table size model (see docs/functions.md): per table, per array slot
// (capacity), per table with a hash part and per hash entry, in accounted
// bytes. Calibrated against the Go heap a table of the patched gopher-lua
// holds (TestTableModelCoversHeap): at least that for tables of 0 to 1,000
// keys or slots, about 1.1 times it past 64 hash keys and up to 2.6 times
// for tables of a few keys (a hash part's first group of Go map slots).
const (
	tableBaseBytes  = 128
	tableSlotBytes  = 32 // the slot, and a number boxed in it
	tableHashBytes  = 320
	tableEntryBytes = 200
	closureBytes    = 128
	// upvalueBytes is charged per upvalue of a new closure: gopher-lua's
	// Upvalue (48 bytes) and the closure's pointer to it.
	upvalueBytes = 64
	// errorWhereBytes is charged, beside the message, for the position
	// ("name:line:") that error and assert put in front of it.
	errorWhereBytes = 64
	// Between two table scans, at most scanEvery steps (plus 2 per tracked
	// table) run.
	scanEvery = 1024
	// One step is charged per patternOpsPerStep pattern-matcher operations.
	patternOpsPerStep = 4
)

var (
	ltArray, ltDict, ltStrdict = ltableField("array"), ltableField("dict"), ltableField("strdict")
	// ltKeys is the table's list of every hash key it was ever given, for
	// next(): gopher-lua keeps a key there (and in an index map) after the
	// key is set to nil, so a table can hold far more keys than entries.
	ltKeys = ltableField("keys")
)

// ltableField finds an unexported field of lua.LTable. The field layout is
// checked by TestTableModel; reflect only reads lengths.
func ltableField(name string) int {
	f, ok := reflect.TypeOf(lua.LTable{}).FieldByName(name)
	if !ok {
		panic("luavm: gopher-lua LTable has no field " + name)
	}
	return f.Index[0]
}

// tableBytes is a table's size in the model: its array slots (capacity),
// its hash part if it has one, and one hash entry per key it keeps. Keys set to nil stay in gopher-lua's key
// list (and its index map) for good, so they are charged like live ones:
// otherwise a loop setting and clearing new keys grew the Go heap by
// megabytes a second while its accounted memory stayed at a few bytes
// (testdata/hostile/mem_key_churn*.lua).
func tableBytes(t *lua.LTable) int64 {
	v := reflect.ValueOf(t).Elem()
	entries := max(v.Field(ltKeys).Len(), v.Field(ltDict).Len()+v.Field(ltStrdict).Len())
	n := tableBaseBytes + tableSlotBytes*int64(v.Field(ltArray).Cap()) + tableEntryBytes*int64(entries)
	if entries > 0 {
		n += tableHashBytes
	}
	return n
}

// newInstance creates a sandboxed state for prog (a cold start).
func newInstance(prog *Program, spec *Spec, limits Limits) (in *instance, err error) {
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("%w: creating instance: %v", ErrPanic, r)
		}
	}()
	L := lua.NewState(lua.Options{
		SkipOpenLibs:     true,
		CallStackSize:    limits.MaxCallDepth + 8,
		RegistrySize:     1024,
		RegistryMaxSize:  16 * 1024,
		RegistryGrowStep: 1024,
	})
	in = &instance{L: L, prog: prog, spec: spec, frozen: make(map[*lua.LTable]struct{}, 16)}
	in.pmb.Hook = in.patternSteps
	// An alarm that rings late (after its invocation ended, the next one
	// begun) is told apart by checking the clock.
	L.SetInterruptHandler(in.checkLimits)
	in.setup()
	return in, nil
}

// checkLimits raises the invocation's breach, or a timeout once its
// deadline has passed (the alarm's interrupt handler).
func (in *instance) checkLimits(L *lua.LState) {
	if in.inv.breach != nil {
		in.raise(L, in.inv.breach)
	}
	in.checkTime(L)
}

// armAlarm makes the VM stop at the invocation's deadline.
func (in *instance) armAlarm() {
	d := time.Until(in.inv.deadline)
	if in.alarm == nil {
		L := in.L
		in.alarm = time.AfterFunc(d, L.Interrupt)
		return
	}
	in.alarm.Reset(d)
}

// disarmAlarm stops the alarm and withdraws an interrupt not seen yet.
func (in *instance) disarmAlarm() {
	if in.alarm != nil {
		in.alarm.Stop()
	}
	in.L.ClearInterrupt()
}

func (in *instance) close() {
	if in.alarm != nil {
		in.alarm.Stop()
	}
	if in.L != nil {
		in.L.Close()
		in.L = nil
	}
}

// freeze returns a read-only proxy of t: reads go through __index, writes
// (including rawset and table.insert) fail, and getmetatable hides it.
func (in *instance) freeze(t *lua.LTable, newindex *lua.LFunction) *lua.LTable {
	L := in.L
	p := L.CreateTable(0, 0)
	mt := L.CreateTable(0, 3)
	mt.RawSetString("__index", t)
	mt.RawSetString("__newindex", newindex)
	mt.RawSetString("__metatable", lua.LFalse)
	p.Metatable = mt
	in.frozen[p] = struct{}{}
	return p
}

// setup builds the sandbox: the library table every global environment
// reads through, with only the allowed functions, wrapped where they can
// allocate or run long.
func (in *instance) setup() {
	L := in.L
	for _, open := range []lua.LGFunction{lua.OpenBase, lua.OpenString, lua.OpenTable, lua.OpenMath} {
		L.Push(L.NewFunction(open))
		L.Call(0, 0)
	}
	G := L.G.Global
	lib := L.CreateTable(0, 40)
	newindex := L.NewFunction(func(L *lua.LState) int {
		L.RaiseError("attempt to modify a read-only table")
		return 0
	})

	for _, name := range []string{"getmetatable", "ipairs", "next", "pairs", "rawequal", "rawget",
		"select", "tonumber", "tostring", "type", "_VERSION"} {
		lib.RawSetString(name, G.RawGetString(name))
	}
	// error(msg, level > 0) and a failed assert(v, msg) raise a copy of
	// msg prefixed with the position: the copy is charged like any string
	// built, or pcall(error, s) in a loop held a copy of s per call
	// (testdata/hostile/mem_error_copies.lua).
	errorFn := G.RawGetString("error").(*lua.LFunction).GFunction
	lib.RawSetString("error", L.NewFunction(func(L *lua.LState) int {
		if s, ok := L.Get(1).(lua.LString); ok && L.OptInt(2, 1) > 0 {
			in.alloc(L, int64(len(s))+errorWhereBytes)
		}
		// Charged here (or no copy: level 0): pcall does not charge it.
		in.inv.userRaised = true
		return errorFn(L)
	}))
	assertFn := G.RawGetString("assert").(*lua.LFunction).GFunction
	lib.RawSetString("assert", L.NewFunction(func(L *lua.LState) int {
		if !L.ToBool(1) {
			if s, ok := L.Get(2).(lua.LString); ok {
				in.alloc(L, int64(len(s))+errorWhereBytes)
			}
			in.inv.userRaised = true
		}
		return assertFn(L)
	}))
	// gopher-lua's setmetatable also sets the metatable shared by all
	// numbers, booleans or functions of the state, which would outlive the
	// invocation: only tables are allowed, as in Lua 5.1.
	setmt := G.RawGetString("setmetatable").(*lua.LFunction).GFunction
	lib.RawSetString("setmetatable", L.NewFunction(func(L *lua.LState) int {
		L.CheckTable(1)
		return setmt(L)
	}))
	lib.RawSetString("pcall", L.NewFunction(in.pcall))
	lib.RawSetString("xpcall", L.NewFunction(in.xpcall))
	lib.RawSetString("rawset", L.NewFunction(in.rawset))
	lib.RawSetString("unpack", L.NewFunction(in.wrapCount(G.RawGetString("unpack").(*lua.LFunction).GFunction, 1, false)))

	str := G.RawGetString("string").(*lua.LTable)
	in.wrapString(str)
	lib.RawSetString("string", in.freeze(str, newindex))
	smt := L.CreateTable(0, 2)
	smt.RawSetString("__index", str)
	smt.RawSetString("__metatable", lua.LFalse)
	L.SetMetatable(lua.LString(""), smt)

	tbl := G.RawGetString("table").(*lua.LTable)
	in.wrapTable(tbl)
	lib.RawSetString("table", in.freeze(tbl, newindex))

	math := G.RawGetString("math").(*lua.LTable)
	math.RawSetString("randomseed", lua.LNil)
	// Lua 5.1's: an empty interval is a catchable error (gopher-lua's
	// panicked in rand.Intn, the instance was thrown away and the event
	// dead-lettered), and math.huge is infinity (it was MaxFloat64).
	math.RawSetString("random", L.NewFunction(mathRandom))
	math.RawSetString("huge", lua.LNumber(stdmath.Inf(1)))
	lib.RawSetString("math", in.freeze(math, newindex))

	in.openHost(lib, newindex)

	in.envMT = L.CreateTable(0, 2)
	in.envMT.RawSetString("__index", lib)
	in.envMT.RawSetString("__metatable", lua.LFalse)
	in.chunk = [5]lua.LValue{L.NewFunction(in.tick), L.NewFunction(in.concat), L.NewFunction(in.table), L.NewFunction(in.closure), L.NewFunction(in.set)}
	// Cut the way back to the unrestricted globals.
	L.G.Global = L.CreateTable(0, 0)
	L.Env = L.G.Global
}

// ---- accounting ----

// raise ends the current Lua call with err recorded as the invocation's
// breach. Every later tick, pcall and accounted builtin re-raises it, so
// user code cannot swallow a breach with pcall.
func (in *instance) raise(L *lua.LState, err error) {
	if in.inv.breach == nil {
		in.inv.breach = err
	}
	L.RaiseError("%s", in.inv.breach.Error())
}

// charge adds n steps and checks every limit. It is called by @tick and by
// every accounted builtin.
func (in *instance) charge(L *lua.LState, n int64) {
	iv := &in.inv
	if iv.breach != nil {
		in.raise(L, iv.breach)
	}
	if n < 1 {
		n = 1 // never a refund
	}
	if n > iv.limits.MaxSteps-iv.steps {
		// Over the budget: what is recorded (and metered) is the budget,
		// not a charge that may be as large as a hostile argument.
		iv.steps = iv.limits.MaxSteps
		in.raise(L, fmt.Errorf("%w (%d steps)", ErrBudget, iv.limits.MaxSteps))
	}
	iv.steps += n
	iv.ticks++
	if iv.ticks&31 == 0 || n > 1024 {
		in.checkTime(L)
	}
	if iv.steps >= iv.nextScan {
		in.scanTables(L)
	}
}

func (in *instance) checkTime(L *lua.LState) {
	if err := in.timeErr(); err != nil {
		in.raise(L, err)
	}
}

// timeErr is checkTime returning the error (wrapping ErrTimeout) instead
// of raising it, for builders that must stop cleanly first.
func (in *instance) timeErr() error {
	iv := &in.inv
	if err := iv.ctx.Err(); err != nil {
		return fmt.Errorf("%w: %w", ErrTimeout, err)
	}
	if time.Now().After(iv.deadline) {
		if iv.ctxDeadline {
			return fmt.Errorf("%w: %w", ErrTimeout, context.DeadlineExceeded)
		}
		return fmt.Errorf("%w (%v)", ErrTimeout, iv.limits.Timeout)
	}
	return nil
}

// alloc accounts n bytes about to be allocated by a builtin (before the
// allocation, so a refused one never happens) and charges n/64 steps.
func (in *instance) alloc(L *lua.LState, n int64) {
	iv := &in.inv
	if n < 0 || n > iv.limits.MaxMemory {
		in.raise(L, fmt.Errorf("%w (%d bytes requested, cap %d)", ErrMemory, n, iv.limits.MaxMemory))
	}
	if iv.strBytes+iv.tableBytes+iv.blobs.live+n > iv.limits.MaxMemory {
		// Refused before it happens: the peak stays what was really used.
		in.raise(L, fmt.Errorf("%w (%d more bytes over the cap of %d)", ErrMemory, n, iv.limits.MaxMemory))
	}
	iv.strBytes += n
	in.checkMem(L)
	in.charge(L, 1+n/64)
}

// transient checks, before a builtin allocates them, that n bytes it frees
// again before returning (the parse tree of a pattern) fit under the cap
// beside what the invocation holds, and records them in the peak. Nothing
// stays charged: they do not outlive the call.
func (in *instance) transient(L *lua.LState, n int64, what string) {
	if err := in.transientErr(n, what); err != nil {
		in.raise(L, err)
	}
}

// transientErr is transient returning the error instead of raising it
// (for builders that must stop cleanly first, like the JSON encoder, or
// run outside a Lua call).
func (in *instance) transientErr(n int64, what string) error {
	iv := &in.inv
	m := iv.strBytes + iv.tableBytes + iv.blobs.live
	if n < 0 || n > iv.limits.MaxMemory || m+n > iv.limits.MaxMemory {
		return fmt.Errorf("%w (%s would hold %d bytes, cap %d)", ErrMemory, what, n, iv.limits.MaxMemory)
	}
	if m+n > iv.peak {
		iv.peak = m + n
	}
	return nil
}

// chargeTable accounts n bytes of table memory (the model's size of a table
// or of its growth) before a builtin creates or grows the table; the next
// table scan replaces the figure by the measured one.
func (in *instance) chargeTable(L *lua.LState, n int64, what string) {
	iv := &in.inv
	iv.tableBytes += n
	if iv.strBytes+iv.tableBytes+iv.blobs.live > iv.limits.MaxMemory {
		in.raise(L, fmt.Errorf("%w (%s: %d more bytes of tables over the cap of %d)", ErrMemory, what, n, iv.limits.MaxMemory))
	}
	in.checkMem(L)
}

func (in *instance) checkMem(L *lua.LState) {
	iv := &in.inv
	m := iv.strBytes + iv.tableBytes + iv.blobs.live
	if m > iv.peak {
		iv.peak = m
	}
	if m > iv.limits.MaxMemory {
		in.raise(L, fmt.Errorf("%w (cap %d bytes)", ErrMemory, iv.limits.MaxMemory))
	}
}

func (in *instance) scanTables(L *lua.LState) {
	iv := &in.inv
	var total int64
	for _, t := range iv.tables {
		total += tableBytes(t)
	}
	// The marks of json.array are entries of a map of the invocation.
	total += tableEntryBytes * int64(len(iv.arrays))
	iv.tableBytes = total
	iv.nextScan = iv.steps + scanEvery + 2*int64(len(iv.tables))
	if L != nil {
		in.checkMem(L)
	} else if m := iv.strBytes + iv.tableBytes + iv.blobs.live; m > iv.peak {
		iv.peak = m
	}
}

func (in *instance) patternSteps(n int) {
	in.charge(in.L, int64(n/patternOpsPerStep))
	in.checkTime(in.L)
}

// @tick(n)
func (in *instance) tick(L *lua.LState) int {
	n, _ := L.Get(1).(lua.LNumber)
	in.charge(L, int64(n))
	return 0
}

// @table(t): t was just built by a constructor; its size (keyed fields
// like {[60000] = 1} pad the array) is accounted at once.
func (in *instance) table(L *lua.LState) int {
	t := L.Get(1)
	tb, ok := t.(*lua.LTable)
	if !ok {
		L.RaiseError("@table: not a table")
	}
	top := L.GetTop()
	if top > 1 {
		in.checkWritable(L, tb) // only reachable by calling the hook by hand
	}
	in.inv.tables = append(in.inv.tables, tb)
	in.inv.tableBytes += tableBytes(tb)
	in.checkMem(L)
	for i := 2; i+1 <= top; i += 2 {
		k, v := L.Get(i), L.Get(i+1)
		if k == lua.LNil {
			L.RaiseError("table index is nil")
		}
		if n, ok := k.(lua.LNumber); ok && n != n {
			L.RaiseError("table index is NaN")
		}
		in.chargePadding(L, tb, k, true)
		tb.RawSet(k, v)
	}
	L.Push(t)
	return 1
}

// @set(t, k, v): t[k] = v (with metamethods, as the VM does), charging
// before it happens the array padding gopher-lua does for an integer key
// past the end of the array.
func (in *instance) set(L *lua.LState) int {
	t, k, v := L.Get(1), L.Get(2), L.Get(3)
	if tb, ok := t.(*lua.LTable); ok {
		in.chargePadding(L, tb, k, false)
	}
	L.SetTable(t, k, v)
	return 0
}

// chargePadding accounts the array slots a set of key k in tb would add
// to the table it lands in: tb, or, for a key tb does not hold, the
// table its __newindex chain leads to (as gopher-lua's settable walks
// it). A function as __newindex takes the write itself (its own sets are
// charged); a later table scan corrects the figure either way. raw: a
// rawset, which lands in tb.
func (in *instance) chargePadding(L *lua.LState, tb *lua.LTable, k lua.LValue, raw bool) {
	n, ok := k.(lua.LNumber)
	if !ok {
		return
	}
	i := int(n)
	if lua.LNumber(i) != n || i < 1 || i >= lua.MaxArrayIndex {
		return
	}
	for depth := 0; !raw; depth++ {
		if depth == lua.MaxTableGetLoop {
			return // a __newindex loop: the set raises a (catchable) error, nothing grows
		}
		if tb.RawGet(k) != lua.LNil {
			return // an existing key: nothing grows
		}
		mt, ok := tb.Metatable.(*lua.LTable)
		if !ok {
			break
		}
		next := mt.RawGetString("__newindex")
		if next == lua.LNil {
			break
		}
		nt, ok := next.(*lua.LTable)
		if !ok {
			return
		}
		tb = nt
	}
	alen := reflect.ValueOf(tb).Elem().Field(ltArray).Len()
	if i <= alen+1 {
		return
	}
	pad := int64(i-alen) * tableSlotBytes
	iv := &in.inv
	if iv.strBytes+iv.tableBytes+iv.blobs.live+pad > iv.limits.MaxMemory {
		in.raise(L, fmt.Errorf("%w (t[%d] would add %d array slots over the cap of %d bytes)", ErrMemory, i, i-alen, iv.limits.MaxMemory))
	}
	iv.tableBytes += pad
	in.checkMem(L)
	in.charge(L, 1+int64(i-alen)/64)
}

// @func(f): a closure is accounted as closureBytes plus upvalueBytes per
// upvalue, cumulatively (a closure made in a loop body captures fresh
// locals, so each gets upvalues of its own; shared ones are over-charged).
func (in *instance) closure(L *lua.LState) int {
	f := L.Get(1)
	n := int64(closureBytes)
	if fn, ok := f.(*lua.LFunction); ok {
		n += upvalueBytes * int64(len(fn.Upvalues))
	}
	in.alloc(L, n)
	L.Push(f)
	return 1
}

// @concat(a, b, ...)
func (in *instance) concat(L *lua.LState) int {
	top := L.GetTop()
	total := 0
	slow := false
	for i := 1; i <= top; i++ {
		switch v := L.Get(i).(type) {
		case lua.LString:
			total += len(v)
		case lua.LNumber:
			total += 24
		default:
			slow = true
		}
	}
	if !slow {
		in.alloc(L, int64(total))
		var b strings.Builder
		b.Grow(total)
		for i := 1; i <= top; i++ {
			switch v := L.Get(i).(type) {
			case lua.LString:
				b.WriteString(string(v))
			case lua.LNumber:
				b.WriteString(v.String())
			}
		}
		L.Push(lua.LString(b.String()))
		return 1
	}
	acc := L.Get(top)
	for i := top - 1; i >= 1; i-- {
		acc = in.concat2(L, L.Get(i), acc)
	}
	L.Push(acc)
	return 1
}

func isStringy(v lua.LValue) bool {
	t := v.Type()
	return t == lua.LTString || t == lua.LTNumber
}

func (in *instance) concat2(L *lua.LState, a, b lua.LValue) lua.LValue {
	if isStringy(a) && isStringy(b) {
		as, bs := lua.LVAsString(a), lua.LVAsString(b)
		in.alloc(L, int64(len(as)+len(bs)))
		return lua.LString(as + bs)
	}
	mm := L.GetMetaField(a, "__concat")
	if mm == lua.LNil {
		mm = L.GetMetaField(b, "__concat")
	}
	if mm == lua.LNil {
		bad := a
		if isStringy(a) {
			bad = b
		}
		L.RaiseError("attempt to concatenate a %s value", bad.Type().String())
	}
	L.Push(mm)
	L.Push(a)
	L.Push(b)
	L.Call(2, 1)
	r := L.Get(-1)
	L.Pop(1)
	return r
}

// ---- base library replacements ----

// afterCatch is run when pcall/xpcall caught an error: breaches, panics
// and stack overflows are re-raised so that they end the invocation.
// caughtFreeBytes is how much of a caught error message is not charged
// (afterCatch).
const caughtFreeBytes = 64

func (in *instance) afterCatch(L *lua.LState, err error) {
	userRaised := in.inv.userRaised
	in.inv.userRaised = false
	if in.inv.breach != nil {
		in.raise(L, in.inv.breach)
	}
	var aerr *lua.ApiError
	if errors.As(err, &aerr) {
		if aerr.Type == lua.ApiErrorPanic {
			in.raise(L, fmt.Errorf("%w: %v", ErrPanic, aerr.Object))
		}
		if s, ok := aerr.Object.(lua.LString); ok {
			if e := stackError(string(s)); e != nil {
				in.raise(L, e)
			}
			// The message is the caller's to keep now: a string no other
			// hook saw when a builtin or the VM made it (it names keys,
			// values, patterns), charged like a string built. One raised
			// by error or assert was charged there (or is the caller's
			// own string, re-raised at level 0).
			// The first 64 bytes are free (a short message kept costs
			// less than the table slot holding it, which is charged): a
			// loop catching ordinary errors does not run into the cap.
			if n := int64(len(s)) - caughtFreeBytes; !userRaised && n > 0 {
				in.alloc(L, n)
			}
		}
	}
}

// stackError maps gopher-lua's call/value stack overflow messages to
// ErrCallDepth.
func stackError(msg string) error {
	if strings.HasSuffix(msg, "stack overflow") || strings.HasSuffix(msg, "registry overflow") {
		return fmt.Errorf("%w: %s", ErrCallDepth, msg)
	}
	return nil
}

func (in *instance) pcall(L *lua.LState) int {
	in.charge(L, 1)
	v := L.CheckAny(1)
	if v.Type() != lua.LTFunction && L.GetMetaField(v, "__call").Type() != lua.LTFunction {
		L.Push(lua.LFalse)
		L.Push(lua.LString("attempt to call a " + v.Type().String() + " value"))
		return 2
	}
	if err := L.PCall(L.GetTop()-1, lua.MultRet, nil); err != nil {
		in.afterCatch(L, err)
		L.Push(lua.LFalse)
		L.Push(errObject(err))
		return 2
	}
	L.Insert(lua.LTrue, 1)
	return L.GetTop()
}

func errObject(err error) lua.LValue {
	var aerr *lua.ApiError
	if errors.As(err, &aerr) {
		return aerr.Object
	}
	return lua.LString(err.Error())
}

func (in *instance) xpcall(L *lua.LState) int {
	in.charge(L, 1)
	fn := L.CheckFunction(1)
	handler := L.CheckFunction(2)
	top := L.GetTop()
	L.Push(fn)
	if err := L.PCall(0, lua.MultRet, nil); err != nil {
		in.afterCatch(L, err)
		L.SetTop(top)
		L.Push(handler)
		L.Push(errObject(err))
		if herr := L.PCall(1, 1, nil); herr != nil {
			in.afterCatch(L, herr)
			L.Push(lua.LFalse)
			L.Push(errObject(herr))
			return 2
		}
		L.Insert(lua.LFalse, L.GetTop())
		return 2
	}
	L.Insert(lua.LTrue, top+1)
	return L.GetTop() - top
}

func (in *instance) checkWritable(L *lua.LState, t *lua.LTable) {
	if _, ok := in.frozen[t]; ok {
		L.RaiseError("attempt to modify a read-only table")
	}
}

func (in *instance) rawset(L *lua.LState) int {
	t := L.CheckTable(1)
	in.checkWritable(L, t)
	k := L.CheckAny(2)
	if k == lua.LNil {
		L.ArgError(2, "table index is nil")
	}
	in.chargePadding(L, t, k, true)
	t.RawSet(k, L.CheckAny(3))
	L.SetTop(1)
	return 1
}

// wrapCount is unpack(t, i, j) and string.byte(s, i, j) as Lua 5.1 has
// them, with the number of values bounded (Lua's "too many results") and
// charged. Bounds are read as numbers (NaN, or one far out of range,
// became an int that made j-i overflow past the bound), and the values
// are pushed here (gopher-lua's string.byte defaulted j to the end of the
// string, and converts bounds to a Go int: 32 bits on a 32-bit Pi). orig
// handles other first arguments (its argument error).
func (in *instance) wrapCount(orig lua.LGFunction, defI int, isByte bool) lua.LGFunction {
	return func(L *lua.LState) int {
		// A bound beyond 2^53 is clamped there (it then counts as too
		// many results, or is clamped to the string); NaN is an error.
		bound := func(idx int, def float64) float64 {
			if L.Get(idx) == lua.LNil {
				return def
			}
			f := float64(L.CheckNumber(idx))
			if stdmath.IsNaN(f) {
				L.ArgError(idx, "number is NaN")
			}
			return stdmath.Trunc(max(min(f, 1<<53), -(1 << 53)))
		}
		push := func(i, j float64, at func(k float64) lua.LValue) int {
			if i > j {
				return 0
			}
			if j-i >= 8000 {
				L.RaiseError("too many results (%.0f)", j-i+1)
			}
			in.charge(L, 1+int64(j-i)/8)
			for k := i; k <= j; k++ {
				L.Push(at(k))
			}
			return int(j-i) + 1
		}
		if isByte {
			L.CheckString(1) // a string or a number, as Lua 5.1
		} else {
			L.CheckTable(1)
		}
		switch v := L.Get(1).(type) {
		case *lua.LTable:
			// unpack: t[i] .. t[j], j defaulting to #t.
			i := bound(2, float64(defI))
			j := bound(3, float64(v.Len()))
			return push(i, j, func(k float64) lua.LValue { return v.RawGet(lua.LNumber(k)) })
		case lua.LString, lua.LNumber:
			// string.byte (Lua 5.1's str_byte): negative positions count
			// from the end, j defaults to i, the range is clamped to the
			// string.
			s := L.CheckString(1)
			n := float64(len(s))
			rel := func(p float64) float64 {
				if p < 0 {
					p += n + 1
				}
				return max(p, 0)
			}
			i := rel(bound(2, float64(defI)))
			j := min(rel(bound(3, i)), n)
			i = max(i, 1)
			return push(i, j, func(k float64) lua.LValue { return lua.LNumber(s[int(k)-1]) })
		}
		return orig(L)
	}
}

// mathRandom is Lua 5.1's math.random: no argument, a float in [0, 1); m,
// an integer in [1, m]; m, n, an integer in [m, n]. An empty interval is an
// error. Bounds are 64-bit (gopher-lua's were Go ints: 32 bits on a Pi
// with a 32-bit system).
func mathRandom(L *lua.LState) int {
	bound := func(n int) int64 {
		f := float64(L.CheckNumber(n))
		if stdmath.IsNaN(f) || stdmath.Abs(f) > 1<<53 {
			L.ArgError(n, "number out of range")
		}
		return int64(stdmath.Floor(f))
	}
	var lo, hi int64
	switch L.GetTop() {
	case 0:
		L.Push(lua.LNumber(rand.Float64()))
		return 1
	case 1:
		lo, hi = 1, bound(1)
	case 2:
		lo, hi = bound(1), bound(2)
	default:
		L.RaiseError("wrong number of arguments")
	}
	if lo > hi {
		L.ArgError(L.GetTop(), "interval is empty")
	}
	L.Push(lua.LNumber(lo + int64(rand.Uint64N(uint64(hi-lo)+1))))
	return 1
}
