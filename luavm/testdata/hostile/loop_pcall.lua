-- expect: budget
-- pcall catches the budget error and the loop tries again.
local function spin() while true do end end
function handle(event, ctx)
  while true do pcall(spin) end
end
