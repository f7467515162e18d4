-- expect: effect_too_large
function handle(event, ctx)
  blob.write("photos", "big", string.rep("x", 300 * 1024))
end
