-- expect: error
function handle(event, ctx)
  string.upper = function() return 'pwned' end
end
