-- expect: memory
-- max_alloc_mib: 8
-- print copies at most a log message's worth of its arguments: it joined
-- them first (8,000 arguments of 2 MB were a 16 GB string).
function handle(event, ctx)
  local s = ("x"):rep(100000)
  local t = {}
  for i = 1, 40 do t[i] = s end
  while true do print(unpack(t)) end
end
