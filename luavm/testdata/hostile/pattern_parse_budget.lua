-- expect: budget
-- A long pattern is parsed at every call, one step per byte of pattern:
-- the budget ends the loop, not the clock.
function handle(event, ctx)
  local p = ("a"):rep(900) .. "."
  while true do string.match("", p) end
end
