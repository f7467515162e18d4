-- expect: memory
-- Each key is set and cleared at once: the table never has more than one
-- entry, but gopher-lua keeps every key it was given (for next()).
function handle(event, ctx)
  local t, i = {}, 0
  while true do i = i + 1; t[i + 0.5] = true; t[i + 0.5] = nil end
end
