-- expect: result_too_large
function handle(event, ctx)
  return string.rep('x', 300 * 1024)
end
