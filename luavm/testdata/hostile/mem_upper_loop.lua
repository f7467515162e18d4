-- expect: memory
-- Allocation is accounted cumulatively: garbage counts too.
function handle(event, ctx)
  local s = string.rep('a', 100000)
  while true do local u = s:upper() end
end
