-- expect: memory
function handle(event, ctx)
  local s = string.rep('a', 1000)
  return (s:gsub('a', string.rep('b', 10000)))
end
