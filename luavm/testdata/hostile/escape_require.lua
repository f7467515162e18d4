-- expect: error
function handle(event, ctx)
  return require('os')
end
