-- expect: budget
-- Every read fails (no blob store here, huge length, negative offset):
-- pcall swallows the errors, the step budget still ends the loop.
function handle(event, ctx)
  while true do
    pcall(blob.read, "photos", "x", 0, 1e18)
    pcall(blob.read, "photos", "x", -1, 10)
  end
end
