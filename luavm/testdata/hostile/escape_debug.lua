-- expect: error
function handle(event, ctx)
  return debug.getregistry()
end
