-- expect: error
function handle(event, ctx)
  return os.execute('id')
end
