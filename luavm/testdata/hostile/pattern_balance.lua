-- expect: budget
-- %b scans to the end from every opening parenthesis: quadratic work inside
-- one matcher step, metered by the characters it scans.
function handle(event, ctx)
  return {string.rep('(', 100000):find('%b()')}
end
