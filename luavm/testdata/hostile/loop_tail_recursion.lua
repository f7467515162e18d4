-- expect: budget
-- Tail calls do not grow the stack, so only the step budget stops this.
local function f(n) return f(n + 1) end
function handle(event, ctx)
  return f(1)
end
