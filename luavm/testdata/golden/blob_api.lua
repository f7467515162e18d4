-- blob.read in chunks, blob.write and blob.delete (effects), and a missing
-- blob caught with pcall.
function handle(event, ctx)
  local p = json.decode(event.payload)
  local parts, off = {}, 0
  while true do
    local chunk, size = blob.read(p.bucket, p.name, off, 4)
    if #chunk == 0 then break end
    parts[#parts + 1] = chunk
    off = off + #chunk
  end
  local text = table.concat(parts)
  blob.write(p.bucket, "derived/" .. p.name, string.upper(text), "text/plain")
  blob.delete(p.bucket, "old.txt")
  local ok, err = pcall(blob.read, p.bucket, "missing.txt", 0, 10)
  emit("blob_summaries", {name = p.name, size = off, chunks = #parts})
  return {text = text, missing_ok = ok, missing_err = tostring(err)}
end
