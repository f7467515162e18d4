-- expect: call_depth
-- __index recursing through itself.
function handle(event, ctx)
  local t
  t = setmetatable({}, {__index = function(_, k) return t[k .. 'x'] end})
  return {v = t.x}
end
