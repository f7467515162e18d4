-- expect: error
function handle(event, ctx)
  setmetatable(print, {__index = {}})
end
