-- A plain Lua error: the error and the logs written before it are reported.
function handle(event, ctx)
  log.info("about to fail")
  mqtt.publish("x/y", "never sent")
  local t = nil
  return t.field
end
