package apiserver_test

import (
	"strings"
	"testing"
)

// TestStateQuotaIsNotStorageFull: a state write over the function's
// state quota can never succeed by waiting (only deletes of that
// function's state make room; store.IsPermanent says so), yet the API
// answers it like a full disk: 507 with reason STORAGE_FULL, which
// docs/api.md tells clients to retry "once space is freed (sync drains,
// retention runs)".
func TestStateQuotaIsNotStorageFull(t *testing.T) {
	e := startDaemon(t, strings.Replace(daemonConfig(t.TempDir(), ""), "store: {durability: interval}", "store: {durability: interval, quotas: {state: {max_bytes: 1KiB}}}", 1))
	code, body := e.call("PUT", "/v1/functions/f/state/big", adminToken, `"`+strings.Repeat("x", 2000)+`"`)
	if code == 507 || strings.Contains(string(body), "STORAGE_FULL") {
		t.Fatalf("state over its quota answered %d: %s", code, body)
	}
}
