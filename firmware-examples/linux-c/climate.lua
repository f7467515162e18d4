-- climate: the function paired with moongate-device (linux-c).
--
-- Trigger: devices/{device}/telemetry, payload
--   {"seq": 12, "boot": 4711, "ts": 1764115200123, "temp": 31.5, "hum": 44.0}
-- It checks the reading, stores it as a record in the "climate" stream,
-- and switches the device's relay with hysteresis: on at or above
-- ctx.config.high degrees, off at or below ctx.config.low, and a command
-- on devices/{device}/cmd only when the state changes (or an "on" again
-- when the device restarted, since it forgot):
--   {"cmd":"relay","on":true}
-- A reading already seen (same boot and seq as the last one, sent again by
-- the device after a lost acknowledgement) is not stored twice. A bad payload raises a
-- clear error: the gateway retries it and then keeps it in the dead letters.

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
  local seq, boot, temp, hum, ts = r.seq, r.boot, r.temp, r.hum, r.ts
  if hum == json.null then hum = nil end
  if ts == json.null then ts = nil end
  check(number(seq) and seq >= 1 and seq % 1 == 0, "seq must be a positive integer")
  check(boot == nil or number(boot), "boot must be a number")
  check(number(temp) and temp >= -60 and temp <= 150, "temp must be degrees Celsius in [-60, 150]")
  check(hum == nil or (number(hum) and hum >= 0 and hum <= 100), "hum must be a percentage in [0, 100]")
  check(ts == nil or (number(ts) and ts >= 0), "ts must be milliseconds since the epoch")

  local dev = event.device
  local last = state.get("seq:" .. dev)
  local same_boot = boot == state.get("boot:" .. dev)
  if same_boot and seq == last then
    log.info("duplicate reading ignored", {device = dev, seq = seq})
    return nil
  end
  if same_boot and last ~= nil and seq > last + 1 then
    log.warn("readings missing", {device = dev, from = last + 1, to = seq - 1})
  end
  state.set("seq:" .. dev, seq)
  if not same_boot then state.set("boot:" .. dev, boot) end

  local on = state.get("relay:" .. dev) == true
  local want = on
  if temp >= ctx.config.high then want = true elseif temp <= ctx.config.low then want = false end
  -- A restarted device lost its relay state: repeat an "on".
  if want ~= on or (not same_boot and want) then
    state.set("relay:" .. dev, want)
    mqtt.publish("devices/" .. dev .. "/cmd", {cmd = "relay", on = want}, {qos = 1})
  end
  return {device = dev, seq = seq, boot = boot, ts = ts, temp = temp, hum = hum, relay = want, received = event.ts}
end
