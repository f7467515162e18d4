-- expect: budget
-- Logging forever: lines beyond the cap are dropped, the budget ends it.
function handle(event, ctx)
  while true do log.info('spam') end
end
