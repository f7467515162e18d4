package apiserver_test

import (
	"reflect"
	"strings"
	"testing"
	"time"
	"unicode/utf8"
)

// TestFunctionMadeTextNeverBreaksTheAPI: text a function makes (log lines,
// a string result, state keys, stream names) reaches the API as valid
// UTF-8 or is refused when the function runs; before, a log line cut
// inside a character or a state key with a stray byte made every later
// GET /v1/logs (or the state list, or the records) answer 500, because
// protobuf refuses to marshal invalid UTF-8.
func TestFunctionMadeTextNeverBreaksTheAPI(t *testing.T) {
	e := startDaemon(t, daemonConfig(t.TempDir(), ""))
	deploy := func(name, src string) {
		e.mustCall(200, "POST", "/v1/functions", adminToken, obj{"name": name, "source": src, "manifest": "{}"}, nil)
	}
	// 3,000 euro signs are 9,000 bytes: the 8 KiB cut falls inside one.
	deploy("euro", `function handle(event, ctx)
  log.info(string.rep("\226\130\172", 3000))
  print("raw \255 byte")
  return "not utf-8: \255"
end`)
	var inv obj
	e.mustCall(200, "POST", "/v1/functions/euro:invoke", adminToken, obj{"dry_run": false}, &inv)
	if inv["committed"] != true || !strings.HasPrefix(inv["result"].(string), "not utf-8: ") {
		t.Fatalf("invoke: %v", inv)
	}
	var logs obj
	e.mustCall(200, "GET", "/v1/logs?function=euro", readToken, nil, &logs)
	lines := logs["lines"].([]any)
	if len(lines) != 2 {
		t.Fatalf("logs: %v", logs)
	}
	first := field(logs, "lines.0.msg").(string)
	if !strings.HasSuffix(first, "\u20ac...(truncated)") || len(first) > 8300 || !utf8.ValidString(first) {
		t.Fatalf("the long line: %d bytes, ends %q", len(first), first[max(0, len(first)-30):])
	}
	if got := field(logs, "lines.1.msg"); got != "raw \uFFFD byte" {
		t.Fatalf("the line with a stray byte: %q", got)
	}
	e.mustCall(200, "GET", "/v1/logs", readToken, nil, nil)

	// A state key or a stream name that is not UTF-8 is a runtime error
	// of the function: nothing is committed.
	deploy("badkey", `function handle(event, ctx) state.set("k\255", 1) end`)
	inv = nil
	e.mustCall(200, "POST", "/v1/functions/badkey:invoke", adminToken, obj{"dry_run": false}, &inv)
	if inv["state"] != nil && len(inv["state"].([]any)) > 0 || !strings.Contains(inv["error"].(string), "key is not valid UTF-8") {
		t.Fatalf("invalid state key: %v", inv)
	}
	deploy("badstream", `function handle(event, ctx) emit("s\255", {a = 1}) end`)
	inv = nil
	e.mustCall(200, "POST", "/v1/functions/badstream:invoke", adminToken, obj{"dry_run": false}, &inv)
	if inv["effects"] != nil && len(inv["effects"].([]any)) > 0 || !strings.Contains(inv["error"].(string), "stream name is not valid UTF-8") {
		t.Fatalf("invalid stream name: %v", inv)
	}
	var st, recs, all obj
	e.mustCall(200, "GET", "/v1/functions/badkey/state", readToken, nil, &st)
	e.mustCall(200, "GET", "/v1/records?function=badstream", readToken, nil, &recs)
	if len(st["entries"].([]any)) != 0 || len(recs["records"].([]any)) != 0 {
		t.Fatalf("state %v, records %v", st, recs)
	}
	// The string result is euro's record (stored as it was returned).
	e.mustCall(200, "GET", "/v1/records", readToken, nil, &all)
	if len(all["records"].([]any)) != 1 || field(all, "records.0.function") != "euro" {
		t.Fatalf("records: %v", all)
	}
}

// TestQueryParameterEdges: a sequence of 2^64-1 does not wrap to the
// start, a time range ending at the epoch is refused rather than read as
// open, and the sync dead letters can be filtered and purged by name.
func TestQueryParameterEdges(t *testing.T) {
	e := startDaemon(t, daemonConfig(t.TempDir(), ""))
	e.mustCall(200, "POST", "/v1/functions", adminToken, obj{"name": "f", "manifest": "{}", "source": `function handle(event, ctx)
  log.info("hello")
  emit("s", {a = 1})
  error("dead")
end`}, nil)
	e.mustCall(200, "POST", "/v1/functions", adminToken, obj{"name": "g", "manifest": "{}", "source": `function handle(event, ctx)
  log.info("hello")
  emit("s", {a = 1})
end`}, nil)
	e.mustCall(200, "POST", "/v1/functions/f:invoke", adminToken, obj{"dry_run": false}, nil)
	e.mustCall(200, "POST", "/v1/functions/g:invoke", adminToken, obj{"dry_run": false}, nil)
	var out obj
	e.mustCall(200, "GET", "/v1/logs", readToken, nil, &out)
	if len(out["lines"].([]any)) == 0 {
		t.Fatalf("no logs: %v", out)
	}
	for _, path := range []string{"/v1/logs?after=18446744073709551615", "/v1/logs?function=g&after=18446744073709551615",
		"/v1/deadletters?after=18446744073709551615", "/v1/deadletters?function=f&after=18446744073709551615"} {
		out = nil
		e.mustCall(200, "GET", path, readToken, nil, &out)
		for _, k := range []string{"lines", "dead_letters"} {
			if l, ok := out[k].([]any); ok && len(l) > 0 {
				t.Errorf("%s: %v", path, out)
			}
		}
	}

	e.mustCall(200, "GET", "/v1/records?stream=s", readToken, nil, &out)
	if len(out["records"].([]any)) != 1 {
		t.Fatalf("records: %v", out)
	}
	e.expectStatus(400, "to must be after 1970-01-01T00:00:00Z", "GET", "/v1/records?from=1969-12-31T23:59:59Z&to=1970-01-01T00:00:00Z", readToken, nil)
	e.expectStatus(400, "to must be after", "GET", "/v1/records:aggregate?stream=s&to=1970-01-01T00:00:00Z&bucket=1h", readToken, nil)
	e.expectStatus(400, "to is before from", "GET", "/v1/usage?from=2026-01-02T00:00:00Z&to=2026-01-01T00:00:00Z", readToken, nil)
	// Usage is metered per minute: a bucket of 90s was 1-minute buckets.
	e.expectStatus(400, "bucket 1m30s is not a whole number of minutes", "GET", "/v1/usage?bucket=90s", readToken, nil)
	e.mustCall(200, "GET", "/v1/usage?bucket=120s", readToken, nil, nil)
	now := time.Now().UTC()
	e.mustCall(200, "GET", "/v1/records?from="+now.Add(-time.Hour).Format(time.RFC3339)+"&to="+now.Add(time.Hour).Format(time.RFC3339), readToken, nil, &out)
	if len(out["records"].([]any)) != 1 {
		t.Fatalf("records in the last hour: %v", out)
	}

	e.mustCall(200, "GET", "/v1/deadletters?function=sync:up", readToken, nil, nil)
	e.mustCall(200, "POST", "/v1/deadletters:purge", adminToken, obj{"function": "sync:up"}, nil)
	e.expectStatus(400, "invalid sync target name", "GET", "/v1/deadletters?function=sync:Up!", readToken, nil)
}

// TestInvokeShowsBlobEffects: an invocation's blob.write and blob.delete
// are in the invoke response (the API had no kind for them: the CLI
// counted them and printed nothing).
func TestInvokeShowsBlobEffects(t *testing.T) {
	e := startDaemon(t, daemonConfig(t.TempDir(), "blobs: {buckets: {thumbs: {}, photos: {}}}\n"))
	e.mustCall(200, "POST", "/v1/functions", adminToken, obj{"name": "bw", "manifest": "{}", "source": `function handle(event, ctx)
  blob.write("thumbs", "a.json", "{\"w\":1}", "application/json")
  blob.delete("photos", "old.jpg")
end`}, nil)
	var inv obj
	e.mustCall(200, "POST", "/v1/functions/bw:invoke", adminToken, obj{"dry_run": true}, &inv)
	effects, _ := inv["effects"].([]any)
	if len(effects) != 2 {
		t.Fatalf("effects: %v", inv)
	}
	w, d := field(inv, "effects.0.blob_write"), field(inv, "effects.1.blob_delete")
	want := obj{"bucket": "thumbs", "name": "a.json", "content_type": "application/json", "data": "eyJ3IjoxfQ=="}
	if !reflect.DeepEqual(w, want) || !reflect.DeepEqual(d, map[string]any{"bucket": "photos", "name": "old.jpg"}) {
		t.Fatalf("blob effects: %v / %v", w, d)
	}
}
