-- expect: budget
-- A remove position past the end must not count as negative work.
function handle(event, ctx)
  local t = {1, 2, 3}
  while true do table.remove(t, 1e18) end
end
