-- expect: budget
function handle(event, ctx)
  string.rep('a', 100):gsub('.', function(c) while true do end end)
end
