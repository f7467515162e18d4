-- expect: memory
-- max_alloc_mib: 8
-- The fresh global table of the invocation is accounted like any other.
function handle(event, ctx)
  for i = 1, 1e9 do _G[i + 0.5] = true end
end
