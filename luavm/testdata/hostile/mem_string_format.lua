-- expect: memory
function handle(event, ctx)
  local s = 'x'
  while true do s = string.format('%s%s', s, s) end
end
