-- expect: error
-- max_alloc_mib: 4
-- No implicit `arg` table in vararg functions: gopher-lua built one per
-- call, holding every extra argument, outside the accounting (1,000 calls
-- with 500 arguments held 1,000 tables of 500 slots). `arg` is nil here.
local function f(...) return arg end
function handle(event, ctx)
  local src = {}
  for i = 1, 500 do src[i] = i end
  local keep = {}
  for i = 1, 1000 do keep[i] = f(unpack(src)) end
  return #keep[1]
end
