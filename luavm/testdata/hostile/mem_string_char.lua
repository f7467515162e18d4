-- expect: memory
-- string.char's result is charged.
function handle(event, ctx)
  local b = {}
  for i = 1, 7999 do b[i] = 120 end
  local k = {}
  while true do k[#k + 1] = string.char(unpack(b)) end
end
