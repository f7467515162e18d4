-- expect: memory
-- Every read fails (no blob store here, huge length, negative offset):
-- pcall swallows the errors, but each message it catches is charged like
-- a string built, so the memory cap ends the loop (before the step budget).
function handle(event, ctx)
  while true do
    pcall(blob.read, "photos", "x", 0, 1e18)
    pcall(blob.read, "photos", "x", -1, 10)
  end
end
