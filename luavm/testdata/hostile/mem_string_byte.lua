-- expect: error
function handle(event, ctx)
  return string.rep('a', 100000):byte(1, -1)
end
