-- expect: error
function handle(event, ctx)
  setfenv(1, {})
end
