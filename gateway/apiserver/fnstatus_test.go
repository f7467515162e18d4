package apiserver_test

import (
	"net/http"
	"strings"
	"testing"
)

// A commit refused for lack of storage (a quota that is full, here the
// records quota with reject_new; the disk below its reserve the same) is
// 507 on every route (docs/api.md, Errors: "507 RESOURCE_EXHAUSTED a write
// refused because the store's disk is below its reserve or a quota is
// full ... retry once space is freed"; 429 would tell the client to slow
// down). The REST invoke answers 507 with the STORAGE_FULL detail; an
// HTTP-triggered function making the same refused commit answers 429
// without it.
func TestHTTPFunctionStorageFullStatus(t *testing.T) {
	cfg := quotaConfig(t.TempDir(), "records: {max_bytes: 2KiB, policy: reject_new}")
	e := startDaemon(t, cfg)
	src := `function handle(event, ctx)
  emit("r", {pad = string.rep("x", 900)})
  return "stored"
end
`
	e.mustCall(200, "POST", "/v1/functions", adminToken, obj{"name": "filler", "source": src,
		"triggers": []obj{{"http": obj{"methods": []string{"POST"}}}}}, nil)
	// Fill the records quota.
	var code int
	var b []byte
	for i := 0; i < 10; i++ {
		if code, b = e.call("POST", "/v1/functions/filler:invoke", adminToken, obj{"dry_run": false}); code != 200 {
			break
		}
	}
	t.Logf("REST invoke: %d %s", code, b)
	if code != 507 {
		t.Fatalf("REST invoke: %d, want 507: %s", code, b)
	}
	// The same full quota through /fn (a call may still fit: an HTTP
	// event's record is a little smaller).
	var resp *http.Response
	var body []byte
	for i := 0; i < 10; i++ {
		if resp, body = e.fnCall("POST", "/fn/filler/x", readToken, "hi"); resp.StatusCode != 200 {
			break
		}
	}
	t.Logf("/fn: %d %s", resp.StatusCode, body)
	if resp.StatusCode != 507 || !strings.Contains(string(body), "STORAGE_FULL") {
		t.Fatalf("/fn with a commit refused by a full quota: %d (Retry-After %q), want 507 with STORAGE_FULL as on REST: %s", resp.StatusCode, resp.Header.Get("Retry-After"), body)
	}
}
