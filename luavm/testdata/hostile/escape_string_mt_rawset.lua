-- expect: error
-- The library tables are read-only, also through rawset.
function handle(event, ctx)
  rawset(string, 'rep', function() return 'pwned' end)
end
