-- expect: error
function handle(event, ctx)
  return loadstring('return os')()
end
