-- expect: error
-- Coroutines are not provided by the sandbox: this fails with a plain error.
function handle(event, ctx)
  local co = coroutine.wrap(function() while true do coroutine.yield() end end)
  while true do co() end
end
