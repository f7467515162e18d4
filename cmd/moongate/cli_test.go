package main

import (
	"bytes"
	"context"
	"encoding/json"
	"encoding/pem"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"reflect"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"
	"unicode/utf8"

	"go.yaml.in/yaml/v3"
	"google.golang.org/protobuf/types/known/structpb"

	v1 "github.com/moongate-edge/moongate/api/moongate/v1"
)

var update = flag.Bool("update", false, "rewrite the golden files under testdata/cli")

// fakeAPI is an httptest server that answers canned JSON per "METHOD
// PATH" and records the requests it got.
type fakeAPI struct {
	*httptest.Server
	mu    sync.Mutex
	reqs  []recorded
	route map[string]fakeAnswer
}

type recorded struct {
	method, path, rawPath, query, auth, body string
}

type fakeAnswer struct {
	status int
	body   string
}

const testToken = "mgt_test"

func newFakeAPI(t *testing.T) *fakeAPI {
	f := &fakeAPI{route: map[string]fakeAnswer{}}
	f.Server = httptest.NewServer(http.HandlerFunc(f.serve))
	t.Cleanup(f.Close)
	return f
}

func (f *fakeAPI) serve(w http.ResponseWriter, r *http.Request) {
	b, _ := io.ReadAll(r.Body)
	f.mu.Lock()
	f.reqs = append(f.reqs, recorded{r.Method, r.URL.Path, r.URL.RawPath, r.URL.RawQuery, r.Header.Get("Authorization"), string(b)})
	a, ok := f.route[r.Method+" "+r.URL.Path]
	f.mu.Unlock()
	if !ok {
		a = fakeAnswer{404, `{"code":5,"message":"no route in the fake","details":[]}`}
	}
	if a.status == 0 {
		a.status = 200
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(a.status)
	_, _ = io.WriteString(w, a.body)
}

func (f *fakeAPI) on(method, path string, status int, body string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.route[method+" "+path] = fakeAnswer{status, body}
}

func (f *fakeAPI) requests() []recorded {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]recorded(nil), f.reqs...)
}

// withEnv replaces the environment the CLI reads for one test.
func withEnv(t *testing.T, env map[string]string) {
	old := getenv
	getenv = func(k string) string { return env[k] }
	t.Cleanup(func() { getenv = old })
}

// runCLI runs the CLI in-process with server and token in the environment.
func runCLI(t *testing.T, server string, args ...string) (string, string, int) {
	t.Helper()
	withEnv(t, map[string]string{"MOONGATE_SERVER": server, "MOONGATE_TOKEN": testToken, "HOME": t.TempDir()})
	var out, errb bytes.Buffer
	code := run(context.Background(), args, &out, &errb)
	return out.String(), errb.String(), code
}

// golden compares got with testdata/cli/NAME.golden (rewritten with -update).
func golden(t *testing.T, name, got string) {
	t.Helper()
	path := filepath.Join("testdata", "cli", name+".golden")
	if *update {
		if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path, []byte(got), 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run with -update to create it)", err)
	}
	if got != string(want) {
		t.Errorf("%s: output differs from %s:\n--- got\n%s--- want\n%s", name, path, got, want)
	}
}

// Canned API answers, as the server writes them (protojson, proto names,
// int64 as strings).
const (
	fnListJSON = `{"functions":[{"name":"alarm","version":"1","active":true,"running":true,"sha256":"aa","source_sha256":"bb","create_time":"2026-11-26T15:00:00Z","description":"","triggers":[{"mqtt":"alarms/{device}"},{"http":{"methods":["GET","POST"]}}],"stream":"alarm","source":"","manifest":""},` +
		`{"name":"telemetry","version":"2","active":true,"running":false,"sha256":"cc","source_sha256":"dd","create_time":"2026-11-26T15:01:00.250Z","description":"test telemetry","triggers":[{"mqtt":"devices/{device}/telemetry"},{"timer":"@every 1m"}],"stream":"telemetry","source":"","manifest":""}]}`
	fnGetJSON    = `{"name":"telemetry","version":"2","active":true,"running":true,"sha256":"0123456789abcdef0123456789abcdef","source_sha256":"fedcba9876543210","create_time":"2026-11-26T15:01:00Z","description":"test telemetry","triggers":[{"mqtt":"devices/{device}/telemetry"}],"stream":"telemetry","source":"function handle(e)\n  return nil\nend\n","manifest":"description: test telemetry\ntriggers:\n  - mqtt: devices/{device}/telemetry\n","someFutureField":1}`
	versionsJSON = `{"versions":[{"name":"telemetry","version":"1","active":false,"running":false,"sha256":"0123456789abcdef0123","create_time":"2026-11-26T14:00:00Z","description":"v1"},{"name":"telemetry","version":"2","active":true,"running":true,"sha256":"fedcba9876543210fedc","create_time":"2026-11-26T15:00:00Z","description":"v2"}]}`
	invokeJSON   = `{"invocation_id":"inv-1","version":"2","result_kind":"RESULT_KIND_JSON","result":{"temp":5,"v":2},"effects":[{"publish":{"topic":"devices/d9/cmd","payload":"eyJmYW4iOiJvbiJ9","qos":1,"retain":false}},{"emit":{"stream":"alerts","record":{"hot":true}}},` +
		`{"blob_write":{"bucket":"thumbs","name":"a.json","content_type":"application/json","data":"eyJ3IjoxfQ=="}},{"blob_delete":{"bucket":"photos","name":"old.jpg"}}],` +
		`"state":[{"op":"incr","key":"count","delta":1},{"op":"set","key":"last","value":5},{"op":"delete","key":"old","delta":0}],"logs":[{"seq":"0","function":"telemetry","invocation_id":"inv-1","level":"info","msg":"reading","fields":{"temp":5},"time":"2026-11-26T15:02:03.004Z"}],` +
		`"cost":{"wall":"0.000350s","steps":"14","peak_memory_bytes":"572","bytes_in":"11","bytes_out":"50","effects":2,"outcome":"ok"},"error":"","committed":false}`
	recordsJSON = `{"records":[{"id":"gw-1","seq":"1","stream":"telemetry","function":"telemetry","device":"d1","event_id":"e1","event_time":"2026-11-26T15:00:00Z","processed_time":"2026-11-26T15:00:00.010Z","clock_synced":true,"data":{"temp":20,"v":1}},` +
		`{"id":"gw-2","seq":"2","stream":"telemetry","function":"telemetry","device":"","event_id":"e2","event_time":"2026-11-26T15:00:01.500Z","clock_synced":true,"data":"plain text"}],"next_cursor":""}`
	aggJSON       = `{"buckets":[{"start":"2026-11-26T15:00:00Z","count":"3","min":20,"max":22,"mean":21},{"start":"2026-11-26T16:00:00Z","count":"1","min":-1.5,"max":-1.5,"mean":-1.5}]}`
	stateListJSON = `{"entries":[{"key":"cfg/a","value":{"limit":3}},{"key":"count","value":4}],"next_cursor":""}`
	dlqJSON       = `{"dead_letters":[{"seq":"17","function":"alarm","key":"d2","error":"alarm.lua:3: alarm failed","attempts":1,"time":"2026-11-26T15:03:00Z","event":{"id":"e9","topic":"alarms/d2","payload_text":"{\"fail\": true}","captures":{"device":"d2"}}}],"next_after":"17"}`
	usageJSON     = `{"usage":[{"function":"telemetry","start":"2026-11-26T15:00:00Z","invocations":"12","errors":"1","steps":"168","wall":"0.004200s","bytes_in":"132","bytes_out":"600"}]}`
	syncJSON      = `{"targets":[{"name":"cloud","kind":"http","connected":false,"backlog_records":"42","backlog_bytes":"4096","oldest_pending_age":"90s","delivered_total":"1000","delivered_per_second":2.5,"dropped_by_quota":"0","last_error":"connection refused","last_error_time":"2026-11-26T15:04:00Z","blobs_pending":"2","blob_bytes_pending":"3145728","blobs_delivered":"7","blobs_failed":"1"}]}`
	systemJSON    = `{"version":"1.2.3","gateway_id":"pi-1","uptime":"86400s","process_uptime":"3600s","cpu_percent":12.5,"cpu_count":4,"memory":{"total_bytes":"536870912","available_bytes":"268435456","used_percent":50},` +
		`"disk":{"path":"/var/lib/moongate","total_bytes":"32000000000","free_bytes":"16000000000","used_percent":50},"temperatures":[{"sensor":"cpu_thermal","celsius":48.3}],"gateway":{"received":"100","processed":"98","failed":"2","dead_lettered":"1","published":"5","backlog":"0","functions":2,"ready":true},"process_heap_bytes":"8388608"}`
)

// TestCommands runs every remote command against the fake API: the
// request it makes (method, path, query, body, token), its table output
// (golden files) and its --json output (the response, compacted).
func TestCommands(t *testing.T) {
	dir := t.TempDir()
	writeFile(t, filepath.Join(dir, "telemetry.lua"), "function handle(e) return nil end\n")
	writeFile(t, filepath.Join(dir, "cfg.json"), `{"threshold": 30}`)
	cases := []struct {
		name       string
		args       []string
		method     string
		path       string
		query      string
		body       string // JSON the request must carry ("" for none)
		answer     string
		noGolden   bool
		wantStdout string // instead of a golden file
	}{
		{name: "fn-ls", args: []string{"fn", "ls"}, method: "GET", path: "/v1/functions", answer: fnListJSON},
		{name: "fn-get", args: []string{"fn", "get", "telemetry"}, method: "GET", path: "/v1/functions/telemetry", answer: fnGetJSON},
		{name: "fn-get-source", args: []string{"fn", "get", "telemetry", "--version", "2", "--source"}, method: "GET", path: "/v1/functions/telemetry", query: "version=2", answer: fnGetJSON,
			wantStdout: "function handle(e)\n  return nil\nend\n"},
		{name: "fn-versions", args: []string{"fn", "versions", "telemetry"}, method: "GET", path: "/v1/functions/telemetry/versions", answer: versionsJSON},
		{name: "fn-rm", args: []string{"fn", "rm", "telemetry"}, method: "DELETE", path: "/v1/functions/telemetry", answer: `{"deleted_versions":"3"}`,
			wantStdout: "deleted telemetry (3 versions)\n"},
		{name: "fn-rollback", args: []string{"fn", "rollback", "telemetry", "1"}, method: "POST", path: "/v1/functions/telemetry:rollback", body: `{"name":"telemetry","version":"1"}`,
			answer: `{"function":{"name":"telemetry","version":"1","active":true,"running":true}}`, wantStdout: "telemetry: version 1 is active (running)\n"},
		{name: "fn-invoke", args: []string{"fn", "invoke", "telemetry", "--data", ` {"temp": 5} `, "--topic", "devices/d9/telemetry", "--capture", "device=d9"}, method: "POST", path: "/v1/functions/telemetry:invoke",
			body: `{"name":"telemetry","event":{"topic":"devices/d9/telemetry","payload_text":"{\"temp\": 5}","captures":{"device":"d9"}},"dry_run":true}`, answer: invokeJSON},
		{name: "fn-invoke-commit", args: []string{"fn", "invoke", "--commit", "telemetry"}, method: "POST", path: "/v1/functions/telemetry:invoke",
			body: `{"name":"telemetry","event":{},"dry_run":false}`, answer: invokeJSON, noGolden: true},
		{name: "fn-deploy-flags", args: []string{"fn", "deploy", filepath.Join(dir, "telemetry.lua"), "--name", "temp", "--trigger", "mqtt:devices/{device}/telemetry", "--trigger", "timer:@every 1m",
			"--trigger", "http:get,post", "--description", "d", "--stream", "s", "--sync", "cloud", "--config", filepath.Join(dir, "cfg.json"), "--timeout", "2s", "--max-memory", "8MiB", "--max-steps", "1000", "--max-effects", "3", "--max-call-depth", "50", "--max-result-bytes", "1KiB", "--max-effect-bytes", "512"},
			method: "POST", path: "/v1/functions",
			body: `{"name":"temp","source":"function handle(e) return nil end\n","triggers":[{"mqtt":"devices/{device}/telemetry"},{"timer":"@every 1m"},{"http":{"methods":["GET","POST"]}}],` +
				`"limits":{"timeout":"2s","max_steps":"1000","max_memory_bytes":"8388608","max_result_bytes":"1024","max_effects":3,"max_effect_bytes":"512","max_call_depth":50},"config":{"threshold":30},"description":"d","stream":"s","sync":["cloud"]}`,
			answer: `{"function":{"name":"temp","version":"4","active":true,"running":true},"dry_run":false,"unchanged":false}`},
		{name: "data-query", args: []string{"data", "query", "--function", "telemetry", "--device", "d1", "--stream", "telemetry", "--from", "2026-11-26T15:00:00Z", "--to", "2026-11-27", "--desc", "--limit", "10"},
			method: "GET", path: "/v1/records", query: "device=d1&from=2026-11-26T15%3A00%3A00Z&function=telemetry&limit=10&order=ORDER_DESC&stream=telemetry&to=2026-11-27T00%3A00%3A00Z", answer: recordsJSON},
		{name: "data-agg", args: []string{"data", "agg", "--field", "sensors.temp", "--bucket", "1h"}, method: "GET", path: "/v1/records:aggregate", query: "bucket=3600s&field=sensors.temp", answer: aggJSON},
		{name: "state-get", args: []string{"state", "get", "telemetry", "cfg/a"}, method: "GET", path: "/v1/functions/telemetry/state/cfg/a", answer: `{"key":"cfg/a","value":{"limit":3}}`,
			wantStdout: "{\"limit\":3}\n"},
		{name: "state-ls", args: []string{"state", "ls", "telemetry", "--prefix", "c"}, method: "GET", path: "/v1/functions/telemetry/state", query: "limit=100&prefix=c", answer: stateListJSON},
		{name: "state-put", args: []string{"state", "put", "telemetry", "mode", `"on"`}, method: "PUT", path: "/v1/functions/telemetry/state/mode", body: `"on"`, answer: `{"key":"mode","value":"on"}`,
			wantStdout: "mode = \"on\"\n"},
		{name: "state-rm", args: []string{"state", "rm", "telemetry", "mode"}, method: "DELETE", path: "/v1/functions/telemetry/state/mode", answer: `{}`, wantStdout: "deleted mode\n"},
		{name: "dlq-ls", args: []string{"dlq", "ls", "--function", "alarm"}, method: "GET", path: "/v1/deadletters", query: "function=alarm&limit=100", answer: dlqJSON},
		{name: "dlq-replay", args: []string{"dlq", "replay", "17"}, method: "POST", path: "/v1/deadletters:replay", body: `{"seq":"17"}`, answer: `{"replayed":"1","skipped":"0","errors":[]}`,
			wantStdout: "replayed 1, skipped 0\n"},
		// Sequence numbers above 2^63-1 went out negative ("after=-1").
		{name: "dlq-ls-after-max", args: []string{"dlq", "ls", "--after", "18446744073709551615"}, method: "GET", path: "/v1/deadletters", query: "after=18446744073709551615&limit=100",
			answer: `{"dead_letters":[]}`, noGolden: true},
		// --after 0 is the first page (it was taken for no --after: the
		// last 50 lines, fetched with limit=10000).
		{name: "logs-after-zero", args: []string{"fn", "logs", "--after", "0", "--limit", "1"}, method: "GET", path: "/v1/logs", query: "limit=1",
			answer: `{"lines":[],"next_after":"0"}`, noGolden: true},
		{name: "logs-after-max", args: []string{"fn", "logs", "telemetry", "--after", "18446744073709551615"}, method: "GET", path: "/v1/logs", query: "after=18446744073709551615&function=telemetry&limit=100",
			answer: `{"lines":[]}`, noGolden: true},
		{name: "dlq-replay-fn", args: []string{"dlq", "replay", "--function", "alarm"}, method: "POST", path: "/v1/deadletters:replay", body: `{"function":"alarm"}`, answer: `{"replayed":"2","skipped":"0"}`,
			wantStdout: "replayed 2, skipped 0\n"},
		{name: "dlq-purge", args: []string{"dlq", "purge", "--all"}, method: "POST", path: "/v1/deadletters:purge", body: `{"all":true}`, answer: `{"purged":"5"}`, wantStdout: "purged 5\n"},
		{name: "usage", args: []string{"usage", "--function", "telemetry", "--from", "2026-11-26T00:00:00Z", "--bucket", "30m"}, method: "GET", path: "/v1/usage", query: "bucket=1800s&from=2026-11-26T00%3A00%3A00Z&function=telemetry", answer: usageJSON},
		{name: "sync-status", args: []string{"sync", "status"}, method: "GET", path: "/v1/sync", answer: syncJSON},
		{name: "sync-status-empty", args: []string{"sync", "status"}, method: "GET", path: "/v1/sync", answer: `{"targets":[]}`, wantStdout: "no sync targets configured\n"},
		{name: "system", args: []string{"system"}, method: "GET", path: "/v1/system", answer: systemJSON},
		{name: "logs-page", args: []string{"fn", "logs", "telemetry", "--after", "5", "--limit", "2"}, method: "GET", path: "/v1/logs", query: "after=5&function=telemetry&limit=2",
			answer: `{"lines":[{"seq":"6","function":"telemetry","invocation_id":"inv-1","level":"warn","msg":"hot","fields":{"temp":85},"time":"2026-11-26T15:02:03.004Z"}],"next_after":"6"}`},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			for _, asJSON := range []bool{false, true} {
				f := newFakeAPI(t)
				f.on(tc.method, tc.path, 200, tc.answer)
				args := tc.args
				if asJSON {
					args = append(append([]string{}, args...), "--json")
				}
				out, errs, code := runCLI(t, f.URL, args...)
				if code != exitOK {
					t.Fatalf("%v: exit %d: %s", args, code, errs)
				}
				reqs := f.requests()
				if len(reqs) != 1 {
					t.Fatalf("%d requests, want 1: %+v", len(reqs), reqs)
				}
				r := reqs[0]
				if r.method != tc.method || r.path != tc.path || r.query != tc.query || r.auth != "Bearer "+testToken {
					t.Fatalf("request %s %s ?%s (%s), want %s %s ?%s", r.method, r.path, r.query, r.auth, tc.method, tc.path, tc.query)
				}
				if !jsonEqual(r.body, tc.body) {
					t.Fatalf("request body\n%s\nwant\n%s", r.body, tc.body)
				}
				switch {
				case asJSON && strings.Contains(tc.name, "source"):
				case asJSON:
					var want bytes.Buffer
					_ = json.Compact(&want, []byte(tc.answer))
					if out != want.String()+"\n" {
						t.Fatalf("--json output\n%s\nwant the response\n%s", out, want.String())
					}
				case tc.wantStdout != "":
					if out != tc.wantStdout {
						t.Fatalf("output %q, want %q", out, tc.wantStdout)
					}
				case !tc.noGolden:
					golden(t, tc.name, out)
				}
			}
		})
	}
}

// jsonEqual compares two JSON texts by value ("" equals "").
func jsonEqual(a, b string) bool {
	if a == "" || b == "" {
		return a == b
	}
	var x, y any
	if json.Unmarshal([]byte(a), &x) != nil || json.Unmarshal([]byte(b), &y) != nil {
		return false
	}
	return reflect.DeepEqual(x, y)
}

// A state key with "/" stays one path segment (escaped).
func TestStateKeyEscaped(t *testing.T) {
	f := newFakeAPI(t)
	f.on("GET", "/v1/functions/telemetry/state/cfg/a b", 200, `{"key":"cfg/a b","value":1}`)
	if _, errs, code := runCLI(t, f.URL, "state", "get", "telemetry", "cfg/a b"); code != exitOK {
		t.Fatalf("exit %d: %s", code, errs)
	}
	if r := f.requests()[0]; r.rawPath != "/v1/functions/telemetry/state/cfg%2Fa%20b" {
		t.Fatalf("raw path %q", r.rawPath)
	}
}

// Errors of the API map to the documented exit codes, with the server's
// message on standard error.
func TestExitCodes(t *testing.T) {
	for _, tc := range []struct {
		status int
		body   string
		code   int
		substr string
	}{
		{401, `{"code":16,"message":"unknown or revoked token","details":[]}`, exitAuth, "unknown or revoked token (check MOONGATE_TOKEN"},
		{403, `{"code":7,"message":"token \"r\" has scope read; this call needs admin","details":[]}`, exitAuth, "scope read"},
		{404, `{"code":5,"message":"function \"x\" not found","details":[]}`, exitNotFound, `function "x" not found`},
		{400, `{"code":3,"message":"compile x:3:3: syntax error","details":[]}`, exitFailure, "x:3:3: syntax error"},
		{413, `{"code":8,"message":"request body is larger than the limit","details":[]}`, exitFailure, "larger than the limit"},
		{503, `{"code":14,"message":"gateway stopping","details":[]}`, exitUnavailable, "gateway stopping"},
		{500, `{"code":13,"message":"boom","details":[]}`, exitFailure, "boom"},
		// Not a moongate answer: a proxy's page. A 404 from something else
		// is not "not found".
		{404, `<html>nginx</html>`, exitFailure, "not a moongate API response: <html>nginx</html>"},
		{502, `bad gateway`, exitUnavailable, "502 Bad Gateway"},
		{401, ``, exitAuth, "401 Unauthorized"},
	} {
		f := newFakeAPI(t)
		f.on("GET", "/v1/functions/x", tc.status, tc.body)
		out, errs, code := runCLI(t, f.URL, "fn", "get", "x")
		if code != tc.code || !strings.Contains(errs, tc.substr) || out != "" {
			t.Errorf("%d %s: exit %d, stderr %q, stdout %q; want exit %d with %q", tc.status, tc.body, code, errs, out, tc.code, tc.substr)
		}
	}
	// A 200 that is not an API response.
	f := newFakeAPI(t)
	f.on("GET", "/v1/functions", 200, `<html>hello</html>`)
	if _, errs, code := runCLI(t, f.URL, "fn", "ls"); code != exitFailure || !strings.Contains(errs, "not a moongate API response") {
		t.Errorf("html 200: exit %d: %s", code, errs)
	}
	// A response over the CLI's bound (a misbehaving server) is refused
	// as it is read, not held: the bound was 256 MiB, about 600 MB of
	// memory to enforce.
	huge := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		chunk := []byte(strings.Repeat(" ", 1<<20))
		for range maxResponseBytes>>20 + 2 {
			if _, err := w.Write(chunk); err != nil {
				return
			}
		}
	}))
	defer huge.Close()
	var ms runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&ms)
	base, peak := ms.HeapAlloc, ms.HeapAlloc
	stop, sampled := make(chan struct{}), make(chan struct{})
	go func() { // the live heap while the CLI reads
		defer close(sampled)
		var m runtime.MemStats
		for {
			runtime.ReadMemStats(&m)
			peak = max(peak, m.HeapAlloc)
			select {
			case <-stop:
				return
			case <-time.After(2 * time.Millisecond):
			}
		}
	}()
	_, errs, code := runCLI(t, huge.URL, "fn", "ls")
	close(stop)
	<-sampled
	if code != exitFailure || !strings.Contains(errs, "larger than") {
		t.Errorf("huge response: exit %d: %s", code, errs)
	}
	if grew := peak - base; grew > 160<<20 {
		t.Errorf("reading a huge response took %d MiB of heap (bound %d MiB)", grew>>20, maxResponseBytes>>20)
	}
	// The function failed: the report is printed, exit 1.
	f.on("POST", "/v1/functions/x:invoke", 200, strings.Replace(invokeJSON, `"error":""`, `"error":"x:2: boom"`, 1))
	if out, errs, code := runCLI(t, f.URL, "fn", "invoke", "x"); code != exitFailure || !strings.Contains(out, "error: x:2: boom") || !strings.Contains(errs, "the function failed: x:2: boom") {
		t.Errorf("failed invoke: exit %d\n%s\n%s", code, out, errs)
	}
	// Replay with skipped dead letters: exit 1.
	f.on("POST", "/v1/deadletters:replay", 200, `{"replayed":"1","skipped":"1","errors":["seq 3: function gone"]}`)
	if _, errs, code := runCLI(t, f.URL, "dlq", "replay", "--all"); code != exitFailure || !strings.Contains(errs, "skipped: seq 3: function gone") {
		t.Errorf("replay skipped: exit %d: %s", code, errs)
	}
}

// Bad command lines exit 2 before any request, with a clear message.
func TestBadArguments(t *testing.T) {
	f := newFakeAPI(t)
	dir := t.TempDir()
	writeFile(t, filepath.Join(dir, "a.lua"), "function handle() end\n")
	writeFile(t, filepath.Join(dir, "a.yaml"), "triggers: [{mqtt: a}]\n")
	writeFile(t, filepath.Join(dir, "Bad Name.lua"), "function handle() end\n")
	writeFile(t, filepath.Join(dir, "lone", "b.lua"), "function handle() end\n")
	writeFile(t, filepath.Join(dir, "big.lua"), strings.Repeat("-", maxSourceBytes+1))
	writeFile(t, filepath.Join(dir, "bad.json"), `[1,2]`)
	for _, tc := range []struct {
		args   []string
		substr string
	}{
		{[]string{"fn", "ls", "--bogus"}, "flag provided but not defined: -bogus"},
		{[]string{"fn", "ls", "extra"}, "takes no arguments"},
		{[]string{"fn", "get"}, "needs NAME"},
		{[]string{"fn", "get", "a", "b"}, "needs NAME"},
		{[]string{"fn", "get", "a", "--source", "--manifest"}, "exclude each other"},
		{[]string{"fn", "rollback", "a", "zero"}, `invalid VERSION "zero"`},
		{[]string{"fn", "invoke", "a", "--data", `{"temp": `}, "--data is not valid JSON: unexpected end of JSON input"},
		{[]string{"fn", "invoke", "a", "--data", `{bad}`}, "--data is not valid JSON: invalid character 'b'"},
		{[]string{"fn", "invoke", "a", "--data", "@" + filepath.Join(dir, "missing.json")}, "no such file"},
		{[]string{"fn", "invoke", "a", "--capture", "nodevalue"}, `invalid --capture "nodevalue"`},
		{[]string{"fn", "invoke", "a", "--event", filepath.Join(dir, "a.yaml")}, "--event"},
		{[]string{"fn", "invoke", "a", "--event", "x.json", "--data", "1"}, "--event excludes"},
		{[]string{"fn", "logs", "a", "b"}, "at most one NAME"},
		{[]string{"fn", "logs", "--limit", "0", "--after", "1"}, "--limit"},
		{[]string{"fn", "deploy", filepath.Join(dir, "missing.lua")}, "no such file"},
		{[]string{"fn", "deploy", filepath.Join(dir, "a.lua"), "--trigger", "mqtt:x"}, "both describe the function"},
		{[]string{"fn", "deploy", filepath.Join(dir, "a.lua"), "--trigger", "kafka:x", "--manifest", "/dev/null"}, "both describe"},
		{[]string{"fn", "deploy", filepath.Join(dir, "Bad Name.lua"), "--trigger", "mqtt:x"}, `invalid function name "Bad Name"`},
		{[]string{"fn", "deploy", filepath.Join(dir, "lone", "b.lua")}, "no b.yaml next to it and no --trigger"},
		{[]string{"fn", "deploy", filepath.Join(dir, "lone")}, "has no manifest b.yaml"},
		{[]string{"fn", "deploy", filepath.Join(dir, "lone"), "--trigger", "mqtt:x"}, "apply to one FILE.lua only"},
		{[]string{"fn", "deploy", filepath.Join(dir, "big.lua"), "--trigger", "mqtt:x"}, "larger than the limit"},
		{[]string{"fn", "deploy", filepath.Join(dir, "a.lua"), "--name", "b", "--manifest", filepath.Join(dir, "a.yaml"), "--max-memory", "lots"}, "both describe"},
		{[]string{"fn", "deploy", filepath.Join(dir, "lone", "b.lua"), "--max-memory", "lots"}, "--max-memory: invalid size"},
		{[]string{"fn", "deploy", filepath.Join(dir, "lone", "b.lua"), "--trigger", "kafka:x"}, `invalid --trigger "kafka:x": unknown kind`},
		{[]string{"fn", "deploy", filepath.Join(dir, "lone", "b.lua"), "--trigger", "mqtt:"}, "empty mqtt spec"},
		{[]string{"fn", "deploy", filepath.Join(dir, "lone", "b.lua"), "--config", filepath.Join(dir, "bad.json")}, "--config"},
		{[]string{"fn", "deploy", filepath.Join(dir, "bad.json")}, "want a .lua file"},
		{[]string{"data", "query", "--from", "yesterday"}, `invalid time "yesterday"`},
		{[]string{"data", "query", "--limit", "0"}, "--limit must be between 1 and 10000"},
		{[]string{"data", "query", "--all", "--cursor", "c"}, "exclude each other"},
		{[]string{"data", "agg"}, "--field is required"},
		{[]string{"state", "put", "f", "k", "on"}, "VALUE is not valid JSON"},
		{[]string{"state", "put", "f", "", "1"}, "KEY is empty"},
		{[]string{"state", "get", "f"}, "needs FUNCTION and KEY"},
		{[]string{"dlq", "replay"}, "exactly one of SEQ, --function or --all"},
		{[]string{"dlq", "replay", "3", "--all"}, "exactly one of"},
		{[]string{"dlq", "replay", "-1"}, "flag provided but not defined"},
		{[]string{"dlq", "purge"}, "exactly one of --function or --all"},
		{[]string{"usage", "--bucket", "90s"}, "whole number of minutes"},
		{[]string{"system", "--server", "ftp://x"}, "the scheme must be http or https"},
		{[]string{"system", "--server", "http://user:pw@x"}, "want http(s)://HOST"},
		{[]string{"system", "--server", "https://gw:8443/v1/"}, "leave /v1 out"},
		{[]string{"state", "put", "f", "k", "-5"}, "flag provided but not defined: -5"},
		{[]string{"system", "--request-timeout", "-1s"}, "--request-timeout must be positive"},
		{[]string{"system", "--ca", filepath.Join(dir, "missing.pem"), "--server", "https://127.0.0.1:1"}, "--ca"},
		{[]string{"system", "--ca", filepath.Join(dir, "a.lua"), "--server", "https://127.0.0.1:1"}, "no PEM certificate"},
	} {
		out, errs, code := runCLI(t, f.URL, tc.args...)
		if code != exitUsage || !strings.Contains(errs, tc.substr) || out != "" {
			t.Errorf("%q: exit %d, stderr %q, stdout %q; want exit 2 with %q", tc.args, code, errs, out, tc.substr)
		}
	}
	if n := len(f.requests()); n != 0 {
		t.Fatalf("bad arguments made %d requests: %+v", n, f.requests())
	}
}

func TestHelp(t *testing.T) {
	for _, name := range []string{"fn deploy", "fn ls", "fn invoke", "fn logs", "data query", "data agg", "state put", "dlq replay", "usage", "sync status", "system"} {
		var out, errb bytes.Buffer
		args := append(strings.Fields(name), "--help")
		if code := run(context.Background(), args, &out, &errb); code != exitOK {
			t.Fatalf("%s --help: exit %d", name, code)
		}
		for _, want := range []string{"usage: moongate " + name, "Exit status: 0 ok; 1", "3 not found; 4", "5 the server", "MOONGATE_TOKEN"} {
			if !strings.Contains(out.String(), want) {
				t.Errorf("%s --help lacks %q:\n%s", name, want, out.String())
			}
		}
	}
	var out, errb bytes.Buffer
	if code := run(context.Background(), []string{"dlq"}, &out, &errb); code != exitUsage || !strings.Contains(errb.String(), "dlq ls, dlq purge, dlq replay") {
		t.Fatalf("moongate dlq: exit %d: %s", code, errb.String())
	}
}

// No token anywhere: exit 4 before any request; an unreachable server:
// exit 5.
func TestConnectionErrors(t *testing.T) {
	f := newFakeAPI(t)
	withEnv(t, map[string]string{"MOONGATE_SERVER": f.URL, "HOME": t.TempDir()})
	var out, errb bytes.Buffer
	if code := run(context.Background(), []string{"fn", "ls"}, &out, &errb); code != exitAuth || !strings.Contains(errb.String(), "no API token: set MOONGATE_TOKEN, pass --token-file FILE") {
		t.Fatalf("no token: exit %d: %s", code, errb.String())
	}
	if len(f.requests()) != 0 {
		t.Fatal("a request without a token was sent")
	}

	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	_, errs, code := runCLI(t, "http://"+addr, "fn", "ls")
	if code != exitUnavailable || !strings.Contains(errs, "cannot reach the server at http://"+addr) || !strings.Contains(errs, "connection refused") {
		t.Fatalf("unreachable: exit %d: %s", code, errs)
	}

	// A server that never answers: --request-timeout.
	hang := make(chan struct{})
	slow := httptest.NewServer(http.HandlerFunc(func(http.ResponseWriter, *http.Request) { <-hang }))
	defer slow.Close()
	defer close(hang)
	start := time.Now()
	_, errs, code = runCLI(t, slow.URL, "fn", "ls", "--request-timeout", "100ms")
	if code != exitUnavailable || !strings.Contains(errs, "no answer within --request-timeout 100ms") || time.Since(start) > 10*time.Second {
		t.Fatalf("timeout: exit %d: %s", code, errs)
	}
}

// Settings come from flags, then the environment, then the CLI
// configuration file (strictly decoded).
func TestSettingsPrecedence(t *testing.T) {
	fileSrv, envSrv, flagSrv := newFakeAPI(t), newFakeAPI(t), newFakeAPI(t)
	for _, f := range []*fakeAPI{fileSrv, envSrv, flagSrv} {
		f.on("GET", "/v1/sync", 200, `{"targets":[]}`)
	}
	cfgDir := t.TempDir()
	path := filepath.Join(cfgDir, "moongate", "cli.yaml")
	writeFile(t, path, fmt.Sprintf("server: %s\ntoken: filetoken\nrequest_timeout: 5s\n", fileSrv.URL))
	if err := os.Chmod(path, 0o600); err != nil {
		t.Fatal(err)
	}
	env := map[string]string{"XDG_CONFIG_HOME": cfgDir}
	runWith := func(args ...string) (string, int) {
		withEnv(t, env)
		var out, errb bytes.Buffer
		code := run(context.Background(), args, &out, &errb)
		return errb.String(), code
	}
	if errs, code := runWith("sync", "status"); code != 0 || fileSrv.requests()[0].auth != "Bearer filetoken" || strings.Contains(errs, "warning") {
		t.Fatalf("file: exit %d %s %+v", code, errs, fileSrv.requests())
	}
	env["MOONGATE_SERVER"], env["MOONGATE_TOKEN"] = envSrv.URL, "envtoken"
	if errs, code := runWith("sync", "status"); code != 0 || envSrv.requests()[0].auth != "Bearer envtoken" {
		t.Fatalf("env: exit %d %s", code, errs)
	}
	if errs, code := runWith("sync", "status", "--server", flagSrv.URL, "--token", "flagtoken"); code != 0 || flagSrv.requests()[0].auth != "Bearer flagtoken" {
		t.Fatalf("flags: exit %d %s", code, errs)
	}
	// A token in a file others can read: a warning.
	if err := os.Chmod(path, 0o644); err != nil {
		t.Fatal(err)
	}
	delete(env, "MOONGATE_SERVER")
	if errs, code := runWith("sync", "status"); code != 0 || !strings.Contains(errs, "readable by others") {
		t.Fatalf("mode 644: exit %d %q", code, errs)
	}
	// Unknown keys and bad values are errors naming the file and line.
	writeFile(t, path, "server: http://x\ntokn: abc\n")
	if errs, code := runWith("sync", "status"); code != exitUsage || !strings.Contains(errs, path+":2") || !strings.Contains(errs, "tokn") {
		t.Fatalf("unknown key: exit %d %q", code, errs)
	}
	writeFile(t, path, "request_timeout: soon\n")
	if errs, code := runWith("sync", "status"); code != exitUsage || !strings.Contains(errs, path+":1") {
		t.Fatalf("bad value: exit %d %q", code, errs)
	}
	// MOONGATE_CLI_CONFIG names a file that must exist.
	env["MOONGATE_CLI_CONFIG"] = filepath.Join(cfgDir, "missing.yaml")
	if errs, code := runWith("sync", "status"); code != exitUsage || !strings.Contains(errs, "missing.yaml") {
		t.Fatalf("missing explicit file: exit %d %q", code, errs)
	}
}

// https:// with --ca trusts the server's certificate; without it the
// handshake fails (exit 5); --insecure-skip-verify skips the check with a
// warning.
func TestTLS(t *testing.T) {
	srv := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Authorization") != "Bearer "+testToken {
			w.WriteHeader(401)
			return
		}
		_, _ = io.WriteString(w, `{"targets":[]}`)
	}))
	defer srv.Close()
	caFile := filepath.Join(t.TempDir(), "ca.pem")
	if err := os.WriteFile(caFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: srv.Certificate().Raw}), 0o644); err != nil {
		t.Fatal(err)
	}
	if out, errs, code := runCLI(t, srv.URL, "sync", "status", "--ca", caFile); code != exitOK || out != "no sync targets configured\n" {
		t.Fatalf("--ca: exit %d: %s", code, errs)
	}
	if _, errs, code := runCLI(t, srv.URL, "sync", "status"); code != exitUnavailable || !strings.Contains(errs, "certificate") {
		t.Fatalf("untrusted: exit %d: %s", code, errs)
	}
	if _, errs, code := runCLI(t, srv.URL, "sync", "status", "--insecure-skip-verify"); code != exitOK || !strings.Contains(errs, "warning: not verifying") {
		t.Fatalf("--insecure-skip-verify: exit %d: %s", code, errs)
	}
	// Plain http to a remote host: a warning (the address is not dialled
	// successfully here, only the warning matters).
	if _, errs, _ := runCLI(t, "http://192.0.2.1:1", "sync", "status", "--request-timeout", "50ms"); !strings.Contains(errs, "sending the token in clear text") {
		t.Fatalf("no clear-text warning: %s", errs)
	}
}

// fn logs -f prints the streamed lines, ends with exit 0 when
// interrupted, and reports an error chunk or the end of the stream.
func TestFollowLogs(t *testing.T) {
	lines := make(chan string)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/v1/logs:follow" || r.URL.RawQuery != "function=telemetry&tail=3" {
			w.WriteHeader(400)
			_, _ = fmt.Fprintf(w, `{"code":3,"message":"unexpected %s?%s"}`, r.URL.Path, r.URL.RawQuery)
			return
		}
		w.WriteHeader(200)
		w.(http.Flusher).Flush()
		for {
			select {
			case l, ok := <-lines:
				if !ok {
					return
				}
				_, _ = io.WriteString(w, l+"\n")
				w.(http.Flusher).Flush()
			case <-r.Context().Done():
				return
			}
		}
	}))
	defer srv.Close()
	withEnv(t, map[string]string{"MOONGATE_SERVER": srv.URL, "MOONGATE_TOKEN": testToken, "HOME": t.TempDir()})
	ctx, cancel := context.WithCancel(context.Background())
	out := &syncBuffer{}
	var errb bytes.Buffer
	done := make(chan int)
	go func() { done <- run(ctx, []string{"fn", "logs", "telemetry", "-f", "--tail", "3"}, out, &errb) }()
	lines <- `{"result":{"seq":"7","function":"telemetry","invocation_id":"inv-7","level":"info","msg":"reading","fields":{"temp":30},"time":"2026-11-26T15:02:03.004Z"}}`
	lines <- `{"result":{"seq":"8","function":"telemetry","invocation_id":"inv-8","level":"error","msg":"oops","time":"2026-11-26T15:02:04Z"}}`
	want := "2026-11-26T15:02:03.004Z INFO  telemetry inv-7 reading {\"temp\":30}\n2026-11-26T15:02:04.000Z ERROR telemetry inv-8 oops\n"
	deadline := time.Now().Add(10 * time.Second)
	for out.String() != want {
		if time.Now().After(deadline) {
			t.Fatalf("followed output %q, want %q", out.String(), want)
		}
		time.Sleep(time.Millisecond)
	}
	cancel()
	if code := <-done; code != exitOK {
		t.Fatalf("interrupted follow: exit %d: %s", code, errb.String())
	}

	// An error chunk mid-stream, a line that is not JSON, the end of the
	// stream.
	for _, tc := range []struct {
		body   string
		code   int
		substr string
	}{
		{`{"result":{"seq":"9","msg":"x"}}` + "\n" + `{"error":{"code":14,"message":"store closed"}}` + "\n", exitUnavailable, "store closed"},
		{"not json\n", exitFailure, "not JSON"},
		{"", exitUnavailable, "the server ended the log stream"},
		// What a stopping daemon sends: exit 5, as for a broken stream.
		{`{"error":{"code":1,"message":"grpc: the client connection is closing"}}` + "\n", exitUnavailable, "the server ended the log stream: grpc: the client connection is closing"},
		{`{"error":{"code":3,"message":"tail 5000 out of range"}}` + "\n", exitFailure, "out of range"},
	} {
		srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { _, _ = io.WriteString(w, tc.body) }))
		out, errs, code := runCLI(t, srv.URL, "fn", "logs", "-f", "--json")
		srv.Close()
		if code != tc.code || !strings.Contains(errs, tc.substr) {
			t.Errorf("%q: exit %d: %s", tc.body, code, errs)
		}
		if strings.HasPrefix(tc.body, `{"result"`) && out != `{"seq":"9","msg":"x"}`+"\n" {
			t.Errorf("--json line: %q", out)
		}
	}
}

// TestFollowTailBound: -f --tail over the server's bound is refused
// locally (exit 2), not by the server after connecting (exit 1).
func TestFollowTailBound(t *testing.T) {
	f := newFakeAPI(t)
	_, errs, code := runCLI(t, f.URL, "fn", "logs", "-f", "--tail", "5000")
	if code != exitUsage || !strings.Contains(errs, "at most 1000") || len(f.requests()) != 0 {
		t.Fatalf("exit %d, %d requests: %s", code, len(f.requests()), errs)
	}
}

// syncBuffer is a bytes.Buffer safe for one writer and one reader.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// fn logs without --after pages through the lines and keeps the last ones.
func TestLastLogs(t *testing.T) {
	var mu sync.Mutex
	var queries []string
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		queries = append(queries, r.URL.RawQuery)
		mu.Unlock()
		after := r.URL.Query().Get("after")
		var lines []string
		if after == "" || after == "3" {
			start := map[string]int{"": 1, "3": 4}[after]
			for i := start; i < start+3; i++ {
				lines = append(lines, fmt.Sprintf(`{"seq":"%d","function":"f","level":"info","msg":"m%d","time":"2026-11-26T15:00:0%dZ"}`, i, i, i))
			}
		}
		next := after
		if len(lines) > 0 {
			next = fmt.Sprint(map[string]int{"": 3, "3": 6}[after])
		}
		fmt.Fprintf(w, `{"lines":[%s],"next_after":"%s"}`, strings.Join(lines, ","), next)
	}))
	defer srv.Close()
	out, errs, code := runCLI(t, srv.URL, "fn", "logs", "f", "--tail", "4")
	if code != exitOK {
		t.Fatalf("exit %d: %s", code, errs)
	}
	if strings.Count(out, "\n") != 4 || !strings.HasPrefix(out, "2026-11-26T15:00:03.000Z INFO  f m3") || !strings.Contains(out, "m6\n") {
		t.Fatalf("output:\n%s", out)
	}
	if strings.Join(queries, " ") != "function=f&limit=10000 after=3&function=f&limit=10000 after=6&function=f&limit=10000" {
		t.Fatalf("queries %v", queries)
	}
}

// After "--" every argument is positional, so a negative number is a value.
func TestDoubleDash(t *testing.T) {
	f := newFakeAPI(t)
	f.on("PUT", "/v1/functions/f/state/k", 200, `{"key":"k","value":-5}`)
	if out, errs, code := runCLI(t, f.URL, "state", "put", "--json", "f", "--", "k", "-5"); code != exitOK || out != `{"key":"k","value":-5}`+"\n" {
		t.Fatalf("exit %d: %q %s", code, out, errs)
	}
	if r := f.requests()[0]; r.body != "-5" {
		t.Fatalf("body %q", r.body)
	}
}

// TestTextOutputIsOneLineAndExact: text from functions and devices printed
// in tables and log lines cannot fake lines or columns (control characters
// escaped), is cut on a character boundary (never invalid UTF-8), and
// JSON values keep <, > and & as they are.
func TestTextOutputIsOneLineAndExact(t *testing.T) {
	for in, want := range map[string]string{
		"plain":             "plain",
		"x\nsecond line":    `x\nsecond line`,
		"a\tb\tc":           `a\tb\tc`,
		"bell\x07 del\x7f":  `bell\x07 del\x7f`,
		"bad \xff byte":     "bad \uFFFD byte",
		"é and <tags> & co": "é and <tags> & co",
	} {
		if got := oneLine(in); got != want {
			t.Errorf("oneLine(%q) = %q, want %q", in, got, want)
		}
	}
	s := strings.Repeat("é", 600) // 1,200 bytes of 2-byte characters
	for n := 1; n < 20; n++ {
		if got := clipText(s, 1100+n); !utf8.ValidString(got) || len(got) > 1100+n+3 {
			t.Fatalf("clipText(%d): %d bytes, valid %v", 1100+n, len(got), utf8.ValidString(got))
		}
	}
	if got := fmtValue(structpb.NewStringValue("a<b>&c")); got != `"a<b>&c"` {
		t.Errorf("fmtValue: %s", got)
	}
	if got := fmtLogLine(&v1.LogLine{Level: "info", Msg: "x\n2026-11-29T00:00:00Z ERROR fake"}, false); strings.Contains(got, "\n") {
		t.Errorf("a log message started a line of its own: %q", got)
	}
}

// TestServeHelpAndTokenLine: serve --help and token create --help exit 0
// like every command's --help; the configuration line token create prints keeps a name that
// YAML would read as another type (true, null, 1e3) a string.
func TestServeHelpAndTokenLine(t *testing.T) {
	var out, errb bytes.Buffer
	if code := run(context.Background(), []string{"serve", "--help"}, &out, &errb); code != exitOK {
		t.Fatalf("serve --help: exit %d: %s", code, errb.String())
	}
	errb.Reset()
	if code := run(context.Background(), []string{"token", "create", "--help"}, &out, &errb); code != exitOK || !strings.Contains(errb.String(), "-scope") {
		t.Fatalf("token create --help: exit %d: %s", code, errb.String())
	}
	for _, name := range []string{"true", "null", "1e3", "ci"} {
		out.Reset()
		errb.Reset()
		if code := run(context.Background(), []string{"token", "create", name}, &out, &errb); code != exitOK {
			t.Fatalf("token create %s: exit %d: %s", name, code, errb.String())
		}
		lines := strings.Split(strings.TrimSpace(out.String()), "\n")
		var entry []struct {
			Name  string `yaml:"name"`
			Scope string `yaml:"scope"`
		}
		if len(lines) != 2 || yaml.Unmarshal([]byte(lines[1]), &entry) != nil || len(entry) != 1 || entry[0].Name != name {
			t.Fatalf("token create %s printed %q (decoded %+v)", name, out.String(), entry)
		}
	}
}
