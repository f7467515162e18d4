// Package luavm is moongate's sandboxed Lua function runtime: it compiles
// user functions once, runs them per event in fresh, restricted environments
// with enforced limits (wall time, execution steps, memory, output sizes),
// keeps warm pools of instances per function version, and meters the cost of
// every invocation. It knows nothing of MQTT, Badger or HTTP: callers hand it
// an event and get back a result and a list of requested effects.
package luavm
