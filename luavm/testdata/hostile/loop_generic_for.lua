-- expect: budget
-- A stateless iterator that never ends.
local function forever(s, i) return i + 1 end
function handle(event, ctx)
  for i in forever, nil, 0 do end
end
