-- expect: error
function handle(event, ctx)
  return io.open('/etc/passwd'):read('*a')
end
