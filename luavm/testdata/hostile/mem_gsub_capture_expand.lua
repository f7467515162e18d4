-- expect: memory
-- max_alloc_mib: 4
-- %0 copies the whole match: 500 of them on a match of 10,000 bytes stand
-- for 5 MB, refused before the replacement is built (("%0"):rep(5000) on
-- 4 MB requested 20 GB).
function handle(event, ctx)
  local s = ("a"):rep(10000)
  return (s:gsub("^.*", ("%0"):rep(500)))
end
