-- expect: memory
-- Each string is small and shared; the joined result is not.
function handle(event, ctx)
  local s, t = string.rep('x', 10000), {}
  for i = 1, 1000 do t[i] = s end
  return table.concat(t, ',')
end
