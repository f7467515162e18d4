-- expect: budget
-- Polynomial backtracking inside the pattern matcher (a Go builtin).
function handle(event, ctx)
  return {string.rep('a', 30000):find('.-.-.-.-.-b')}
end
