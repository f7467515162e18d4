-- state: read-your-writes, incr as a recorded delta, delete, missing keys.
function handle(event, ctx)
  local before = state.get("count")
  local n = state.incr("count")
  local n2 = state.incr("count", 2.5)
  state.set("last", {id = event.id, list = {1, 2}})
  local last = state.get("last")
  state.delete("old")
  local gone = state.get("old")
  state.set("cleared", nil)
  return {before = before, n = n, n2 = n2, last_id = last.id, gone = gone == nil, missing = state.get("nope") == nil}
end
