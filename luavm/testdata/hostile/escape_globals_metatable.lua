-- expect: error
function handle(event, ctx)
  setmetatable(_G, nil)
end
