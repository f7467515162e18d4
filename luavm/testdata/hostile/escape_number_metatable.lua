-- expect: error
-- gopher-lua lets setmetatable change the metatable shared by all numbers
-- (or functions, booleans): that would leak into later invocations.
function handle(event, ctx)
  setmetatable(0, {__index = function() return 'pwned' end})
  return {x = (1).x}
end
