-- expect: budget
-- pcall swallows the breach, then the function returns normally: still a breach.
local function spin() while true do end end
function handle(event, ctx)
  local ok, err = pcall(spin)
  return {swallowed = tostring(err)}
end
