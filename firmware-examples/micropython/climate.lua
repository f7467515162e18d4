-- climate: the function paired with the MicroPython device (main.py).
--
-- Triggers:
--   devices/{device}/telemetry     {"seq":12,"boot":4711,"ts":1764115200123,"temp":31.5,"hum":44}
--   devices/{device}/events/{kind} {"boot":4711,"reset_cause":1}  (kind "boot")
-- A reading is checked, stored in the "climate" stream, and switches the
-- device's LED with hysteresis (on at or above ctx.config.high degrees, off
-- at or below ctx.config.low); a command goes to devices/{device}/cmd only
-- when the state changes: {"cmd":"led","on":true}. A reading with the boot
-- and seq of the last one (resent after a lost acknowledgement) is not
-- stored twice. A boot event is stored in the "device_events" stream and
-- repeats the LED command, since the device forgot it when it restarted.
-- Bad payloads raise a clear error (retried, then dead-lettered).

local function check(ok, msg)
  if not ok then error("climate: " .. msg, 0) end
end

local function number(v)
  return type(v) == "number" and v == v and v > -1e15 and v < 1e15
end

local function decode(payload)
  local ok, r = pcall(json.decode, payload)
  check(ok, "payload is not JSON: " .. tostring(r))
  check(type(r) == "table" and not r[1], "payload must be a JSON object")
  return r
end

local function led(dev, on)
  mqtt.publish("devices/" .. dev .. "/cmd", {cmd = "led", on = on}, {qos = 1})
end

local function on_event(event)
  local r = decode(event.payload)
  local dev = event.device
  if event.kind == "boot" then
    check(number(r.boot), "boot event needs a numeric boot id")
    state.set("boot:" .. dev, r.boot)
    state.delete("seq:" .. dev)
    if state.get("led:" .. dev) == true then led(dev, true) end
  end
  emit("device_events", {device = dev, kind = event.kind, data = r, received = event.ts})
  return nil
end

function handle(event, ctx)
  if event.kind ~= nil then return on_event(event) end
  local r = decode(event.payload)
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
  if last ~= nil and seq == last and boot == state.get("boot:" .. dev) then
    log.info("duplicate reading ignored", {device = dev, seq = seq})
    return nil
  end
  state.set("seq:" .. dev, seq)
  if boot ~= nil then state.set("boot:" .. dev, boot) end

  local on = state.get("led:" .. dev) == true
  local want = on
  if temp >= ctx.config.high then want = true elseif temp <= ctx.config.low then want = false end
  if want ~= on then
    state.set("led:" .. dev, want)
    led(dev, want)
  end
  return {device = dev, seq = seq, boot = boot, ts = ts, temp = temp, hum = hum, led = want, received = event.ts}
end
