package apiserver_test

import (
	"bytes"
	"io"
	"net/http"
	"net/url"
	"sync"
	"testing"
)

// One daemon serves every fuzz input of the binary (starting one per input
// would dominate the run).
var (
	fuzzOnce sync.Once
	fuzzEnv  *env
)

// fuzzDaemon starts the shared daemon, cleaned up when the fuzz target ends.
func fuzzDaemon(f *testing.F) *env {
	fuzzOnce.Do(func() {
		fuzzEnv = startDaemon(f, daemonConfig(f.TempDir(), ""))
		fuzzEnv.mustCall(200, "POST", "/v1/functions", adminToken, obj{"name": "f", "source": telemetrySource(1), "manifest": telemetryManifest}, nil)
		fuzzEnv.mustCall(200, "POST", "/v1/functions/f:invoke", adminToken, obj{"event": obj{"payload_text": `{"temp": 1}`}, "dry_run": false}, nil)
	})
	f.Cleanup(func() { fuzzOnce = sync.Once{} })
	return fuzzEnv
}

// rawDo sends one request without the OpenAPI check (fuzz input is mostly
// invalid on purpose) and returns the status.
func rawDo(t *testing.T, e *env, method, path, rawQuery string, body []byte) int {
	u, err := url.Parse(e.base + path)
	if err != nil {
		t.Skip()
	}
	u.RawQuery = rawQuery
	req, err := http.NewRequest(method, u.String(), bytes.NewReader(body))
	if err != nil {
		t.Skip()
	}
	req.Header.Set("Authorization", "Bearer "+adminToken)
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, u, err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode >= 500 {
		t.Fatalf("%s %s %q: %d %s", method, u, body, resp.StatusCode, b)
	}
	return resp.StatusCode
}

// FuzzDeployRequest posts arbitrary deploy bodies: never a 5xx.
func FuzzDeployRequest(f *testing.F) {
	for _, s := range []string{
		`{"name":"f","source":"function handle(e, c) return 1 end","manifest":"{}","dry_run":true}`,
		`{"name":"g","source":"function handle(e, c) return 1 end","triggers":[{"mqtt":"a/{x}"},{"http":{}}],"limits":{"timeout":"1s"},"config":{"a":[1,{"b":null}]}}`,
		`{"name":"f","source":"function handle(event, ctx)\n local x = = 1 end"}`,
		`{"name":"f","source":"\u001bLua"}`,
		`{"name":"f","manifest":"triggers:\n  - cron: '* * *'\n"}`,
		`{"name":"f","limits":{"timeout":"-1s","max_memory_bytes":"99999999999999"}}`,
		`{"name":"f","triggers":[{"timer":"@every 0s"}]}`,
		`{"name":"F"}`, `{"name":1}`, `[]`, `null`, `{`, `{"name":"f","source":"x","sourcee":1}`,
		`{"name":"f","manifest":"a: &a [*a]"}`,
	} {
		f.Add([]byte(s))
	}
	e := fuzzDaemon(f)
	f.Fuzz(func(t *testing.T, body []byte) {
		// Only dry runs and deploys of one name: the store stays small.
		rawDo(t, e, "POST", "/v1/functions", "", body)
	})
}

// FuzzRecordQuery sends arbitrary query strings to the record and
// aggregate queries (and the other GET queries): never a 5xx.
func FuzzRecordQuery(f *testing.F) {
	for _, s := range []string{
		"function=f&order=ORDER_DESC&limit=2",
		"stream=f&from=2026-01-01T00:00:00Z&to=2027-01-01T00:00:00Z",
		"cursor=Ywf&limit=-1", "cursor=%ff%00", "from=yesterday", "to=9999-12-31T23:59:59Z",
		"order=7", "order=ORDER_NOPE", "limit=99999999999", "device=" + string(bytes.Repeat([]byte("d"), 300)),
		"field=temp&bucket=60s", "field=a.b.c&bucket=-5s", "field=temp&bucket=0.0000001s", "field=&bucket=1e99s",
		"function=f&function=g", "a[b]=c", "from.seconds=5", "from.nanos=-1", "=", "&&", "%",
	} {
		f.Add(s)
	}
	e := fuzzDaemon(f)
	f.Fuzz(func(t *testing.T, q string) {
		for _, p := range []string{"/v1/records", "/v1/records:aggregate", "/v1/usage", "/v1/logs", "/v1/deadletters", "/v1/functions/f/state"} {
			rawDo(t, e, "GET", p, q, nil)
		}
	})
}
