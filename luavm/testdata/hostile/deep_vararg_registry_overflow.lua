-- expect: call_depth
-- error: registry overflow
-- gopher-lua#282: overflowing the value stack with growing varargs made
-- gopher-lua panic in its error position lookup (while building the
-- implicit `arg` table); without that table it is a clean registry
-- overflow, which ends the invocation as a call-depth breach.
local function f(...) return f(1, 2, 3, 4, 5, 6, 7, 8, 9, 10, ...) end
function handle(event, ctx)
  return f()
end
