-- expect: panic
-- gopher-lua#282: overflowing the value stack makes gopher-lua panic in its
-- error position lookup; the panic is recovered and the instance discarded.
local function f(...) return f(1, 2, 3, 4, 5, 6, 7, 8, 9, 10, ...) end
function handle(event, ctx)
  return f()
end
