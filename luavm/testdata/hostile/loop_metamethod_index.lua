-- expect: budget
-- An __index metamethod that never returns.
function handle(event, ctx)
  local t = setmetatable({}, {__index = function(t, k) while true do end end})
  return {v = t.x}
end
