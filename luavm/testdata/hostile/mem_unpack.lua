-- expect: error
function handle(event, ctx)
  return unpack({}, 1, 1e8)
end
