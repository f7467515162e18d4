-- expect: memory
-- error: 250000 more bytes
-- The marks of json.array stay charged when the tables are measured again
-- (every 1024 steps and more): 1000 marked tables (360 KB with their
-- marks) leave no room for a 250 KB string after a long loop.
function handle(event, ctx)
  local ts = {}
  for i = 1, 1000 do ts[i] = json.array({}) end
  local n = 0
  for i = 1, 20000 do n = n + i end
  return ("x"):rep(250000)
end
