package apiserver_test

import "testing"

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
