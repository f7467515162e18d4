-- The reference transform without a temperature: returns nothing.
function handle(event, ctx)
  local r = json.decode(event.payload)
  if r.temp == nil then return nil end
  return r
end
