-- expect: effect_too_large
function handle(event, ctx)
  mqtt.publish('a/b', string.rep('x', 300 * 1024))
end
