-- expect: too_many_effects
function handle(event, ctx)
  while true do mqtt.publish('a/b', 'x') end
end
