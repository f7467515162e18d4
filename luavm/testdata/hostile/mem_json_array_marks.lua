-- expect: memory
-- error: json.array
-- A json.array mark is an entry of a map of the invocation: it is charged
-- like a table entry. 1500 marked tables fit under the 512 KB cap only if
-- the marks are free.
function handle(event, ctx)
  local ts = {}
  for i = 1, 1500 do ts[i] = {} end
  for i = 1, 1500 do json.array(ts[i]) end
end
