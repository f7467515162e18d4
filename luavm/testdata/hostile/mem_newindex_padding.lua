-- expect: memory
-- The write goes on to the __newindex table, whose array gets padded.
function handle(event, ctx)
  local sink = {}
  local t = setmetatable({}, {__newindex = sink})
  for i = 1, 10 do t[i] = i end
  t[60000000] = 1
end
