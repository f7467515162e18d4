-- expect: memory
-- Through the shared string metatable.
function handle(event, ctx)
  local s = ('xy'):rep(2^40)
end
