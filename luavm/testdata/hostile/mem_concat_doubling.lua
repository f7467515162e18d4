-- expect: memory
function handle(event, ctx)
  local s = 'x'
  while true do s = s .. s end
end
