-- expect: memory
-- max_alloc_mib: 8
-- ctx.config is a copy the host makes per invocation; growing its hash
-- part is accounted.
function handle(event, ctx)
  local q = ctx.config
  for i = 1, 1e9 do q[i + 0.5] = true end
end
