-- json: objects vs arrays, null, integers vs floats, nesting, escapes,
-- round trips and clear errors.
function handle(event, ctx)
  local v = json.decode(event.payload)
  local ok, err = pcall(json.decode, '{"a": }')
  local ok2, err2 = pcall(json.encode, {f = print})
  return {
    int = v.int, float = v.float, neg = v.neg, big = v.big, exp = v.exp,
    is_null = v.nothing == json.null,
    empty_array = v.empty_array, empty_object = v.empty_object,
    list = v.list, nested = v.nested, text = v.text,
    reencoded = json.encode(v),
    marked = json.encode(json.array({})),
    mixed = json.encode({1, 2, x = 3}),
    sparse = json.encode({[1] = "a", [3] = "c"}),
    decode_error = err, encode_error = err2,
    nan_error = select(2, pcall(json.encode, 0/0)),
    same_name_error = select(2, pcall(json.encode, {[5] = 1, ["5"] = 2})),
  }
end
