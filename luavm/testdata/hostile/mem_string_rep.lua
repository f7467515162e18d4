-- expect: memory
function handle(event, ctx)
  return string.rep('x', 1e9)
end
