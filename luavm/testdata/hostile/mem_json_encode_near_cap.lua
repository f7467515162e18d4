-- expect: memory
-- error: JSON output buffer
-- max_alloc_mib: 1
-- A function near its memory cap encodes a record under the output limit
-- (json.encode's limit is the whole cap): the buffer is refused as it
-- grows past what the cap leaves free, not once 500 KB were written.
function handle(event, ctx)
  local hold = ("x"):rep(400000)
  local s, t = ("y"):rep(5000), {}
  for i = 1, 100 do t[i] = s end
  return json.encode(t)
end
