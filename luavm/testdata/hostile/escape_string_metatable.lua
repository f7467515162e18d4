-- expect: error
-- The string metatable is hidden: getmetatable returns false.
function handle(event, ctx)
  local mt = getmetatable('')
  return mt.__index.dump
end
