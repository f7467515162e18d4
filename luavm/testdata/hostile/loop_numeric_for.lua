-- expect: budget
function handle(event, ctx)
  for i = 1, math.huge do end
end
