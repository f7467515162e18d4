package main

import (
	"bytes"
	"context"
	"encoding/json"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

func writeFiles(t *testing.T, files map[string]string) string {
	t.Helper()
	dir := t.TempDir()
	for name, body := range files {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

const refLua = `function handle(event, ctx)
  local r = json.decode(event.payload)
  if r.temp == nil then return nil end
  r.temp_f = r.temp * 1.8 + 32
  if r.temp > ctx.config.threshold then mqtt.publish("devices/" .. event.device .. "/cmd", json.encode({fan = "on"})) end
  log.info("converted", {device = event.device})
  r.seen = state.incr("seen")
  return r
end
`

func TestFnTestText(t *testing.T) {
	dir := writeFiles(t, map[string]string{
		"ref.lua":     refLua,
		"event.json":  `{"id": "e1", "topic": "devices/d1/t", "payload": {"temp": 85}, "captures": {"device": "d1"}, "trigger": "mqtt"}`,
		"config.json": `{"threshold": 80}`,
		"state.json":  `{"seen": 41}`,
	})
	var out, errb bytes.Buffer
	code := run(context.Background(), []string{"fn", "test", filepath.Join(dir, "ref.lua"), "--event", filepath.Join(dir, "event.json"),
		"--config", filepath.Join(dir, "config.json"), "--state", filepath.Join(dir, "state.json")}, &out, &errb)
	if code != exitOK {
		t.Fatalf("exit %d: %s %s", code, out.String(), errb.String())
	}
	for _, want := range []string{
		`result (json): {"seen":42,"temp":85,"temp_f":185}`,
		`publish devices/d1/cmd qos=0 retain=false: {"fan":"on"}`,
		`incr seen by 1 -> 42`,
		`INFO  converted {"device":"d1"}`,
		`cost: outcome=ok`,
	} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("output lacks %q:\n%s", want, out.String())
		}
	}
}

func TestFnTestJSONAndErrors(t *testing.T) {
	dir := writeFiles(t, map[string]string{
		"ref.lua":    refLua,
		"fail.lua":   "function handle(event, ctx)\n  log.warn('going down')\n  error('boom')\nend\n",
		"syntax.lua": "function handle(event, ctx)\n  return = 1\nend\n",
		"loop.lua":   "function handle() while true do end end",
		"event.json": `{"payload": "{\"temp\": 20}", "captures": {"device": "d2"}}`,
		"bad.json":   `{"payload": 1, "unknown_field": true}`,
		"cfg.json":   `{"threshold": 10}`,
	})
	p := func(n string) string { return filepath.Join(dir, n) }
	var out, errb bytes.Buffer
	code := run(context.Background(), []string{"fn", "test", "--json", "--event", p("event.json"), "--config", p("cfg.json"), p("ref.lua")}, &out, &errb)
	if code != exitOK {
		t.Fatalf("exit %d: %s", code, errb.String())
	}
	var rep struct {
		Outcome string
		Result  map[string]any
		Effects []map[string]any
		Cost    map[string]any
	}
	if err := json.Unmarshal(out.Bytes(), &rep); err != nil {
		t.Fatalf("%v: %s", err, out.String())
	}
	if rep.Outcome != "ok" || rep.Result["temp_f"] != 68.0 || len(rep.Effects) != 1 {
		t.Fatalf("report %+v", rep)
	}
	// The cost has the API's key names (docs/api.md), wall in seconds
	// ("0.000078927s"); it had Go's field names and nanoseconds.
	wantKeys := []string{"bytes_in", "bytes_out", "effects", "outcome", "peak_memory_bytes", "steps", "wall"}
	gotKeys := slices.Sorted(maps.Keys(rep.Cost))
	if !slices.Equal(gotKeys, wantKeys) {
		t.Fatalf("cost keys %v, want %v", gotKeys, wantKeys)
	}
	if w, _ := rep.Cost["wall"].(string); !strings.HasSuffix(w, "s") || rep.Cost["steps"].(float64) <= 0 || rep.Cost["outcome"] != "ok" {
		t.Fatalf("cost %v", rep.Cost)
	} else if d, err := time.ParseDuration(w); err != nil || d <= 0 || d > time.Minute {
		t.Fatalf("cost wall %q: %v", w, err)
	}

	cases := []struct {
		args []string
		code int
		want string
	}{
		{[]string{p("fail.lua"), "--event", p("event.json")}, exitFailure, "fail:3: boom"},
		{[]string{p("syntax.lua"), "--event", p("event.json")}, exitFailure, "syntax:2:"},
		{[]string{p("loop.lua"), "--event", p("event.json"), "--timeout", "50ms"}, exitFailure, "timeout (50ms)"},
		{[]string{p("ref.lua"), "--event", p("bad.json")}, exitUsage, "unknown field"},
		{[]string{p("ref.lua")}, exitUsage, "--event"},
		{[]string{p("ref.lua"), p("fail.lua"), "--event", p("event.json")}, exitUsage, "exactly one"},
		{[]string{p("ref.lua"), "--event", p("event.json"), "--nope"}, exitUsage, "nope"},
		// Missing or malformed input files are bad input: exit 2, as docs/cli.md defines.
		{[]string{p("missing.lua"), "--event", p("event.json")}, exitUsage, "no such file"},
		{[]string{p("ref.lua"), "--event", p("missing.json")}, exitUsage, "no such file"},
		{[]string{p("ref.lua"), "--event", p("event.json"), "--config", p("missing.json")}, exitUsage, "no such file"},
		{[]string{p("ref.lua"), "--event", p("event.json"), "--state", p("missing.json")}, exitUsage, "no such file"},
		{[]string{p("ref.lua"), "--event", p("event.json"), "--config", p("fail.lua")}, exitUsage, "fail.lua"},
		{[]string{p("ref.lua"), "--event", p("event.json"), "--manifest", p("missing.yaml")}, exitUsage, "no such file"},
	}
	for _, c := range cases {
		out.Reset()
		errb.Reset()
		code := run(context.Background(), append([]string{"fn", "test"}, c.args...), &out, &errb)
		if code != c.code || !strings.Contains(errb.String()+out.String(), c.want) {
			t.Errorf("%v: exit %d (want %d), output %s%s (want %q)", c.args, code, c.code, out.String(), errb.String(), c.want)
		}
	}
	// A failing function still shows its logs and cost.
	out.Reset()
	run(context.Background(), []string{"fn", "test", p("fail.lua"), "--event", p("event.json")}, &out, &errb)
	if !strings.Contains(out.String(), "WARN  going down") || !strings.Contains(out.String(), "outcome=error") {
		t.Errorf("failure output:\n%s", out.String())
	}
}

// TestFnTestBlobs: --blob makes a file readable through blob.read; a blob
// not given is an error the function sees; a malformed --blob is exit 2.
func TestFnTestBlobs(t *testing.T) {
	dir := writeFiles(t, map[string]string{
		"b.lua": `function handle(event, ctx)
  local s, size = blob.read("docs", "a.txt", 0, 5)
  blob.write("docs", "b.txt", string.upper(s), "text/plain")
  local ok = pcall(blob.read, "docs", "missing", 0, 1)
  return {head = s, size = size, missing_ok = ok}
end
`,
		"event.json": `{"id": "e1", "trigger": "upload", "payload": {"bucket": "docs", "name": "a.txt"}}`,
		"a.txt":      "hello blobs",
	})
	var out, errb bytes.Buffer
	code := run(context.Background(), []string{"fn", "test", filepath.Join(dir, "b.lua"), "--event", filepath.Join(dir, "event.json"),
		"--blob", "docs/a.txt=" + filepath.Join(dir, "a.txt"), "--json"}, &out, &errb)
	if code != exitOK {
		t.Fatalf("exit %d: %s", code, errb.String())
	}
	for _, want := range []string{`"head": "hello"`, `"size": 11`, `"missing_ok": false`, `"kind": "blob.write"`, `"payload": "HELLO"`} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("report lacks %s:\n%s", want, out.String())
		}
	}
	// The text report names blob effects (they were printed as "emit : ").
	out.Reset()
	if err := os.WriteFile(filepath.Join(dir, "d.lua"), []byte(`function handle(event, ctx)
  blob.write("thumbs", "a.json", "hello", "application/json")
  blob.delete("photos", "old.jpg")
end
`), 0o600); err != nil {
		t.Fatal(err)
	}
	if code := run(context.Background(), []string{"fn", "test", filepath.Join(dir, "d.lua"), "--event", filepath.Join(dir, "event.json")}, &out, &errb); code != exitOK {
		t.Fatalf("exit %d: %s", code, errb.String())
	}
	for _, want := range []string{"  blob.write thumbs/a.json (application/json, 5 bytes): hello\n", "  blob.delete photos/old.jpg\n"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("text report lacks %q:\n%s", want, out.String())
		}
	}
	if strings.Contains(out.String(), "emit") {
		t.Errorf("text report shows blob effects as emits:\n%s", out.String())
	}
	if code := run(context.Background(), []string{"fn", "test", filepath.Join(dir, "b.lua"), "--event", filepath.Join(dir, "event.json"),
		"--blob", "nobucket"}, &out, &errb); code != exitUsage {
		t.Fatalf("malformed --blob: exit %d", code)
	}
}

// TestFnTestLikeDaemon: an event without id or ts gets a generated id and
// the current time, as on the gateway; the limits and config of the
// function's manifest (NAME.yaml next to FILE.lua, or --manifest) apply.
func TestFnTestLikeDaemon(t *testing.T) {
	now := time.UnixMilli(1_790_000_000_123)
	oldNow, oldID := fnTestNow, fnTestEventID
	fnTestNow = func() time.Time { return now }
	fnTestEventID = func() string { return "0a1b2c3d4e5f-1" }
	t.Cleanup(func() { fnTestNow, fnTestEventID = oldNow, oldID })

	dir := writeFiles(t, map[string]string{
		"show.lua":   "function handle(event, ctx) return {id = event.id, ts = event.ts, mode = ctx.config.mode} end\n",
		"show.yaml":  "triggers:\n  - mqtt: a/b\nconfig:\n  mode: manifest\n",
		"loop.lua":   "function handle() while true do end end\n",
		"loop.yaml":  "triggers:\n  - mqtt: a/b\nlimits:\n  timeout: 30ms\n",
		"other.yaml": "triggers:\n  - mqtt: a/b\nlimits:\n  max_steps: 1000\n",
		"bad.yaml":   "triggers:\n  - mqtt: a/b\nlimits:\n  max_stepz: 1\n",
		"empty.json": `{}`,
		"full.json":  `{"id": "e7", "ts": 42}`,
		"cfg.json":   `{"mode": "flag"}`,
	})
	p := func(n string) string { return filepath.Join(dir, n) }
	fnTest := func(args ...string) (string, string, int) {
		var out, errb bytes.Buffer
		code := run(context.Background(), append([]string{"fn", "test"}, args...), &out, &errb)
		return out.String(), errb.String(), code
	}
	out, errs, code := fnTest(p("show.lua"), "--event", p("empty.json"))
	if code != exitOK || !strings.Contains(out, `"id":"0a1b2c3d4e5f-1"`) || !strings.Contains(out, `"ts":1790000000123`) ||
		!strings.Contains(out, `"mode":"manifest"`) {
		t.Errorf("event without id and ts: exit %d\n%s%s", code, out, errs)
	}
	if !strings.Contains(errs, "no id: using 0a1b2c3d4e5f-1") || !strings.Contains(errs, "no ts: using now") {
		t.Errorf("no note of the filled fields: %q", errs)
	}
	out, errs, code = fnTest(p("show.lua"), "--event", p("full.json"), "--config", p("cfg.json"))
	if code != exitOK || !strings.Contains(out, `"id":"e7"`) || !strings.Contains(out, `"ts":42`) ||
		!strings.Contains(out, `"mode":"flag"`) || strings.Contains(errs, "note") {
		t.Errorf("event with id and ts: exit %d\n%s%s", code, out, errs)
	}
	// The sibling manifest's timeout (30ms), not the default 1s: the error
	// names the timeout that applied.
	out, errs, code = fnTest(p("loop.lua"), "--event", p("full.json"))
	if code != exitFailure || !strings.Contains(errs+out, "timeout (30ms)") {
		t.Errorf("loop.lua with loop.yaml: exit %d\n%s%s", code, out, errs)
	}
	// --timeout overrides the manifest's timeout.
	out, errs, code = fnTest(p("loop.lua"), "--event", p("full.json"), "--timeout", "20ms")
	if code != exitFailure || !strings.Contains(errs+out, "timeout (20ms)") {
		t.Errorf("--timeout over the manifest: exit %d\n%s%s", code, out, errs)
	}
	// --manifest names another file: its max_steps apply.
	out, errs, code = fnTest(p("loop.lua"), "--event", p("full.json"), "--manifest", p("other.yaml"))
	if code != exitFailure || !strings.Contains(errs+out, "step budget exceeded (1000 steps)") {
		t.Errorf("--manifest other.yaml: exit %d\n%s%s", code, out, errs)
	}
	// An invalid manifest is bad input.
	if out, errs, code = fnTest(p("loop.lua"), "--event", p("full.json"), "--manifest", p("bad.yaml")); code != exitUsage || !strings.Contains(errs, "max_stepz") {
		t.Errorf("invalid manifest: exit %d\n%s%s", code, out, errs)
	}
}

// fn test builds the function from its manifest as the daemon does
// (gateway.FunctionFromManifest): a manifest the daemon would refuse (its
// cross-field checks) is bad input, not run with half its settings.
func TestFnTestManifestCheckedLikeDaemon(t *testing.T) {
	dir := writeFiles(t, map[string]string{
		"f.lua":  "function handle() return {ok = true} end\n",
		"f.yaml": "triggers:\n  - mqtt: a/b\nmin_instances: 9\n", // over the default max_concurrency (4)
		"e.json": `{"id": "e1", "ts": 1}`,
	})
	var out, errb bytes.Buffer
	code := run(context.Background(), []string{"fn", "test", filepath.Join(dir, "f.lua"), "--event", filepath.Join(dir, "e.json")}, &out, &errb)
	if code != exitUsage || !strings.Contains(errb.String(), "manifest") {
		t.Fatalf("exit %d\n%s%s", code, out.String(), errb.String())
	}
	// A result limit over what the store takes in one value: a 2 MiB
	// result passed fn test (and a dry run) and was dead-lettered on the
	// gateway. Refused like the daemon refuses it at deploy.
	dir = writeFiles(t, map[string]string{
		"f.lua":  "function handle() return string.rep(\"x\", 2097152) end\n",
		"f.yaml": "triggers:\n  - mqtt: a/b\nlimits: {max_result_bytes: 4MiB, max_memory: 64MiB}\n",
		"e.json": `{"id": "e1", "ts": 1}`,
	})
	out.Reset()
	errb.Reset()
	code = run(context.Background(), []string{"fn", "test", filepath.Join(dir, "f.lua"), "--event", filepath.Join(dir, "e.json")}, &out, &errb)
	if code != exitUsage || !strings.Contains(errb.String(), "max_result_bytes") || !strings.Contains(errb.String(), "must be at most") {
		t.Fatalf("exit %d\n%s%s", code, out.String(), errb.String())
	}
}
