-- expect: memory
-- max_alloc_mib: 8
-- Parsing a pattern allocates hundreds of bytes per byte of pattern (a
-- 15 MB pattern, gigabytes): the parse must fit under the memory cap.
function handle(event, ctx)
  return string.match("", ("a"):rep(100000))
end
