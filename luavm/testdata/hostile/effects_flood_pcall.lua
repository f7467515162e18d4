-- expect: too_many_effects
function handle(event, ctx)
  while true do pcall(emit, 's', {1}) end
end
