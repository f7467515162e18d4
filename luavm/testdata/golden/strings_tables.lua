-- The string and table libraries through the sandbox wrappers.
function handle(event, ctx)
  local s = event.payload
  local words = {}
  for w in s:gmatch("%a+") do words[#words + 1] = w end
  table.sort(words)
  local sub, n = s:gsub("(%a+)", "<%1>")
  local f1, f2 = s:find("fox")
  local cap = s:match("(%a+) (%a+)$")
  local t = {5, 3, 9}
  table.insert(t, 1)
  table.remove(t, 1)
  return {
    words = table.concat(words, ","), gsub = sub, n = n, find = {f1, f2},
    plain = {s:find(" ", 1, true)}, no_plain = s:find(".", 1, true) == nil, match = cap,
    rep = ("ab"):rep(3), fmt = string.format("%5.2f|%-4d|%s|%q", 3.14159, 42, "x", "a\"b"),
    upper = s:upper(), byte = {s:byte(1, 3)}, char = string.char(72, 105),
    len = #s, rev = ("abc"):reverse(), t = t, maxn = table.maxn(t),
    unpack = {unpack({1, 2, 3})}, math = {math.floor(2.7), math.max(1, 5), math.abs(-2)},
    gsub_fn = (s:gsub("%a+", function(w) return #w end)),
    gsub_tbl = (("$a $b"):gsub("%$(%a)", {a = "A"})),
  }
end
