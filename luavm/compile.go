package luavm

import (
	"bytes"
	"errors"
	"fmt"
	"strings"

	lua "github.com/yuin/gopher-lua"
	"github.com/yuin/gopher-lua/ast"
	"github.com/yuin/gopher-lua/parse"
)

func init() {
	// No implicit `arg` table in vararg functions (Lua 5.0's, kept by Lua
	// 5.1 for compatibility): gopher-lua builds it on every call of any
	// vararg function, holding all the extra arguments, where no hook can
	// account it. Functions use ..., select("#", ...) or {...} (accounted)
	// instead. luavm is gopher-lua's only user in moongate, and this runs
	// before anything is compiled.
	lua.CompatVarArg = false
}

// Program is a compiled function: an instrumented, shared, read-only
// gopher-lua prototype. It is immutable and safe for concurrent use; every
// instance creates its own closure from it. Programs come from Compile; the
// zero value is not usable.
type Program struct {
	name  string
	proto *lua.FunctionProto
	size  int
	usesG bool // the source mentions _G: the fresh environment gets one
	noCtx bool // handle provably never reads its ctx argument: none is built
}

// Name returns the chunk name given to Compile.
func (p *Program) Name() string { return p.name }

// Names of the hidden locals the instrumentation introduces. They are not
// valid Lua identifiers, so user code can neither read nor shadow them.
const (
	hidTick   = "@tick"   // @tick(n): charge n steps, check limits
	hidConcat = "@concat" // @concat(a, b, ...): accounted a .. b .. ...
	hidTable  = "@table"  // @table(t): account a new table, returns t
	hidFunc   = "@func"   // @func(f): account a new closure, returns f
	hidSet    = "@set"    // @set(t, k, v): t[k] = v with the array growth accounted
)

// Compile parses and compiles src with the default source size limit
// (DefaultMaxSourceBytes). Errors: *CompileError (wrapping ErrCompile) with
// line and column, ErrSourceTooLarge, ErrBytecode, ErrNoHandler.
func Compile(name string, src []byte) (*Program, error) {
	return compile(name, src, DefaultMaxSourceBytes)
}

func compile(name string, src []byte, maxBytes int) (*Program, error) {
	if maxBytes <= 0 {
		maxBytes = DefaultMaxSourceBytes
	}
	if len(src) > maxBytes {
		return nil, fmt.Errorf("%w: %d bytes, limit %d", ErrSourceTooLarge, len(src), maxBytes)
	}
	if bytes.HasPrefix(src, []byte("\x1bLua")) || bytes.IndexByte(src, 0x1b) == 0 {
		return nil, fmt.Errorf("%w (%s)", ErrBytecode, name)
	}
	chunk, err := parse.Parse(bytes.NewReader(src), name)
	if err != nil {
		var pe *parse.Error
		if errors.As(err, &pe) {
			ce := &CompileError{Name: name, Line: pe.Pos.Line, Column: pe.Pos.Column, Msg: strings.TrimSpace(pe.Message + " near '" + pe.Token + "'")}
			if ce.Line < 0 { // at end of file
				ce.Line, ce.Column, ce.Msg = bytes.Count(bytes.TrimRight(src, "\r\n\t "), []byte("\n"))+1, 0, pe.Message+" at end of file"
			}
			return nil, ce
		}
		return nil, &CompileError{Name: name, Msg: err.Error()}
	}
	if !definesHandle(chunk) {
		return nil, fmt.Errorf("%w: %s must define a global function handle(event, ctx)", ErrNoHandler, name)
	}
	usesG := bytes.Contains(src, []byte("_G"))
	noCtx := !handleUsesCtx(chunk, usesG)
	chunk = instrumentChunk(chunk)
	proto, err := lua.Compile(chunk, name)
	if err != nil {
		var ce *lua.CompileError
		if errors.As(err, &ce) {
			return nil, &CompileError{Name: name, Line: ce.Line, Msg: ce.Message}
		}
		return nil, &CompileError{Name: name, Msg: err.Error()}
	}
	return &Program{name: name, proto: proto, size: len(src), usesG: usesG, noCtx: noCtx}, nil
}

// definesHandle reports whether a top-level statement assigns the global
// "handle" (function handle() ... end or handle = ...).
func definesHandle(chunk []ast.Stmt) bool {
	locals := map[string]bool{}
	for _, st := range chunk {
		switch s := st.(type) {
		case *ast.LocalAssignStmt:
			for _, n := range s.Names {
				locals[n] = true
			}
		case *ast.FuncDefStmt:
			if id, ok := s.Name.Func.(*ast.IdentExpr); ok && s.Name.Receiver == nil && id.Value == "handle" && !locals["handle"] {
				return true
			}
		case *ast.AssignStmt:
			for _, l := range s.Lhs {
				if id, ok := l.(*ast.IdentExpr); ok && id.Value == "handle" && !locals["handle"] {
					return true
				}
			}
		}
	}
	return false
}

// instrumentChunk rewrites the chunk for metering (see docs/functions.md,
// "How limits are enforced"):
//
//   - the chunk starts with `local @tick, @concat, ... = ...`: the runtime
//     passes its Go hooks as the chunk's arguments. The user's top-level
//     `...` sees them too, which is harmless: a tick never refunds steps,
//     @table refuses read-only tables, and the others only do accounted
//     versions of what the code could do anyway;
//   - every function body, loop body (while, repeat, numeric and generic
//     for) and every label (the target of a backward goto) starts with
//     @tick(n), n = 1 + number of statements of that block;
//   - every a .. b .. c becomes @concat(a, b, c) (memory accounted);
//   - every table constructor {...} becomes @table({...}) (table growth is
//     accounted); fields with computed keys move into arguments of @table:
//     {a, [k] = v} becomes @table({a}, k, v);
//   - every closure becomes @func(function ... end) (closures are
//     accounted); `local function f` becomes `local f; f = @func(...)` and
//     `function a.b:c()` becomes `a.b.c = @func(function(self) ...)`, as in
//     the Lua manual's definitions of those statements;
//   - every assignment to t[k] where k is not a string constant becomes
//     @set(t, k, v): gopher-lua pads a table's array up to an integer key,
//     so t[60000] = 1 allocates 60000 slots in one instruction; @set charges
//     that padding before it happens.
func instrumentChunk(chunk []ast.Stmt) []ast.Stmt {
	in := &instrumenter{}
	body := in.block(chunk, 1)
	line := 1
	if len(chunk) > 0 {
		line = chunk[0].Line()
	}
	va := &ast.Comma3Expr{}
	va.SetLine(line)
	pro := &ast.LocalAssignStmt{Names: []string{hidTick, hidConcat, hidTable, hidFunc, hidSet}, Exprs: []ast.Expr{va}}
	pro.SetLine(line)
	pro.SetLastLine(line)
	return append([]ast.Stmt{pro}, body...)
}

type instrumenter struct{}

func (in *instrumenter) tickStmt(n, line int) ast.Stmt {
	fn := &ast.IdentExpr{Value: hidTick}
	fn.SetLine(line)
	arg := &ast.NumberExpr{Value: fmt.Sprint(n)}
	arg.SetLine(line)
	call := &ast.FuncCallExpr{Func: fn, Args: []ast.Expr{arg}}
	call.SetLine(line)
	call.SetLastLine(line)
	st := &ast.FuncCallStmt{Expr: call}
	st.SetLine(line)
	st.SetLastLine(line)
	return st
}

// block instruments the statements of a block; ticked blocks get a tick
// first.
func (in *instrumenter) block(stmts []ast.Stmt, line int) []ast.Stmt {
	return in.stmts(stmts, line, false)
}

func (in *instrumenter) ticked(stmts []ast.Stmt, line int) []ast.Stmt {
	return in.stmts(stmts, line, true)
}

func (in *instrumenter) stmts(stmts []ast.Stmt, line int, tick bool) []ast.Stmt {
	out := make([]ast.Stmt, 0, len(stmts)+2)
	if tick {
		if len(stmts) > 0 {
			line = stmts[0].Line()
		}
		out = append(out, in.tickStmt(1+len(stmts), line))
	}
	for _, st := range stmts {
		if la, ok := st.(*ast.LocalAssignStmt); ok && len(la.Names) == 1 && len(la.Exprs) == 1 {
			if f, ok := la.Exprs[0].(*ast.FunctionExpr); ok {
				// local function f: declare f first so the body can recurse.
				decl := &ast.LocalAssignStmt{Names: la.Names}
				decl.SetLine(la.Line())
				decl.SetLastLine(la.Line())
				id := &ast.IdentExpr{Value: la.Names[0]}
				id.SetLine(la.Line())
				in.function(f)
				as := &ast.AssignStmt{Lhs: []ast.Expr{id}, Rhs: []ast.Expr{in.call(hidFunc, f.Line(), []ast.Expr{f})}}
				as.SetLine(la.Line())
				as.SetLastLine(la.LastLine())
				out = append(out, decl, as)
				continue
			}
		}
		if as, ok := st.(*ast.AssignStmt); ok && hasComputedTarget(as) {
			out = append(out, in.assignSet(as))
			continue
		}
		if fd, ok := st.(*ast.FuncDefStmt); ok {
			out = append(out, in.funcDef(fd))
			continue
		}
		out = append(out, in.stmt(st))
		if lbl, ok := st.(*ast.LabelStmt); ok {
			out = append(out, in.tickStmt(1+len(stmts), lbl.Line()))
		}
	}
	return out
}

func (in *instrumenter) stmt(st ast.Stmt) ast.Stmt {
	switch s := st.(type) {
	case *ast.AssignStmt:
		in.exprs(s.Lhs)
		in.exprs(s.Rhs)
	case *ast.LocalAssignStmt:
		in.exprs(s.Exprs)
	case *ast.FuncCallStmt:
		s.Expr = in.expr(s.Expr)
	case *ast.DoBlockStmt:
		s.Stmts = in.block(s.Stmts, s.Line())
	case *ast.WhileStmt:
		s.Condition = in.expr(s.Condition)
		s.Stmts = in.ticked(s.Stmts, s.Line())
	case *ast.RepeatStmt:
		s.Condition = in.expr(s.Condition)
		s.Stmts = in.ticked(s.Stmts, s.Line())
	case *ast.IfStmt:
		s.Condition = in.expr(s.Condition)
		s.Then = in.block(s.Then, s.Line())
		s.Else = in.block(s.Else, s.Line())
	case *ast.NumberForStmt:
		s.Init = in.expr(s.Init)
		s.Limit = in.expr(s.Limit)
		if s.Step != nil {
			s.Step = in.expr(s.Step)
		}
		s.Stmts = in.ticked(s.Stmts, s.Line())
	case *ast.GenericForStmt:
		in.exprs(s.Exprs)
		s.Stmts = in.ticked(s.Stmts, s.Line())
	case *ast.ReturnStmt:
		in.exprs(s.Exprs)
	}
	return st
}

// computedTarget reports whether e is t[k] with k not a string constant.
func computedTarget(e ast.Expr) (*ast.AttrGetExpr, bool) {
	g, ok := e.(*ast.AttrGetExpr)
	if !ok {
		return nil, false
	}
	_, str := g.Key.(*ast.StringExpr)
	return g, !str
}

func hasComputedTarget(as *ast.AssignStmt) bool {
	for _, l := range as.Lhs {
		if _, ok := computedTarget(l); ok {
			return true
		}
	}
	return false
}

// assignSet rewrites an assignment with computed targets: t[k] = v becomes
// @set(t, k, v); a multiple assignment evaluates its values into hidden
// locals first (Lua leaves the order of evaluation in an assignment
// undefined).
func (in *instrumenter) assignSet(as *ast.AssignStmt) ast.Stmt {
	line := as.Line()
	set := func(g *ast.AttrGetExpr, v ast.Expr) ast.Stmt {
		c := in.call(hidSet, line, []ast.Expr{in.expr(g.Object), in.expr(g.Key), v})
		st := &ast.FuncCallStmt{Expr: c}
		st.SetLine(line)
		st.SetLastLine(as.LastLine())
		return st
	}
	if len(as.Lhs) == 1 && len(as.Rhs) == 1 {
		g, _ := computedTarget(as.Lhs[0])
		return set(g, in.expr(as.Rhs[0]))
	}
	names := make([]string, len(as.Lhs))
	for i := range names {
		names[i] = fmt.Sprintf("@v%d", i+1)
	}
	in.exprs(as.Rhs)
	loc := &ast.LocalAssignStmt{Names: names, Exprs: as.Rhs}
	loc.SetLine(line)
	loc.SetLastLine(as.LastLine())
	body := []ast.Stmt{loc}
	for i, l := range as.Lhs {
		v := &ast.IdentExpr{Value: names[i]}
		v.SetLine(line)
		if g, ok := computedTarget(l); ok {
			body = append(body, set(g, v))
			continue
		}
		a := &ast.AssignStmt{Lhs: []ast.Expr{in.expr(l)}, Rhs: []ast.Expr{v}}
		a.SetLine(line)
		a.SetLastLine(line)
		body = append(body, a)
	}
	do := &ast.DoBlockStmt{Stmts: body}
	do.SetLine(line)
	do.SetLastLine(as.LastLine())
	return do
}

// funcDef turns `function name() ... end` into an assignment of an
// accounted closure (a method gets its explicit self parameter).
func (in *instrumenter) funcDef(fd *ast.FuncDefStmt) ast.Stmt {
	var lhs ast.Expr
	if fd.Name.Func != nil {
		lhs = in.expr(fd.Name.Func)
	} else {
		key := &ast.StringExpr{Value: fd.Name.Method}
		key.SetLine(fd.Line())
		get := &ast.AttrGetExpr{Object: in.expr(fd.Name.Receiver), Key: key}
		get.SetLine(fd.Line())
		get.SetLastLine(fd.Line())
		lhs = get
		// The compiler adds the implicit self only for a method FuncDefStmt.
		fd.Func.ParList.Names = append([]string{"self"}, fd.Func.ParList.Names...)
	}
	in.function(fd.Func)
	as := &ast.AssignStmt{Lhs: []ast.Expr{lhs}, Rhs: []ast.Expr{in.call(hidFunc, fd.Func.Line(), []ast.Expr{fd.Func})}}
	as.SetLine(fd.Line())
	as.SetLastLine(fd.LastLine())
	return as
}

func (in *instrumenter) function(f *ast.FunctionExpr) {
	f.Stmts = in.ticked(f.Stmts, f.Line())
}

func (in *instrumenter) exprs(es []ast.Expr) {
	for i, e := range es {
		es[i] = in.expr(e)
	}
}

func (in *instrumenter) call(name string, line int, args []ast.Expr) *ast.FuncCallExpr {
	fn := &ast.IdentExpr{Value: name}
	fn.SetLine(line)
	c := &ast.FuncCallExpr{Func: fn, Args: args}
	c.SetLine(line)
	c.SetLastLine(line)
	return c
}

func (in *instrumenter) expr(e ast.Expr) ast.Expr {
	switch x := e.(type) {
	case nil:
		return nil
	case *ast.AttrGetExpr:
		x.Object = in.expr(x.Object)
		x.Key = in.expr(x.Key)
	case *ast.TableExpr:
		// Fields with computed keys ({[k] = v}) are set by @table, which
		// accounts array padding; Lua leaves the order of the assignments
		// in a constructor undefined.
		args := []ast.Expr{x}
		kept := x.Fields[:0]
		for _, f := range x.Fields {
			if f.Key != nil {
				if _, str := f.Key.(*ast.StringExpr); !str {
					args = append(args, in.expr(f.Key), in.expr(f.Value))
					continue
				}
			}
			f.Value = in.expr(f.Value)
			kept = append(kept, f)
		}
		x.Fields = kept
		return in.call(hidTable, x.Line(), args)
	case *ast.FuncCallExpr:
		x.Func = in.expr(x.Func)
		if x.Receiver != nil {
			x.Receiver = in.expr(x.Receiver)
		}
		in.exprs(x.Args)
	case *ast.LogicalOpExpr:
		x.Lhs = in.expr(x.Lhs)
		x.Rhs = in.expr(x.Rhs)
	case *ast.RelationalOpExpr:
		x.Lhs = in.expr(x.Lhs)
		x.Rhs = in.expr(x.Rhs)
	case *ast.ArithmeticOpExpr:
		x.Lhs = in.expr(x.Lhs)
		x.Rhs = in.expr(x.Rhs)
	case *ast.StringConcatOpExpr:
		var parts []ast.Expr
		in.flattenConcat(x, &parts)
		return in.call(hidConcat, x.Line(), parts)
	case *ast.UnaryMinusOpExpr:
		x.Expr = in.expr(x.Expr)
	case *ast.UnaryNotOpExpr:
		x.Expr = in.expr(x.Expr)
	case *ast.UnaryLenOpExpr:
		x.Expr = in.expr(x.Expr)
	case *ast.FunctionExpr:
		in.function(x)
		return in.call(hidFunc, x.Line(), []ast.Expr{x})
	}
	return e
}

// flattenConcat turns the right-associative chain a .. (b .. c) into
// [a, b, c], instrumenting each operand.
func (in *instrumenter) flattenConcat(e ast.Expr, parts *[]ast.Expr) {
	if c, ok := e.(*ast.StringConcatOpExpr); ok {
		in.flattenConcat(c.Lhs, parts)
		in.flattenConcat(c.Rhs, parts)
		return
	}
	*parts = append(*parts, in.expr(e))
}
