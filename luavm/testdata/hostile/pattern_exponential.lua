-- expect: budget
function handle(event, ctx)
  local n = 40
  return {(string.rep('a', n)):match(string.rep('a?', n) .. string.rep('a', n) .. 'b')}
end
