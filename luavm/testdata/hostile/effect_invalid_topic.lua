-- expect: error
-- error: not valid UTF-8
-- A topic the broker refuses (not UTF-8, over 65,535 bytes) held the
-- gateway's publish outbox for every function.
function handle(event, ctx)
  local ok, err = pcall(mqtt.publish, ("a"):rep(65536), "x")
  assert(not ok and err:find("over the MQTT limit"), tostring(err))
  mqtt.publish("devices/\255/cmd", "x")
end
