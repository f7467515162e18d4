-- expect: call_depth
-- Each level catches the overflow of the level below.
local function f() pcall(f); pcall(f) end
function handle(event, ctx)
  f()
  return {}
end
