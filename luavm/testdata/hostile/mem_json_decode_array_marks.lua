-- expect: memory
-- A decoded array is marked as an array (json.array): the mark is charged
-- like a table entry. 1500 empty arrays fit under the 512 KB cap only if
-- the marks are free.
function handle(event, ctx)
  local t = json.decode("[" .. ("[],"):rep(1499) .. "[]]")
end
