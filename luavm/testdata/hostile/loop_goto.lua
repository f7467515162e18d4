-- expect: budget
-- A backward goto: no loop statement at all.
function handle(event, ctx)
  ::top::
  goto top
end
