-- expect: error
function handle(event, ctx)
  return newproxy(true)
end
