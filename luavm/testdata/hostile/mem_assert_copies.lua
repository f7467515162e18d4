-- expect: memory
-- max_alloc_mib: 8
-- A failed assert(v, s) raises a copy of s, like error(s).
function handle(event, ctx)
  local s = ("x"):rep(100000)
  local k = {}
  for i = 1, 200 do k[i] = select(2, pcall(assert, false, s)) end
  return #k
end
