package apiserver_test

import (
	"net/url"
	"strings"
	"testing"
)

// A state key goes through REST exactly as sent: the path segment is
// percent-decoded once (by the REST mux), never twice. A key holding a
// literal "%2F" is not the key with "/".
func TestStateKeyEscaping(t *testing.T) {
	e := startDaemon(t, daemonConfig(t.TempDir(), ""))
	keys := []string{
		"u%2Fv",      // literal %2F: not u/v
		"u/v",        // a slash, sent as %2F
		"%",          // a lone percent sign
		"100%25",     // a literal %25
		"a%zz",       // not an escape at all
		"a b",        // space
		"temp/µ°C/ü", // non-ASCII and slashes
		"日本語 %2f/x",  // mixed
		"+&=?#;:@",   // reserved characters
		".",          // dot segments, sent as %2E (docs/api.md)
		"..",
		"a/../b",
	}
	path := func(k string) string {
		if k == "." || k == ".." {
			return "/v1/functions/kv/state/" + strings.Repeat("%2E", len(k))
		}
		return "/v1/functions/kv/state/" + url.PathEscape(k)
	}
	for i, k := range keys {
		var st map[string]any
		e.mustCall(200, "PUT", path(k), adminToken, map[string]any{"i": i}, &st)
		if st["key"] != k {
			t.Fatalf("PUT %q answered key %q", k, st["key"])
		}
	}
	for i, k := range keys {
		var st map[string]any
		e.mustCall(200, "GET", path(k), readToken, nil, &st)
		if st["key"] != k || field(st, "value.i") != float64(i) {
			t.Fatalf("GET %q: %v, want value %d", k, st, i)
		}
	}
	// The store holds exactly these keys.
	var list struct {
		Entries []struct {
			Key string `json:"key"`
		} `json:"entries"`
	}
	e.mustCall(200, "GET", "/v1/functions/kv/state", readToken, nil, &list)
	got := map[string]bool{}
	for _, x := range list.Entries {
		got[x.Key] = true
	}
	for _, k := range keys {
		if !got[k] {
			t.Errorf("key %q not stored (stored: %v)", k, got)
		}
	}
	if len(got) != len(keys) {
		t.Errorf("stored %d keys, want %d: %v", len(got), len(keys), got)
	}
	// Deleting u%2Fv leaves u/v alone.
	e.mustCall(200, "DELETE", path("u%2Fv"), adminToken, nil, nil)
	e.expectStatus(404, "state key", "GET", path("u%2Fv"), readToken, nil)
	e.mustCall(200, "GET", path("u/v"), readToken, nil, nil)
	for _, k := range keys[1:] {
		e.mustCall(200, "DELETE", path(k), adminToken, nil, nil)
		e.expectStatus(404, "state key", "GET", path(k), readToken, nil)
	}
}
