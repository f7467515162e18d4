-- expect: error
-- gopher-lua#331: a fuzz-found panic in the error position lookup.
function handle(event, ctx)
  return select(0)(select(1/9))
end
