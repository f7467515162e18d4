-- The reference transform: Celsius to Fahrenheit, and a fan command back to
-- the device when it is hot.
function handle(event, ctx)
  local r = json.decode(event.payload)
  if r.temp == nil then return nil end
  r.temp_f = r.temp * 1.8 + 32
  if r.temp > 80 then mqtt.publish("devices/" .. event.device .. "/cmd", json.encode({fan = "on"})) end
  return r
end
