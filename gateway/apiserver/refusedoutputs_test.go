package apiserver_test

import (
	"fmt"
	"testing"
	"time"
)

// quotaConfig is the test daemon's configuration with one store quota
// (quota: a line under store.quotas, e.g. "state: {max_bytes: 1KiB}").
func quotaConfig(dir, quota string) string {
	return fmt.Sprintf(`gateway_id: apitest
data_dir: %q
log: {level: warn}
mqtt:
  embedded: {listen: "127.0.0.1:0"}
api:
  listen: "127.0.0.1:0"
  max_body_bytes: 1MiB
  tokens:
    - {name: admin1, scope: admin, hash: %q}
    - {name: reader, scope: read, hash: %q}
store:
  durability: interval
  quotas:
    %s
pipeline:
  retry: {max_attempts: 1, initial_backoff: 10ms, max_backoff: 10ms}
`, dir, adminHash, readHash, quota)
}

// An invocation whose outputs the store refuses for good (here: state
// over the function's quota) ran: on the MQTT path it is dead-lettered
// with its logs and its usage (a failed invocation). Over HTTP the client
// is told it failed, but the invocation leaves nothing: no log line, no
// usage (its steps and wall time are never metered), not even counted as
// failed, however often a caller repeats it.
func TestHTTPFunctionRefusedCommitKeepsLogsAndUsage(t *testing.T) {
	e := startDaemon(t, quotaConfig(t.TempDir(), "state: {max_bytes: 1KiB}"))
	src := `function handle(event, ctx)
  log.info("about to write", {trigger = event.trigger})
  state.set("big", string.rep("x", 4096))
  return "stored"
end
`
	e.mustCall(200, "POST", "/v1/functions", adminToken, obj{"name": "filler", "source": src,
		"manifest": "triggers:\n  - mqtt: devices/{device}/fill\n  - http: {methods: [POST]}\n"}, nil)

	type logs struct {
		Lines []struct {
			Msg    string         `json:"msg"`
			Fields map[string]any `json:"fields"`
		} `json:"lines"`
	}
	count := func(trig string) int {
		var l logs
		e.mustCall(200, "GET", "/v1/logs?function=filler", readToken, nil, &l)
		n := 0
		for _, ln := range l.Lines {
			if ln.Fields["trigger"] == trig {
				n++
			}
		}
		return n
	}

	// MQTT: dead-lettered, its log line kept.
	c := connect(t, e.mqtt, "refused-fill")
	publish(t, c, "devices/d1/fill", "{}")
	waitFor(t, 20*time.Second, "the MQTT event's log line", func() bool { return count("mqtt") == 1 })

	// HTTP: the same refused commit.
	resp, body := e.fnCall("POST", "/fn/filler/x", readToken, "hi")
	if resp.StatusCode < 400 {
		t.Fatalf("/fn: %d %s", resp.StatusCode, body)
	}
	var u struct {
		Usage []struct {
			Invocations string `json:"invocations"`
			Errors      string `json:"errors"`
		} `json:"usage"`
	}
	e.mustCall(200, "GET", "/v1/usage?function=filler&bucket=3600s", readToken, nil, &u)
	inv, errs := 0, 0
	for _, r := range u.Usage {
		var a, b int
		fmt.Sscan(r.Invocations, &a)
		fmt.Sscan(r.Errors, &b)
		inv, errs = inv+a, errs+b
	}
	if n := count("http"); n != 1 || inv != 2 || errs != 2 {
		t.Fatalf("after one MQTT event and one HTTP call, both refused by the state quota: %d log lines of the HTTP call (want 1), usage %d invocations %d errors (want 2, 2); /fn answered %d %s",
			n, inv, errs, resp.StatusCode, body)
	}
}

// An HTTP function that exists and ran, but wrote a blob to a bucket that
// does not exist (an output the store refuses for good; dead-lettered with
// ErrOutputsRefused on the MQTT path), is answered 404 NOT_FOUND: the
// status /fn gives for "no function NAME with an http trigger". A client
// (and `moongate fn invoke --commit`, exit 3) is told the function does
// not exist. A failing function gives 502 (docs/api.md).
func TestHTTPFunctionRefusedBlobIsNot404(t *testing.T) {
	e := startDaemon(t, daemonConfig(t.TempDir(), ""))
	e.mustCall(200, "POST", "/v1/functions", adminToken, obj{"name": "saver",
		"source":   `function handle(event, ctx) blob.write("nosuchbucket", "a.txt", event.body or "x") return "saved" end`,
		"triggers": []obj{{"http": obj{"methods": []string{"POST"}}}}}, nil)
	resp, body := e.fnCall("POST", "/fn/saver/x", readToken, "hi")
	t.Logf("/fn: %d %s", resp.StatusCode, body)
	if resp.StatusCode == 404 {
		t.Fatalf("/fn/saver (deployed, ran) answered 404: %s", body)
	}
	code, b := e.call("POST", "/v1/functions/saver:invoke", adminToken, obj{"dry_run": false})
	t.Logf("invoke: %d %s", code, b)
	if code == 404 {
		t.Fatalf("invoke of saver (deployed, ran) answered 404: %s", b)
	}
}
