-- expect: budget
function handle(event, ctx)
  repeat local x = 1 until false
end
