-- expect: memory
-- mem_key_churn inside pcall, retried: the breach stays breached.
function handle(event, ctx)
  local t, i = {}, 0
  for _ = 1, 100 do
    pcall(function()
      while true do i = i + 1; t[i + 0.5] = true; t[i + 0.5] = nil end
    end)
  end
end
