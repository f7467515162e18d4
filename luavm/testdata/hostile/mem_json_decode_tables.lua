-- expect: memory
-- max_alloc_mib: 4
-- json.decode charges each table before making it: a document of many
-- small tables is refused at the cap, not once built (1.3 million {} were
-- 600 MB).
function handle(event, ctx)
  return json.decode("[" .. ("{},"):rep(20000) .. "{}]")
end
