-- expect: too_many_effects
function handle(event, ctx)
  for i = 1, 1000 do state.set('k' .. i, i) end
end
