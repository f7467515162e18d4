package apiserver_test

import (
	"strings"
	"testing"
)

// A deploy body under api.max_body_bytes whose config is an array of small
// numbers is ~5.5 times larger as protobuf, over the in-memory
// connection's send limit: it was answered 429 (retry later, which never
// helps); it is 413, as a body over the limit is.
func TestDeployBigConfigIs413(t *testing.T) {
	e := startDaemon(t, daemonConfig(t.TempDir(), ""))
	body := `{"name":"cfg","source":"function handle(event, ctx) return nil end","config":{"a":[` +
		strings.TrimSuffix(strings.Repeat("0,", 400000), ",") + `]}}`
	if len(body) >= 1<<20 {
		t.Fatalf("body of %d bytes", len(body))
	}
	code, b := e.call("POST", "/v1/functions", adminToken, body)
	t.Logf("deploy with a %d-byte body: %d %s", len(body), code, clipBytes(b))
	if code == 429 {
		t.Fatalf("a deploy body of %d bytes (under api.max_body_bytes) answered 429 Too Many Requests: %s", len(body), clipBytes(b))
	}
}
