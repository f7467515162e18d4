-- A string return value is passed through raw; globals written by one
-- invocation do not survive to the next.
counter = (counter or 0) + 1
function handle(event, ctx)
  seen = (seen or 0) + 1
  return "counter=" .. counter .. " seen=" .. seen .. " payload=" .. event.payload:upper()
end
