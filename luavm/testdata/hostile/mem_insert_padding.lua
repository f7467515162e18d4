-- expect: error
function handle(event, ctx)
  table.insert({}, 60000000, 1)
end
