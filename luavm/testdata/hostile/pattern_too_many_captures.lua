-- expect: error
-- error: too many captures
-- At most 32 captures, as in Lua 5.1: the parser recursed once per '(', and
-- 16 million of them overflowed the Go stack (a fatal error).
function handle(event, ctx)
  local p = ("("):rep(33)
  for _, call in ipairs({
    function() return string.match("", p) end,
    function() return string.gmatch("", p) end,
    function() return string.gsub("", p, "") end,
  }) do
    local ok, err = pcall(call)
    assert(not ok and err:find("too many captures"), tostring(err))
  end
  assert(string.find("", ("()"):rep(32)) == 1)
  return string.find("", ("("):rep(100))
end
