-- expect: budget
local function spin() while true do end end
function handle(event, ctx)
  while true do xpcall(spin, function(e) return e end) end
end
