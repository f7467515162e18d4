-- expect: memory
function handle(event, ctx)
  local t = {}
  while true do table.insert(t, {}) end
end
