-- expect: memory
-- Closures are accounted when created.
function handle(event, ctx)
  local keep = {}
  for i = 1, 1e7 do keep[i] = function() return i end end
end
