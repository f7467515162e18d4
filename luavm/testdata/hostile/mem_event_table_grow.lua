-- expect: memory
-- max_alloc_mib: 8
-- The event table is the host's, not made by a constructor: what a
-- function adds to it is accounted all the same.
function handle(event, ctx)
  for i = 1, 1e9 do event[i] = i end
end
