-- expect: error
-- Widths over two digits are refused, as in Lua 5.1.
function handle(event, ctx)
  return string.format('%99999d', 1)
end
