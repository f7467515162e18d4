-- expect: error
function handle(event, ctx)
  return dofile('/etc/passwd')
end
