-- expect: error
-- error: invalid option '%.['
-- max_alloc_mib: 4
-- No format string reaches Go's fmt unchecked: its argument indexes let a
-- precision of 99999 digits past the two-digit check (a gigabyte with
-- ("%.[1]999999f"):rep(1000)).
function handle(event, ctx)
  return string.format(("%.[1]99999f"):rep(10), 1)
end
