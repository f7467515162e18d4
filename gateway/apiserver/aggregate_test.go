package apiserver_test

import (
	"encoding/json"
	"testing"
)

// An aggregate whose range holds more than 100,000 buckets is refused up
// front, even with no record in it.
func TestAggregateBucketCap(t *testing.T) {
	e := startDaemon(t, daemonConfig(t.TempDir(), ""))
	st := e.expectStatus(400, "buckets", "GET",
		"/v1/records:aggregate?field=x&bucket=0.001s&from=2026-01-01T00:00:00Z&to=2026-01-02T00:00:00Z", readToken, nil)
	if st.Code != 3 {
		t.Fatalf("code %d, want INVALID_ARGUMENT", st.Code)
	}
	// Within the cap: 100,000 buckets of 1ms.
	e.mustCall(200, "GET", "/v1/records:aggregate?field=x&bucket=0.001s&from=2026-01-01T00:00:00Z&to=2026-01-01T00:01:40Z", readToken, nil, nil)
}

// The mean of two records of 1e308 is 1e308, not an overflow: the store
// summed the values before dividing, and the sum was +Inf.
func TestAggregateMeanOfHugeValues(t *testing.T) {
	e := startDaemon(t, daemonConfig(t.TempDir(), ""))
	e.mustCall(200, "POST", "/v1/functions", adminToken, obj{"name": "big",
		"source": `function handle(event, ctx) return {v = 1e308} end`}, nil)
	for i := 0; i < 2; i++ {
		e.mustCall(200, "POST", "/v1/functions/big:invoke", adminToken, obj{"dry_run": false}, nil)
	}
	code, b := e.call("GET", "/v1/records:aggregate?stream=big&field=v", readToken, nil)
	var out obj
	if err := json.Unmarshal(b, &out); err != nil {
		t.Fatalf("%d %s: %v", code, b, err)
	}
	bs, _ := out["buckets"].([]any)
	if code != 200 || len(bs) != 1 {
		t.Fatalf("status %d, %d buckets: %s", code, len(bs), b)
	}
	if m, ok := field(bs[0], "mean").(float64); !ok || m != 1e308 {
		t.Fatalf("mean %v (%T), want 1e308: %s", field(bs[0], "mean"), field(bs[0], "mean"), b)
	}
}
