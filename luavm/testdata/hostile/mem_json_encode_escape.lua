-- expect: memory
-- error: JSON output buffer
-- max_alloc_mib: 2
-- json.encode charges its buffer as it grows: a string of 400 KB of
-- control characters (charged 400 KB) escapes to 2.4 MB, which was written
-- in full before the output was charged.
function handle(event, ctx)
  local s = ("\1"):rep(400000)
  return json.encode(s)
end
