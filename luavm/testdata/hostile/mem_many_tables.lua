-- expect: memory
function handle(event, ctx)
  local keep = {}
  for i = 1, 1e7 do keep[i] = {i} end
end
