-- climate: the function paired with the ESP32 sketch (moongate_climate).
--
-- Trigger: devices/{device}/telemetry, payload
--   {"seq":12,"boot":4711,"temp":31.50,"hum":44.00}
-- The sketch publishes at QoS 0 (PubSubClient cannot do QoS 1), so readings
-- can be lost without the device knowing: this function counts the gaps in
-- seq per boot (state "lost:DEVICE", and "lost" in each record). It checks
-- the reading, stores it in the "climate" stream, and switches the LED with
-- hysteresis (on at or above ctx.config.high degrees, off at or below
-- ctx.config.low), sending {"cmd":"led","on":...} on devices/{device}/cmd
-- only when the state changes, and again after the device rebooted.
-- Bad payloads raise a clear error (retried, then dead-lettered).

local function check(ok, msg)
  if not ok then error("climate: " .. msg, 0) end
end

local function number(v)
  return type(v) == "number" and v == v and v > -1e15 and v < 1e15
end

function handle(event, ctx)
  local ok, r = pcall(json.decode, event.payload)
  check(ok, "payload is not JSON: " .. tostring(r))
  check(type(r) == "table" and not r[1], "payload must be a JSON object")
  local seq, boot, temp, hum = r.seq, r.boot, r.temp, r.hum
  if hum == json.null then hum = nil end
  check(number(seq) and seq >= 1 and seq % 1 == 0, "seq must be a positive integer")
  check(number(boot), "boot must be a number")
  check(number(temp) and temp >= -60 and temp <= 150, "temp must be degrees Celsius in [-60, 150]")
  check(hum == nil or (number(hum) and hum >= 0 and hum <= 100), "hum must be a percentage in [0, 100]")

  local dev = event.device
  local rebooted = state.get("boot:" .. dev) ~= boot
  local last = state.get("seq:" .. dev)
  local lost = 0
  if rebooted then
    state.set("boot:" .. dev, boot)
    lost = seq - 1
  elseif last ~= nil and seq <= last then
    log.info("old or repeated reading ignored", {device = dev, seq = seq, last = last})
    return nil
  elseif last ~= nil then
    lost = seq - last - 1
  end
  state.set("seq:" .. dev, seq)
  if lost > 0 then
    state.incr("lost:" .. dev, lost)
    log.warn("readings lost", {device = dev, before = seq, count = lost})
  end

  local on = state.get("led:" .. dev) == true
  local want = on
  if temp >= ctx.config.high then want = true elseif temp <= ctx.config.low then want = false end
  if want ~= on or (rebooted and want) then
    state.set("led:" .. dev, want)
    mqtt.publish("devices/" .. dev .. "/cmd", {cmd = "led", on = want}, {qos = 1})
  end
  return {device = dev, seq = seq, boot = boot, temp = temp, hum = hum, led = want, lost = lost, received = event.ts}
end
