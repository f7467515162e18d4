-- expect: budget
-- A plain infinite loop.
function handle(event, ctx)
  while true do end
end
