package apiserver_test

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestErrors(t *testing.T) {
	e := startDaemon(t, daemonConfig(t.TempDir(), ""))
	good := obj{"name": "f", "source": "function handle(event, ctx) return nil end", "manifest": "triggers:\n  - mqtt: a/b\n"}
	e.mustCall(200, "POST", "/v1/functions", adminToken, good, nil)

	// Invalid Lua: 400 with line and column, in the message and the details.
	bad := obj{"name": "f", "source": "function handle(event, ctx)\n  local x = = 1\nend\n", "manifest": "{}"}
	st := e.expectStatus(400, ":2:", "POST", "/v1/functions", adminToken, bad)
	if st.Code != 3 || len(st.Details) != 1 {
		t.Fatalf("compile error status: %+v", st)
	}
	var info struct {
		Type     string            `json:"@type"`
		Reason   string            `json:"reason"`
		Metadata map[string]string `json:"metadata"`
	}
	if err := json.Unmarshal(st.Details[0], &info); err != nil || info.Reason != "LUA_COMPILE_ERROR" || info.Metadata["line"] != "2" || info.Metadata["column"] == "0" || info.Metadata["column"] == "" {
		t.Fatalf("compile error detail: %s (%v)", st.Details[0], err)
	}
	// The failed deploy left version 1 running.
	var fn obj
	e.mustCall(200, "GET", "/v1/functions/f", readToken, nil, &fn)
	if fn["version"] != "1" || fn["running"] != true {
		t.Fatalf("after a failed deploy: %v", fn)
	}
	e.expectStatus(400, "handle", "POST", "/v1/functions", adminToken, obj{"name": "f", "source": "x = 1", "manifest": "{}"})
	e.expectStatus(400, "f.yaml:2: triggers[0].mqtt", "POST", "/v1/functions", adminToken, obj{"name": "f", "source": good["source"], "manifest": "triggers:\n  - mqtt: 'a/#/b'\n"})
	e.expectStatus(400, "unknown key", "POST", "/v1/functions", adminToken, obj{"name": "f", "source": good["source"], "manifest": "trigers: []\n"})
	e.expectStatus(400, "invalid function name", "POST", "/v1/functions", adminToken, obj{"name": "../x", "source": good["source"]})
	e.expectStatus(400, "not both", "POST", "/v1/functions", adminToken, obj{"name": "f", "source": good["source"], "manifest": "{}", "stream": "s"})
	e.expectStatus(400, "one of mqtt", "POST", "/v1/functions", adminToken, obj{"name": "f", "source": good["source"], "triggers": []obj{{}}})
	e.expectStatus(400, "limits.max_memory", "POST", "/v1/functions", adminToken, obj{"name": "f", "source": good["source"], "limits": obj{"max_memory_bytes": "1"}})
	e.expectStatus(400, "precompiled", "POST", "/v1/functions", adminToken, obj{"name": "f", "source": "\x1bLua", "manifest": "{}"})

	// Unknown function: 404.
	e.expectStatus(404, "nope", "GET", "/v1/functions/nope", readToken, nil)
	e.expectStatus(404, "nope", "GET", "/v1/functions/nope/versions", readToken, nil)
	e.expectStatus(404, "nope", "POST", "/v1/functions/nope:rollback", adminToken, obj{})
	e.expectStatus(404, "nope", "DELETE", "/v1/functions/nope", adminToken, nil)
	e.expectStatus(404, "nope", "POST", "/v1/functions/nope:invoke", adminToken, obj{})
	e.expectStatus(404, "no version below", "POST", "/v1/functions/f:rollback", adminToken, obj{})
	e.expectStatus(404, "version 7", "POST", "/v1/functions/f:rollback", adminToken, obj{"version": "7"})
	e.expectStatus(404, "Not Found", "GET", "/v1/nothing", readToken, nil)

	// Body too large: 413, declared or not.
	huge := obj{"name": "f", "source": strings.Repeat("-", 2<<20)}
	e.expectStatus(413, "larger than the limit", "POST", "/v1/functions", adminToken, huge)
	// Chunked, without a declared length.
	req, _ := http.NewRequest("POST", e.base+"/v1/functions", io.MultiReader(strings.NewReader(`{"name":"f","source":"`), strings.NewReader(strings.Repeat("-", 2<<20))))
	req.Header.Set("Authorization", "Bearer "+adminToken)
	resp, err := e.client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 413 || req.ContentLength != 0 || !strings.Contains(string(b), "larger than the limit") {
		t.Fatalf("chunked oversized body: %d %s", resp.StatusCode, b)
	}

	// Unknown JSON fields and query parameters: 400.
	e.expectStatus(400, "unknown field", "POST", "/v1/functions", adminToken, obj{"name": "f", "source": "", "sourcee": "x"})
	e.expectStatus(400, "unknown field", "POST", "/v1/functions/f:invoke", adminToken, obj{"event": obj{"payload": "AA==", "extra": 1}})
	e.expectStatus(400, "unknown query parameter", "GET", "/v1/records?functon=f", readToken, nil)
	// Also on routes whose request has no query fields (grpc-gateway
	// never parses their query), a stream, and a write: refused before
	// anything is done.
	for _, c := range []struct{ method, path, tok string }{
		{"GET", "/v1/functions?bogus=1", readToken},
		{"GET", "/v1/functions/f/versions?bogus=1", readToken},
		{"GET", "/v1/system?bogus=1", readToken},
		{"GET", "/v1/sync?bogus=1", readToken},
		{"GET", "/v1/functions/f/state/k?bogus=1", readToken},
		{"DELETE", "/v1/functions/f/state/k?bogus=1", adminToken},
		{"DELETE", "/v1/functions/f?bogus=1", adminToken},
		{"GET", "/v1/logs:follow?bogus=1", readToken},
		{"GET", "/v1/functions?%FF=1", readToken},
	} {
		e.expectStatus(400, "unknown query parameter", c.method, c.path, c.tok, nil)
	}
	// Routes that take the whole request from the body read no query:
	// a field named there was accepted and ignored (?dry_run=true
	// deployed; :rollback?version=1 activated the version before the
	// active one). Refused, and nothing is done.
	for _, c := range []struct{ path, body string }{
		{"/v1/functions?dry_run=true", `{"name": "dry", "source": "function handle() end", "manifest": "{}"}`},
		{"/v1/functions/dry:rollback?version=1", `{}`},
		{"/v1/functions/dry:invoke?dry_run=true", `{}`},
		{"/v1/deadletters:replay?all=true", `{}`},
	} {
		e.expectStatus(400, "reads its parameters from the body only", "POST", c.path, adminToken, c.body)
	}
	e.expectStatus(404, "", "GET", "/v1/functions/dry", readToken, nil)
	// An unauthenticated request is refused as such first.
	e.expectStatus(401, "", "GET", "/v1/system?bogus=1", "", nil)
	e.expectStatus(400, "", "POST", "/v1/functions", adminToken, "{not json")
	e.expectStatus(400, "", "GET", "/v1/records?limit=abc", readToken, nil)
	e.expectStatus(400, "limit", "GET", "/v1/records?limit=20000", readToken, nil)
	e.expectStatus(400, "cursor", "GET", "/v1/records?cursor=zzz", readToken, nil)
	e.expectStatus(400, "to is before from", "GET", "/v1/records?from=2026-01-02T00:00:00Z&to=2026-01-01T00:00:00Z", readToken, nil)
	e.expectStatus(400, "field", "GET", "/v1/records:aggregate", readToken, nil)
	e.expectStatus(400, "exactly one", "POST", "/v1/deadletters:replay", adminToken, obj{})
	e.expectStatus(400, "exactly one", "POST", "/v1/deadletters:purge", adminToken, obj{})
	e.expectStatus(400, "payload_text or payload", "POST", "/v1/functions/f:invoke", adminToken, obj{"event": obj{"payload": "AA==", "payload_text": "x"}})
	e.expectStatus(400, "a value is required", "PUT", "/v1/functions/f/state/k", adminToken, "")
	e.expectStatus(400, "tail", "GET", "/v1/logs:follow?tail=5000", readToken, nil)
}

// With functions_dir set the directory owns the functions: the API
// refuses changes (FAILED_PRECONDITION) but still validates, runs and
// reads them.
func TestFunctionsDirOwnsFunctions(t *testing.T) {
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "g.lua"), []byte("function handle(event, ctx) return {n = 1} end"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "g.yaml"), []byte("triggers:\n  - mqtt: x/y\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	e := startDaemon(t, daemonConfig(t.TempDir(), fmt.Sprintf("functions_dir: %q\n", dir)))
	src := obj{"name": "g", "source": "function handle(event, ctx) return nil end", "manifest": "{}"}
	e.expectStatus(400, "functions_dir", "POST", "/v1/functions", adminToken, src)
	e.expectStatus(400, "functions_dir", "POST", "/v1/functions/g:rollback", adminToken, obj{"version": "1"})
	e.expectStatus(400, "functions_dir", "DELETE", "/v1/functions/g", adminToken, nil)
	src["dry_run"] = true
	e.mustCall(200, "POST", "/v1/functions", adminToken, src, nil)
	var inv obj
	e.mustCall(200, "POST", "/v1/functions/g:invoke", adminToken, obj{}, &inv)
	if field(inv, "result.n") != 1.0 {
		t.Fatalf("invoke: %v", inv)
	}
}
