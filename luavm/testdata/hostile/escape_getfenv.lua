-- expect: error
function handle(event, ctx)
  return getfenv(print).os
end
