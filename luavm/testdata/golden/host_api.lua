-- Every host module once: event (HTTP), ctx, log, time, encodings, crypto,
-- effects.
function handle(event, ctx)
  log.debug("debug line")
  log.info("hello", {device = event.device, n = 1})
  log.warn("careful")
  log.error("bad", {code = 500})
  print("printed", 1, true)
  local now = time.now_ms()
  mqtt.publish("devices/" .. event.device .. "/cmd", {fan = "on"}, {qos = 1, retain = true})
  mqtt.publish("plain/topic", "raw payload")
  emit("readings", {device = event.device, v = 1})
  emit("notes", "a string record")
  return {
    method = event.method, path = event.path, query_q = event.query.q,
    header = event.headers["content-type"], body = event.body,
    trigger = event.trigger, id = event.id, ts = event.ts, qos = event.qos, topic = event.topic,
    ctx_function = ctx["function"], ctx_version = ctx.version,
    has_invocation_id = type(ctx.invocation_id) == "string" and #ctx.invocation_id > 0,
    deadline_after_now = ctx.deadline_ms >= now,
    config_threshold = ctx.config.threshold, config_list = ctx.config.list,
    config_private = (function() local old = ctx.config.threshold; ctx.config.threshold = 1; return old end)(),
    config_count = #ctx.config.list,
    b64 = base64.encode("hello world"), unb64 = base64.decode("aGVsbG8gd29ybGQ="),
    hex = hex.encode("\1\2\255"), unhex = hex.decode("414243"),
    sha = crypto.sha256("abc"), hmac = crypto.hmac_sha256("key", "The quick brown fox jumps over the lazy dog"),
    time_is_number = type(now) == "number" and now > 1700000000000,
  }
end
