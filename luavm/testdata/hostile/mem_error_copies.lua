-- expect: memory
-- max_alloc_mib: 8
-- error(s) raises a copy of s with the position in front: the copies are
-- charged (pcall(error, s) in a loop held 50 times the limit).
function handle(event, ctx)
  local s = ("x"):rep(100000)
  local k = {}
  for i = 1, 200 do k[i] = select(2, pcall(error, s)) end
  return #k
end
