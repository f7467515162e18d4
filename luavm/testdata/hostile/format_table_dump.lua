-- expect: error
-- error: invalid option '%#v'
-- max_alloc_mib: 4
-- Go's fmt printed a table given to %d (or %v) with all its contents,
-- uncharged.
function handle(event, ctx)
  local t = {}
  for i = 1, 1000 do t[i] = ("x"):rep(100) end
  local ok, err = pcall(string.format, "%d", t)
  assert(not ok and err:find("number expected"), "a table formatted as a number")
  return string.format("%#v", t)
end
