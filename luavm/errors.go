package luavm

import (
	"errors"
	"fmt"
)

// Sentinel errors. Errors returned by this package wrap one of them (test
// with errors.Is); limit breaches are additionally recognised by IsLimit.
var (
	// ErrCompile: the source does not parse or compile (see CompileError).
	ErrCompile = errors.New("luavm: compile error")
	// ErrSourceTooLarge: the source is over the size limit (default 256 KiB).
	ErrSourceTooLarge = errors.New("luavm: source too large")
	// ErrNoHandler: the source defines no global function handle(event, ctx).
	ErrNoHandler = errors.New("luavm: no handle function")
	// ErrBytecode: the source is precompiled Lua bytecode, which is refused.
	ErrBytecode = errors.New("luavm: precompiled bytecode is not accepted")
	// ErrNotFound: no function of that name is deployed.
	ErrNotFound = errors.New("luavm: function not found")
	// ErrBusy: the call did not run: every instance was busy and the wait
	// queue was full or the queue timeout passed, or the caller's context
	// ended before an instance was free (then it wraps ctx's error too).
	ErrBusy = errors.New("luavm: function busy")
	// ErrTimeout: the invocation ran past its wall-clock limit or its
	// context was cancelled while it ran.
	ErrTimeout = errors.New("luavm: timeout")
	// ErrBudget: the invocation used up its execution step budget.
	ErrBudget = errors.New("luavm: step budget exceeded")
	// ErrMemory: the invocation's accounted memory went over its cap.
	ErrMemory = errors.New("luavm: memory limit exceeded")
	// ErrCallDepth: Lua call depth or value stack limit exceeded.
	ErrCallDepth = errors.New("luavm: call depth limit exceeded")
	// ErrResultTooLarge: the encoded return value is over MaxResultBytes.
	ErrResultTooLarge = errors.New("luavm: result too large")
	// ErrTooManyEffects: more effects (or state operations) than allowed.
	ErrTooManyEffects = errors.New("luavm: too many effects")
	// ErrEffectTooLarge: one effect payload (or state value) is too large.
	ErrEffectTooLarge = errors.New("luavm: effect too large")
	// ErrRuntime: the function raised a Lua error (the message includes the
	// Lua source line) or returned something that is not nil/table/string.
	ErrRuntime = errors.New("luavm: runtime error")
	// ErrPanic: gopher-lua panicked; the panic was recovered and the
	// instance discarded.
	ErrPanic = errors.New("luavm: interpreter panic")
	// ErrClosed: the Runtime is closed.
	ErrClosed = errors.New("luavm: runtime closed")
)

// IsLimit reports whether err is a breach of a per-invocation limit
// (timeout, step budget, memory, call depth, result size, effect count or
// size). Such an invocation would fail again on retry: the gateway sends it
// to dead letters instead of retrying.
func IsLimit(err error) bool {
	for _, e := range []error{ErrTimeout, ErrBudget, ErrMemory, ErrCallDepth, ErrResultTooLarge, ErrTooManyEffects, ErrEffectTooLarge} {
		if errors.Is(err, e) {
			return true
		}
	}
	return false
}

// CompileError is a syntax or compile error in a function's source. It wraps
// ErrCompile. Column is 0 when the compiler does not report one.
type CompileError struct {
	Name   string // function (chunk) name
	Line   int
	Column int
	Msg    string
}

func (e *CompileError) Error() string {
	return fmt.Sprintf("luavm: compile %s:%d:%d: %s", e.Name, e.Line, e.Column, e.Msg)
}

// Unwrap makes errors.Is(err, ErrCompile) true.
func (e *CompileError) Unwrap() error { return ErrCompile }

// outcome names the Cost.Outcome for an invocation error.
func outcome(err error) string {
	switch {
	case err == nil:
		return "ok"
	case errors.Is(err, ErrTimeout):
		return "timeout"
	case errors.Is(err, ErrBudget):
		return "budget"
	case errors.Is(err, ErrMemory):
		return "memory"
	case errors.Is(err, ErrCallDepth):
		return "call_depth"
	case errors.Is(err, ErrResultTooLarge):
		return "result_too_large"
	case errors.Is(err, ErrTooManyEffects):
		return "too_many_effects"
	case errors.Is(err, ErrEffectTooLarge):
		return "effect_too_large"
	case errors.Is(err, ErrPanic):
		return "panic"
	case errors.Is(err, ErrBusy):
		return "busy"
	default:
		return "error"
	}
}
