-- Counts its own runs in state and publishes a heartbeat.
function handle(event, ctx)
  local n = state.incr("beats", 1)
  mqtt.publish("gateway/heartbeat", json.encode({n = n, at = time.now_ms()}))
  return {n = n}
end
