-- expect: error
function handle(event, ctx)
  return string.dump(handle)
end
