package luavm

import (
	"testing"
)

// The pattern matcher's work counter (instance.pmb) is per instance, not per
// invocation: work below one charging period (1024 matcher operations) is
// carried into the next invocation on the same instance, so the same
// invocation costs different steps depending on what ran before on the
// instance (docs: "the same invocation always costs the same steps").
func TestPatternStepsCarryAcrossInvocations(t *testing.T) {
	rt := newTestRuntime(t)
	deploy(t, rt, "pat", `function handle(e)
  local s = ("a"):rep(600)
  local m = s:match("(b)")
  return {m = m}
end`, func(s *Spec) { s.MaxConcurrency = 1 })
	var steps []int64
	for i := 0; i < 4; i++ {
		res, err := invoke(t, rt, "pat", nil)
		if err != nil {
			t.Fatal(err)
		}
		steps = append(steps, res.Cost.Steps)
	}
	if st, _ := rt.Stats("pat"); st.ColdStarts != 1 {
		t.Fatalf("want one instance reused: %+v", st)
	}
	for i := 1; i < len(steps); i++ {
		if steps[i] != steps[0] {
			t.Fatalf("same invocation on a reused instance, different steps: %v", steps)
		}
	}
}
