package luavm

import "github.com/yuin/gopher-lua/ast"

// handleUsesCtx reports whether the ctx argument of handle can be observed.
// It is false only in the provable case: handle is defined once, as
// `function handle(event, ctx)` at top level, nothing else mentions handle
// or _G, and the body never names its second parameter (nor uses ...).
// Then the runtime does not build the ctx table at all.
func handleUsesCtx(chunk []ast.Stmt, usesG bool) bool {
	if usesG {
		return true
	}
	var def *ast.FunctionExpr
	for _, st := range chunk {
		if fd, ok := st.(*ast.FuncDefStmt); ok {
			if id, ok := fd.Name.Func.(*ast.IdentExpr); ok && id.Value == "handle" {
				if def != nil {
					return true
				}
				def = fd.Func
			}
		}
	}
	if def == nil || def.ParList.HasVargs {
		return true
	}
	if len(def.ParList.Names) < 2 {
		return false
	}
	ctxName := def.ParList.Names[1]
	// Any other mention of handle (a reassignment, a call from elsewhere
	// that passes a ctx of its own) keeps the ctx.
	w := &identWalker{}
	for _, st := range chunk {
		if fd, ok := st.(*ast.FuncDefStmt); ok && fd.Func == def {
			continue
		}
		w.stmt(st)
	}
	if w.seen["handle"] {
		return true
	}
	w = &identWalker{}
	w.stmts(def.Stmts)
	return w.seen[ctxName] || w.seen["..."]
}

// identWalker records every identifier (and "..." for varargs) an AST
// mentions.
type identWalker struct{ seen map[string]bool }

func (w *identWalker) mark(name string) {
	if w.seen == nil {
		w.seen = map[string]bool{}
	}
	w.seen[name] = true
}

func (w *identWalker) stmts(ss []ast.Stmt) {
	for _, s := range ss {
		w.stmt(s)
	}
}

func (w *identWalker) exprs(es []ast.Expr) {
	for _, e := range es {
		w.expr(e)
	}
}

func (w *identWalker) stmt(st ast.Stmt) {
	switch s := st.(type) {
	case *ast.AssignStmt:
		w.exprs(s.Lhs)
		w.exprs(s.Rhs)
	case *ast.LocalAssignStmt:
		for _, n := range s.Names {
			w.mark(n)
		}
		w.exprs(s.Exprs)
	case *ast.FuncCallStmt:
		w.expr(s.Expr)
	case *ast.DoBlockStmt:
		w.stmts(s.Stmts)
	case *ast.WhileStmt:
		w.expr(s.Condition)
		w.stmts(s.Stmts)
	case *ast.RepeatStmt:
		w.expr(s.Condition)
		w.stmts(s.Stmts)
	case *ast.IfStmt:
		w.expr(s.Condition)
		w.stmts(s.Then)
		w.stmts(s.Else)
	case *ast.NumberForStmt:
		w.mark(s.Name)
		w.expr(s.Init)
		w.expr(s.Limit)
		w.expr(s.Step)
		w.stmts(s.Stmts)
	case *ast.GenericForStmt:
		for _, n := range s.Names {
			w.mark(n)
		}
		w.exprs(s.Exprs)
		w.stmts(s.Stmts)
	case *ast.FuncDefStmt:
		w.expr(s.Name.Func)
		w.expr(s.Name.Receiver)
		w.expr(s.Func)
	case *ast.ReturnStmt:
		w.exprs(s.Exprs)
	}
}

func (w *identWalker) expr(e ast.Expr) {
	switch x := e.(type) {
	case nil:
	case *ast.IdentExpr:
		w.mark(x.Value)
	case *ast.Comma3Expr:
		w.mark("...")
	case *ast.AttrGetExpr:
		w.expr(x.Object)
		w.expr(x.Key)
	case *ast.TableExpr:
		for _, f := range x.Fields {
			w.expr(f.Key)
			w.expr(f.Value)
		}
	case *ast.FuncCallExpr:
		w.expr(x.Func)
		w.expr(x.Receiver)
		w.exprs(x.Args)
	case *ast.LogicalOpExpr:
		w.expr(x.Lhs)
		w.expr(x.Rhs)
	case *ast.RelationalOpExpr:
		w.expr(x.Lhs)
		w.expr(x.Rhs)
	case *ast.ArithmeticOpExpr:
		w.expr(x.Lhs)
		w.expr(x.Rhs)
	case *ast.StringConcatOpExpr:
		w.expr(x.Lhs)
		w.expr(x.Rhs)
	case *ast.UnaryMinusOpExpr:
		w.expr(x.Expr)
	case *ast.UnaryNotOpExpr:
		w.expr(x.Expr)
	case *ast.UnaryLenOpExpr:
		w.expr(x.Expr)
	case *ast.FunctionExpr:
		for _, n := range x.ParList.Names {
			w.mark(n)
		}
		w.stmts(x.Stmts)
	}
}
