-- expect: budget
-- max_alloc_mib: 16
-- gmatch compiles its pattern once, not at every iteration (where each
-- parse of a long pattern was charged one step).
function handle(event, ctx)
  local p = ("a"):rep(20)
  local s = ("a"):rep(20 * 10000)
  while true do
    for w in s:gmatch(p) do end
  end
end
