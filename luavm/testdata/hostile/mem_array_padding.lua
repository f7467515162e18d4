-- expect: memory
-- gopher-lua pads a table's array up to an integer key: one instruction
-- would allocate a gigabyte.
function handle(event, ctx)
  local t = {}
  t[67108863] = true
end
