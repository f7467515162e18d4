-- expect: budget
-- max_alloc_mib: 256
-- A json.encode that fails is charged for the output written up to the
-- failure.
function handle(event, ctx)
  local t = {("x"):rep(10000), print}
  while true do pcall(json.encode, t) end
end
