-- expect: budget
-- Back-references compare whole captures at every position.
function handle(event, ctx)
  local s = string.rep('a', 10000)
  return {s:find('(a*)%1b')}
end
