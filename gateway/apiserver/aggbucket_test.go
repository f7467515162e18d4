package apiserver_test

import (
	"encoding/json"
	"testing"
)

// An aggregate's bucket that is not a whole number of milliseconds is
// refused (400). It was cut to whole milliseconds without a word: 0.0015s
// gave 1 ms buckets, each labelled as if it were of the requested width.
func TestAggregateBucketNotWholeMillisecond(t *testing.T) {
	e := startDaemon(t, daemonConfig(t.TempDir(), ""))
	e.mustCall(200, "POST", "/v1/functions", adminToken, obj{"name": "agg",
		"source": `function handle(event, ctx) return {v = 1} end`}, nil)
	// 2026-01-01T00:00:00Z is a multiple of 1.5 ms since the epoch: both
	// records are in the bucket [.000, .0015).
	for _, ts := range []string{"2026-01-01T00:00:00.000Z", "2026-01-01T00:00:00.001Z"} {
		e.mustCall(200, "POST", "/v1/functions/agg:invoke", adminToken, obj{"dry_run": false, "event": obj{"time": ts}}, nil)
	}
	recs := e.records("stream=agg")
	if len(recs) != 2 {
		t.Fatalf("%d records", len(recs))
	}
	t.Logf("event times: %v, %v", field(recs[0], "event_time"), field(recs[1], "event_time"))
	code, b := e.call("GET", "/v1/records:aggregate?stream=agg&field=v&bucket=0.0015s", readToken, nil)
	t.Logf("aggregate, bucket 1.5ms: %d %s", code, b)
	var out obj
	if err := json.Unmarshal(b, &out); err != nil {
		t.Fatal(err)
	}
	bs, _ := out["buckets"].([]any)
	if code == 200 && (len(bs) != 1 || field(bs[0], "count") != "2") {
		t.Fatalf("bucket 0.0015s over two records 1 ms apart in one 1.5 ms bucket: %d buckets %v (want one of count 2, or a 400)", len(bs), bs)
	}
}
