-- expect: budget
-- The xpcall handler itself loops.
function handle(event, ctx)
  xpcall(function() error('x') end, function(e) while true do end end)
  return {}
end
