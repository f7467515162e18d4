-- expect: memory
function handle(event, ctx)
  local t = {}
  for i = 1, 200 do t[i] = string.rep('x', 1000) end
  local s = ''
  while true do s = json.encode({s, t}) end
end
