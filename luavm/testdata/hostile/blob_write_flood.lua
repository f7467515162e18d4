-- expect: too_many_effects
function handle(event, ctx)
  for i = 1, 100000 do
    blob.write("photos", "x" .. i, "data")
  end
end
