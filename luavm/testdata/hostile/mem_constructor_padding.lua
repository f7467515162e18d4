-- expect: memory
function handle(event, ctx)
  return {[60000000] = 1}
end
