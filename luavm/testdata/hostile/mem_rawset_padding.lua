-- expect: memory
function handle(event, ctx)
  return rawset({}, 60000000, 1)
end
