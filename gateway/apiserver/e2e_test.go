package apiserver_test

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"
)

// The test function: a reading in, a record out (with the version that
// made it), a log line and a counter; {"fail": true} fails in versions
// below 3.
func telemetrySource(version int) string {
	return fmt.Sprintf(`
function handle(event, ctx)
  local r = json.decode(event.payload)
  log.info("reading", {temp = r.temp, device = event.device})
  state.incr("count")
  if r.fail and %d < 3 then error("cannot handle this reading") end
  return {temp = r.temp, v = %d}
end
`, version, version)
}

const telemetryManifest = "description: test telemetry\ntriggers:\n  - mqtt: devices/{device}/telemetry\n"

type obj = map[string]any

// field walks a decoded JSON value by keys and indexes ("records.0.data.v").
func field(v any, path string) any {
	for _, p := range strings.Split(path, ".") {
		switch x := v.(type) {
		case map[string]any:
			v = x[p]
		case []any:
			var i int
			if _, err := fmt.Sscan(p, &i); err != nil || i < 0 || i >= len(x) {
				return nil
			}
			v = x[i]
		default:
			return nil
		}
	}
	return v
}

func (e *env) records(query string) []any {
	e.t.Helper()
	var out obj
	e.mustCall(200, "GET", "/v1/records?"+query, readToken, nil, &out)
	recs, _ := out["records"].([]any)
	return recs
}

func (e *env) waitRecords(query string, n int) []any {
	e.t.Helper()
	var recs []any
	waitFor(e.t, 20*time.Second, fmt.Sprintf("%d records for %s", n, query), func() bool {
		recs = e.records(query)
		return len(recs) >= n
	})
	return recs
}

func TestEndToEnd(t *testing.T) {
	e := startDaemon(t, daemonConfig(t.TempDir(), ""))
	dev := connect(t, e.mqtt, "d1")

	// Deploy version 1 with the structured fields.
	var dep obj
	e.mustCall(200, "POST", "/v1/functions", adminToken, obj{
		"name": "telemetry", "source": telemetrySource(1), "description": "test telemetry",
		"triggers": []obj{{"mqtt": "devices/{device}/telemetry"}},
		"limits":   obj{"timeout": "2s", "max_memory_bytes": "8388608"},
		"config":   obj{"unit": "C"},
	}, &dep)
	if field(dep, "function.version") != "1" || field(dep, "function.running") != true || field(dep, "function.triggers.0.mqtt") != "devices/{device}/telemetry" {
		t.Fatalf("deploy v1: %v", dep)
	}
	publish(t, dev, "devices/d1/telemetry", `{"temp": 20}`)
	recs := e.waitRecords("function=telemetry", 1)
	if field(recs[0], "data.v") != 1.0 || field(recs[0], "device") != "d1" || field(recs[0], "data.temp") != 20.0 {
		t.Fatalf("record of v1: %v", recs[0])
	}

	// Version 2 from a manifest; the same deploy again changes nothing.
	v2 := obj{"name": "telemetry", "source": telemetrySource(2), "manifest": telemetryManifest}
	e.mustCall(200, "POST", "/v1/functions", adminToken, v2, &dep)
	if field(dep, "function.version") != "2" || field(dep, "unchanged") != false {
		t.Fatalf("deploy v2: %v", dep)
	}
	e.mustCall(200, "POST", "/v1/functions", adminToken, v2, &dep)
	if field(dep, "function.version") != "2" || field(dep, "unchanged") != true {
		t.Fatalf("deploy v2 again: %v", dep)
	}
	// A dry run validates and stores nothing.
	e.mustCall(200, "POST", "/v1/functions", adminToken, obj{"name": "telemetry", "source": telemetrySource(9), "manifest": telemetryManifest, "dry_run": true}, &dep)
	if field(dep, "dry_run") != true || field(dep, "function.version") != "0" {
		t.Fatalf("dry run: %v", dep)
	}
	publish(t, dev, "devices/d1/telemetry", `{"temp": 21}`)
	recs = e.waitRecords("function=telemetry", 2)
	if field(recs[1], "data.v") != 2.0 {
		t.Fatalf("record of v2: %v", recs[1])
	}

	var vs obj
	e.mustCall(200, "GET", "/v1/functions/telemetry/versions", readToken, nil, &vs)
	if field(vs, "versions.0.active") != false || field(vs, "versions.1.active") != true || field(vs, "versions.2") != nil {
		t.Fatalf("versions: %v", vs)
	}
	var fn obj
	e.mustCall(200, "GET", "/v1/functions/telemetry", readToken, nil, &fn)
	if fn["source"] != telemetrySource(2) || fn["manifest"] != telemetryManifest || fn["description"] != "test telemetry" {
		t.Fatalf("get: %v", fn)
	}
	e.mustCall(200, "GET", "/v1/functions/telemetry?version=1", readToken, nil, &fn)
	if fn["source"] != telemetrySource(1) || fn["active"] != false {
		t.Fatalf("get v1: %v", fn)
	}

	// Roll back to version 1 (the one below the active one).
	var rb obj
	e.mustCall(200, "POST", "/v1/functions/telemetry:rollback", adminToken, obj{}, &rb)
	if field(rb, "function.version") != "1" || field(rb, "function.running") != true {
		t.Fatalf("rollback: %v", rb)
	}
	publish(t, dev, "devices/d1/telemetry", `{"temp": 22}`)
	recs = e.waitRecords("function=telemetry", 3)
	if field(recs[2], "data.v") != 1.0 {
		t.Fatalf("record after rollback: %v", recs[2])
	}
	var list obj
	e.mustCall(200, "GET", "/v1/functions", readToken, nil, &list)
	if field(list, "functions.0.name") != "telemetry" || field(list, "functions.0.version") != "1" || field(list, "functions.0.source") != "" {
		t.Fatalf("list: %v", list)
	}

	// Record queries: newest first, paged.
	var page obj
	e.mustCall(200, "GET", "/v1/records?function=telemetry&order=ORDER_DESC&limit=2", readToken, nil, &page)
	if field(page, "records.0.data.temp") != 22.0 || field(page, "records.1.data.temp") != 21.0 || page["next_cursor"] == "" {
		t.Fatalf("page 1: %v", page)
	}
	e.mustCall(200, "GET", "/v1/records?function=telemetry&order=ORDER_DESC&limit=2&cursor="+page["next_cursor"].(string), readToken, nil, &page)
	if field(page, "records.0.data.temp") != 20.0 || field(page, "records.1") != nil || page["next_cursor"] != "" {
		t.Fatalf("page 2: %v", page)
	}
	from := time.Now().Add(-time.Hour).UTC().Format(time.RFC3339)
	var agg obj
	// One bucket (no bucket parameter): hour buckets start on whole hours,
	// and the three records may fall on both sides of one.
	e.mustCall(200, "GET", "/v1/records:aggregate?stream=telemetry&field=temp&from="+from, readToken, nil, &agg)
	if field(agg, "buckets.0.count") != "3" || field(agg, "buckets.0.mean") != 21.0 || field(agg, "buckets.0.max") != 22.0 {
		t.Fatalf("aggregate: %v", agg)
	}

	// Invoke: a dry run by default, committed when asked.
	var inv obj
	e.mustCall(200, "POST", "/v1/functions/telemetry:invoke", adminToken, obj{"event": obj{"payload_text": `{"temp": 5}`, "captures": obj{"device": "d9"}}}, &inv)
	if field(inv, "result.v") != 1.0 || inv["committed"] != false || field(inv, "logs.0.msg") != "reading" || field(inv, "cost.outcome") != "ok" ||
		field(inv, "state.0.op") != "incr" || inv["result_kind"] != "RESULT_KIND_JSON" {
		t.Fatalf("invoke: %v", inv)
	}
	if n := len(e.records("device=d9")); n != 0 {
		t.Fatalf("a dry run stored %d records", n)
	}
	e.mustCall(200, "POST", "/v1/functions/telemetry:invoke", adminToken, obj{"event": obj{"payload_text": `{"temp": 6}`, "captures": obj{"device": "d9"}}, "dry_run": false}, &inv)
	if inv["committed"] != true {
		t.Fatalf("invoke commit: %v", inv)
	}
	if recs := e.records("device=d9"); len(recs) != 1 || field(recs[0], "data.temp") != 6.0 {
		t.Fatalf("committed invoke: records %v", recs)
	}
	e.mustCall(200, "POST", "/v1/functions/telemetry:invoke", adminToken, obj{"event": obj{"payload_text": `{"fail": true}`}}, &inv)
	if !strings.Contains(fmt.Sprint(inv["error"]), "cannot handle this reading") || field(inv, "cost.outcome") != "error" {
		t.Fatalf("failing invoke: %v", inv)
	}

	// State written by the function, and through the API.
	var st obj
	e.mustCall(200, "GET", "/v1/functions/telemetry/state/count", readToken, nil, &st)
	if st["value"] != 4.0 { // three MQTT events and one committed invoke
		t.Fatalf("state count: %v", st)
	}
	e.mustCall(200, "PUT", "/v1/functions/telemetry/state/cfg%2Fa", adminToken, obj{"limit": 3}, &st)
	e.mustCall(200, "GET", "/v1/functions/telemetry/state/cfg%2Fa", readToken, nil, &st)
	if field(st, "value.limit") != 3.0 || st["key"] != "cfg/a" {
		t.Fatalf("state put/get: %v", st)
	}
	e.mustCall(200, "GET", "/v1/functions/telemetry/state?prefix=cfg", readToken, nil, &st)
	if field(st, "entries.0.key") != "cfg/a" || field(st, "entries.1") != nil {
		t.Fatalf("state list: %v", st)
	}
	e.mustCall(200, "DELETE", "/v1/functions/telemetry/state/cfg%2Fa", adminToken, nil, nil)
	e.expectStatus(404, "state key", "GET", "/v1/functions/telemetry/state/cfg%2Fa", readToken, nil)

	// A failing event becomes a dead letter; version 3 handles it on replay.
	publish(t, dev, "devices/d1/telemetry", `{"temp": 99, "fail": true}`)
	var dls obj
	waitFor(t, 20*time.Second, "a dead letter", func() bool {
		e.mustCall(200, "GET", "/v1/deadletters?function=telemetry", readToken, nil, &dls)
		return field(dls, "dead_letters.0") != nil
	})
	seq := field(dls, "dead_letters.0.seq").(string)
	if !strings.Contains(fmt.Sprint(field(dls, "dead_letters.0.error")), "cannot handle") || field(dls, "dead_letters.0.event.payload_text") != `{"temp": 99, "fail": true}` {
		t.Fatalf("dead letter: %v", dls)
	}
	e.mustCall(200, "POST", "/v1/functions", adminToken, obj{"name": "telemetry", "source": telemetrySource(3), "manifest": telemetryManifest}, &dep)
	var rep obj
	e.mustCall(200, "POST", "/v1/deadletters:replay", adminToken, obj{"seq": seq}, &rep)
	if rep["replayed"] != "1" {
		t.Fatalf("replay: %v", rep)
	}
	recs = e.waitRecords("function=telemetry&device=d1", 4)
	if field(recs[3], "data.v") != 3.0 || field(recs[3], "data.temp") != 99.0 {
		t.Fatalf("replayed record: %v", recs[3])
	}
	e.mustCall(200, "GET", "/v1/deadletters", readToken, nil, &dls)
	if field(dls, "dead_letters.0") != nil {
		t.Fatalf("dead letter left after replay: %v", dls)
	}
	e.expectStatus(404, "dead letter", "POST", "/v1/deadletters:replay", adminToken, obj{"seq": seq})

	// Follow the logs while events arrive, from the last line seen.
	var seen obj
	e.mustCall(200, "GET", "/v1/logs?function=telemetry&limit=10000", readToken, nil, &seen)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, "GET", e.base+"/v1/logs:follow?function=telemetry&after="+seen["next_after"].(string), nil)
	req.Header.Set("Authorization", "Bearer "+readToken)
	lines := make(chan obj, 16)
	go func() {
		defer close(lines)
		resp, err := e.client.Do(req)
		if err != nil {
			return
		}
		defer resp.Body.Close()
		if resp.StatusCode != 200 {
			t.Errorf("follow: status %d", resp.StatusCode)
			return
		}
		sc := bufio.NewScanner(resp.Body)
		for sc.Scan() {
			var m obj
			if json.Unmarshal(sc.Bytes(), &m) == nil {
				lines <- m
			}
		}
	}()
	for i, temp := range []int{30, 31} {
		publish(t, dev, "devices/d1/telemetry", fmt.Sprintf(`{"temp": %d}`, temp))
		select {
		case m := <-lines:
			if field(m, "result.msg") != "reading" || field(m, "result.fields.temp") != float64(temp) || field(m, "result.function") != "telemetry" {
				t.Fatalf("followed line %d: %v", i, m)
			}
		case <-time.After(20 * time.Second):
			t.Fatalf("no log line followed for event %d", i)
		}
	}
	cancel()
	var logs obj
	e.mustCall(200, "GET", "/v1/logs?function=telemetry&limit=1000", readToken, nil, &logs)
	if n := len(logs["lines"].([]any)); n < 6 {
		t.Fatalf("logs: %d lines", n)
	}

	// Usage, sync, system, metrics.
	var usage obj
	e.mustCall(200, "GET", "/v1/usage?function=telemetry&bucket=3600s", readToken, nil, &usage)
	if field(usage, "usage.0.function") != "telemetry" || field(usage, "usage.0.invocations") == "0" {
		t.Fatalf("usage: %v", usage)
	}
	var syncSt, sys obj
	e.mustCall(200, "GET", "/v1/sync", readToken, nil, &syncSt)
	if field(syncSt, "targets.0") != nil {
		t.Fatalf("sync: %v", syncSt)
	}
	e.mustCall(200, "GET", "/v1/system", readToken, nil, &sys)
	if sys["version"] != "dev" || sys["gateway_id"] != "apitest" || field(sys, "memory.total_bytes") == "0" || field(sys, "gateway.ready") != true || field(sys, "disk.total_bytes") == nil {
		t.Fatalf("system: %v", sys)
	}
	code, body := e.call("GET", "/metrics", "", nil)
	if code != 200 || !strings.Contains(string(body), "moongate_invocations_committed_total ") ||
		!strings.Contains(string(body), `moongate_api_calls_total{method="/moongate.v1.FunctionService/DeployFunction",code="OK"}`) {
		t.Fatalf("metrics: %d\n%s", code, body)
	}
	for _, name := range []string{"moongate_go_memory_limit_bytes ", "moongate_go_heap_live_bytes ", "moongate_go_gc_cpu_seconds_total "} {
		if !strings.Contains(string(body), "\n"+name) {
			t.Errorf("metrics: no %s\n%s", name, body)
		}
	}
	// The store's commit counters: the deploys and the invocation were
	// written in group commits of at least one write each.
	counterOf := func(name string) float64 {
		m := regexp.MustCompile(`(?m)^` + name + ` ([0-9.e+-]+)$`).FindStringSubmatch(string(body))
		if m == nil {
			t.Fatalf("metrics: no %s\n%s", name, body)
		}
		v, err := strconv.ParseFloat(m[1], 64)
		if err != nil {
			t.Fatalf("metrics: %s: %v", name, err)
		}
		return v
	}
	if c, w := counterOf("moongate_store_commits_total"), counterOf("moongate_store_commit_writes_total"); c < 1 || w < c {
		t.Errorf("metrics: %v commits of %v writes", c, w)
	}
	// The committer's time: some was spent, Badger's commit is part of it,
	// and the writes waited at least their own commit.
	if busy, txn, wait := counterOf("moongate_store_commit_busy_seconds_total"), counterOf("moongate_store_txn_commit_seconds_total"),
		counterOf("moongate_store_write_wait_seconds_total"); busy <= 0 || txn <= 0 || txn > busy || wait < txn {
		t.Errorf("metrics: committer busy %vs, in Badger's commit %vs, writes waited %vs", busy, txn, wait)
	}
	sample := regexp.MustCompile(`^[a-zA-Z_:][a-zA-Z0-9_:]*(\{([a-zA-Z_][a-zA-Z0-9_]*="([^"\\]|\\.)*",?)*\})? (-?[0-9.]+(e[+-][0-9]+)?|\+Inf|-Inf|NaN)$`)
	for _, l := range strings.Split(strings.TrimSpace(string(body)), "\n") {
		if !strings.HasPrefix(l, "# HELP ") && !strings.HasPrefix(l, "# TYPE ") && !sample.MatchString(l) {
			t.Errorf("metrics: malformed line %q", l)
		}
	}

	// Delete.
	var del obj
	e.mustCall(200, "DELETE", "/v1/functions/telemetry", adminToken, nil, &del)
	if del["deleted_versions"] != "3" {
		t.Fatalf("delete: %v", del)
	}
	e.expectStatus(404, "telemetry", "GET", "/v1/functions/telemetry", readToken, nil)
	e.expectStatus(404, "telemetry", "POST", "/v1/functions/telemetry:invoke", adminToken, obj{})
}
