-- expect: error
function handle(event, ctx)
  return load('return 1')()
end
