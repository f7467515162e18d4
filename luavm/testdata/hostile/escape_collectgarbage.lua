-- expect: error
function handle(event, ctx)
  collectgarbage('collect')
end
