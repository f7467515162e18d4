-- expect: result_too_large
-- max_alloc_mib: 2
-- The result's encoder stops at the result limit (256 KB) as its buffer
-- grows: a 400 KB string of control characters escapes to 2.4 MB, which
-- was written in full before the limit was checked.
function handle(event, ctx)
  return {("\1"):rep(400000)}
end
