-- expect: call_depth
local function f(n) return 1 + f(n + 1) end
function handle(event, ctx)
  return {f(1)}
end
