-- expect: memory
-- Millions of empty matches.
function handle(event, ctx)
  local s = string.rep('a', 500000)
  return (s:gsub('', '--'))
end
