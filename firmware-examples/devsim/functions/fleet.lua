-- fleet: the function paired with the fleet simulator (moongate-devsim).
--
-- Trigger: devices/{device}/telemetry with the simulator's payload
--   {"seq": 12, "ts": 1764115200123, "temp": 21.5, "hum": 44.0}
-- It stores one record per reading in the "fleet" stream with the device's
-- sequence number (so a test or a benchmark can check that every
-- acknowledged reading was stored exactly once) and the latency from the
-- device's send time to the gateway's receive time (ms, both clocks on one
-- machine in a benchmark). Every ctx.config.cmd_every-th reading it sends a
-- command back: {"cmd":"ping","seq":N} on devices/{device}/cmd.
function handle(event, ctx)
  local ok, r = pcall(json.decode, event.payload)
  if not ok then error("fleet: payload is not JSON: " .. tostring(r), 0) end
  if type(r) ~= "table" or type(r.seq) ~= "number" or type(r.ts) ~= "number" then
    error("fleet: payload needs numbers seq and ts", 0)
  end
  local every = ctx.config.cmd_every
  if every > 0 and r.seq % every == 0 then
    mqtt.publish("devices/" .. event.device .. "/cmd", {cmd = "ping", seq = r.seq}, {qos = 1})
  end
  return {seq = r.seq, ts = r.ts, latency_ms = event.ts - r.ts}
end
