// Package luavm is moongate's sandboxed Lua function runtime: it compiles
// user functions once, runs them per event in fresh, restricted environments
// with enforced limits (wall time, execution steps, memory, output sizes),
// keeps warm pools of instances per function version, and meters the cost of
// every invocation. It knows nothing of MQTT, Badger or HTTP: callers hand it
// an event and get back a result and a list of requested effects.
//
// Use a Runtime (safe for concurrent use): Deploy a Spec (compiles, pre-warms
// MinInstances, swaps versions atomically), Invoke it with an Event and a
// StateReader, and commit the Result (value, effects, state operations)
// yourself. Invoke always returns a Result with Logs and Cost; its error
// wraps one of the sentinel errors of errors.go, and IsLimit tells a limit
// breach (do not retry) from other failures.
//
// Limits are enforced without hooks in gopher-lua: Compile rewrites the
// syntax tree so that every loop body, function body and label charges
// steps, and concatenations, table constructors, closures and computed-key
// assignments go through accounted host functions; the string, table and
// JSON builtins charge what they allocate before allocating it. The design,
// the host API for function authors and the accounting model are described
// in docs/functions.md.
package luavm
