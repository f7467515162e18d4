package main

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/moongate-edge/moongate/gateway/trigger"
)

// deployServer answers POST /v1/functions: 400 for the names in invalid,
// else a deployed (or validated) function. It records name and dry_run of
// every call.
type deployServer struct {
	*httptest.Server
	mu      sync.Mutex
	calls   []string            // "name" or "name(dry)"
	bodies  map[string][]byte   // last body per name
	invalid map[string]bool     // names refused
	fields  map[string][]string // JSON keys of the last body per name
}

func newDeployServer(t *testing.T, invalid ...string) *deployServer {
	d := &deployServer{bodies: map[string][]byte{}, invalid: map[string]bool{}, fields: map[string][]string{}}
	for _, n := range invalid {
		d.invalid[n] = true
	}
	d.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		var req map[string]any
		_ = json.Unmarshal(b, &req)
		name, _ := req["name"].(string)
		dry, _ := req["dry_run"].(bool)
		d.mu.Lock()
		call := name
		if dry {
			call += "(dry)"
		}
		d.calls = append(d.calls, call)
		d.bodies[name] = b
		d.fields[name] = nil
		for k := range req {
			d.fields[name] = append(d.fields[name], k)
		}
		d.mu.Unlock()
		if d.invalid[name] {
			w.WriteHeader(400)
			fmt.Fprintf(w, `{"code":3,"message":"compile %s:1:1: syntax error"}`, name)
			return
		}
		v := "0"
		if !dry {
			v = "1"
		}
		fmt.Fprintf(w, `{"function":{"name":%q,"version":%q,"active":%v,"running":%v},"dry_run":%v,"unchanged":false}`, name, v, !dry, !dry, dry)
	}))
	t.Cleanup(d.Close)
	return d
}

func (d *deployServer) callList() string {
	d.mu.Lock()
	defer d.mu.Unlock()
	return strings.Join(d.calls, " ")
}

func (d *deployServer) manifest(name string) string {
	d.mu.Lock()
	defer d.mu.Unlock()
	var req struct{ Manifest, Source string }
	_ = json.Unmarshal(d.bodies[name], &req)
	return req.Manifest
}

// A directory and a moongate.yaml deploy every function, after validating
// all of them; one invalid function means nothing is deployed.
func TestDeploySets(t *testing.T) {
	dir := t.TempDir()
	fns := filepath.Join(dir, "fns")
	writeFile(t, filepath.Join(fns, "a.lua"), "function handle() return 'a' end\n")
	writeFile(t, filepath.Join(fns, "a.yaml"), "triggers: [{mqtt: a}]\n")
	writeFile(t, filepath.Join(fns, "b.lua"), "function handle() return 'b' end\n")
	writeFile(t, filepath.Join(fns, "b.yaml"), "triggers: [{mqtt: b}]\n")
	writeFile(t, filepath.Join(fns, ".hidden.yaml"), "ignored: true\n")
	writeFile(t, filepath.Join(fns, "notes.txt"), "ignored\n")

	d := newDeployServer(t)
	out, errs, code := runCLI(t, d.URL, "fn", "deploy", fns)
	if code != exitOK || d.callList() != "a(dry) b(dry) a b" {
		t.Fatalf("dir: exit %d, calls %q: %s", code, d.callList(), errs)
	}
	if d.manifest("a") != "triggers: [{mqtt: a}]\n" || !strings.Contains(out, "a     1        deployed, running") {
		t.Fatalf("dir: manifest %q, output:\n%s", d.manifest("a"), out)
	}

	// --dry-run validates each once and deploys nothing.
	d = newDeployServer(t)
	if out, errs, code := runCLI(t, d.URL, "fn", "deploy", fns, "--dry-run"); code != exitOK || d.callList() != "a(dry) b(dry)" || !strings.Contains(out, "b     -        valid (dry run") {
		t.Fatalf("dry run: exit %d, calls %q: %s\n%s", code, d.callList(), errs, out)
	}

	// moongate.yaml: a sibling manifest, an explicit one, an inline spec.
	writeFile(t, filepath.Join(dir, "m", "c.yaml"), "triggers: [{timer: 30s}]\n")
	writeFile(t, filepath.Join(dir, "c.lua"), "function handle() return 'c' end\n")
	writeFile(t, filepath.Join(dir, "moongate.yaml"), `functions:
  - source: fns/a.lua
  - name: c
    source: c.lua
    manifest: m/c.yaml
  - name: inline
    source: fns/b.lua
    spec:
      description: inline one   # a comment
      triggers:
        - mqtt: "x/{device}"
`)
	d = newDeployServer(t)
	if _, errs, code := runCLI(t, d.URL, "fn", "deploy", filepath.Join(dir, "moongate.yaml")); code != exitOK || d.callList() != "a(dry) c(dry) inline(dry) a c inline" {
		t.Fatalf("project: exit %d, calls %q: %s", code, d.callList(), errs)
	}
	if d.manifest("c") != "triggers: [{timer: 30s}]\n" {
		t.Fatalf("explicit manifest: %q", d.manifest("c"))
	}
	// The inline spec is sent as YAML that the gateway's manifest parser reads.
	m, err := trigger.ParseManifest("inline.yaml", []byte(d.manifest("inline")))
	if err != nil || m.Description != "inline one" || len(m.Triggers) != 1 {
		t.Fatalf("inline spec %q: %v %+v", d.manifest("inline"), err, m)
	}

	// One invalid function: all are validated, none deployed, each error shown.
	d = newDeployServer(t, "c")
	_, errs, code = runCLI(t, d.URL, "fn", "deploy", filepath.Join(dir, "moongate.yaml"))
	if code != exitFailure || d.callList() != "a(dry) c(dry) inline(dry)" || !strings.Contains(errs, "c: compile c:1:1: syntax error") || !strings.Contains(errs, "1 of 3 functions are invalid: nothing deployed") {
		t.Fatalf("invalid project: exit %d, calls %q: %s", code, d.callList(), errs)
	}

	// A dry run of a set with two invalid functions reports both (and the
	// valid one), not only the first.
	d = newDeployServer(t, "a", "c")
	out, errs, code = runCLI(t, d.URL, "fn", "deploy", filepath.Join(dir, "moongate.yaml"), "--dry-run")
	if code != exitFailure || d.callList() != "a(dry) c(dry) inline(dry)" || !strings.Contains(errs, "a: compile a:1:1") || !strings.Contains(errs, "c: compile c:1:1") ||
		!strings.Contains(out, "inline") {
		t.Fatalf("invalid project, dry run: exit %d, calls %q: %s\n%s", code, d.callList(), errs, out)
	}

	// A single FILE.lua with its sibling manifest: one call, no dry run.
	d = newDeployServer(t)
	if _, errs, code := runCLI(t, d.URL, "fn", "deploy", filepath.Join(fns, "a.lua"), "--name", "renamed"); code != exitOK || d.callList() != "renamed" || d.manifest("renamed") != "triggers: [{mqtt: a}]\n" {
		t.Fatalf("pair: exit %d, calls %q: %s", code, d.callList(), errs)
	}

	// Without an argument, ./moongate.yaml.
	t.Chdir(dir)
	d = newDeployServer(t)
	if _, errs, code := runCLI(t, d.URL, "fn", "deploy"); code != exitOK || d.callList() != "a(dry) c(dry) inline(dry) a c inline" {
		t.Fatalf("default moongate.yaml: exit %d, calls %q: %s", code, d.callList(), errs)
	}
}

func TestProjectFileErrors(t *testing.T) {
	for _, tc := range []struct{ yaml, substr string }{
		{"", "no functions"},
		{"functions: []\n", "no functions"},
		{"functions:\n  - name: a\n", "functions[0]: source is required"},
		{"functions:\n  - source: a.lua\n    sorce: b\n", "p.yaml:3"},
		{"functions:\n  - source: A B.lua\n", `invalid function name "A B"`},
		{"functions:\n  - source: a.lua\n  - source: x/a.lua\n", `function "a" listed twice`},
		{"functions:\n  - source: a.lua\n    manifest: a.yaml\n    spec: {triggers: []}\n", "manifest and spec both given"},
		{"functions:\n  - source: a.lua\n    spec: [1]\n", "expected a mapping"},
		{"functions: {a: 1}\n", "p.yaml:1"},
		{"functions:\n  - source: a.lua\n---\nfunctions: []\n", "more than one YAML document"},
	} {
		_, err := parseProject("p.yaml", []byte(tc.yaml))
		if err == nil || !strings.Contains(err.Error(), tc.substr) {
			t.Errorf("%q: %v, want %q", tc.yaml, err, tc.substr)
		}
	}
}

// fn invoke --event takes the event files of fn test.
func TestInvokeEventFile(t *testing.T) {
	dir := t.TempDir()
	writeFile(t, filepath.Join(dir, "ev.json"), `{"id": "e1", "topic": "devices/d1/telemetry", "payload": {"temp": 85}, "captures": {"device": "d1"}, "ts": 1764169200000, "qos": 1}`)
	writeFile(t, filepath.Join(dir, "http.json"), `{"trigger": "http", "http": {"method": "GET", "path": "/x"}}`)
	f := newFakeAPI(t)
	f.on("POST", "/v1/functions/x:invoke", 200, invokeJSON)
	if _, errs, code := runCLI(t, f.URL, "fn", "invoke", "x", "--event", filepath.Join(dir, "ev.json")); code != exitOK {
		t.Fatalf("exit %d: %s", code, errs)
	}
	want := `{"name":"x","dry_run":true,"event":{"id":"e1","topic":"devices/d1/telemetry","payload_text":"{\"temp\": 85}","captures":{"device":"d1"},"time":"` +
		time.UnixMilli(1764169200000).UTC().Format("2006-01-02T15:04:05Z") + `","qos":1}}`
	if got := f.requests()[0].body; !jsonEqual(got, want) {
		t.Fatalf("body %s\nwant %s", got, want)
	}
	if _, errs, code := runCLI(t, f.URL, "fn", "invoke", "x", "--event", filepath.Join(dir, "http.json")); code != exitUsage || !strings.Contains(errs, "/fn/NAME") {
		t.Fatalf("http event: exit %d: %s", code, errs)
	}
	// A trigger in the file is what fn test would give the function; the
	// API invokes with "invoke": said, not silently dropped.
	writeFile(t, filepath.Join(dir, "mqtt.json"), `{"trigger": "mqtt", "topic": "a/b", "payload": 1}`)
	if _, errs, code := runCLI(t, f.URL, "fn", "invoke", "x", "--event", filepath.Join(dir, "mqtt.json")); code != exitOK || !strings.Contains(errs, `sets trigger "mqtt"; an invoked event's trigger is "invoke"`) {
		t.Fatalf("event with a trigger: exit %d: %s", code, errs)
	}
	// --data - reads standard input.
	old := stdin
	stdin = strings.NewReader(` {"temp": 1} `)
	defer func() { stdin = old }()
	if _, errs, code := runCLI(t, f.URL, "fn", "invoke", "x", "--data", "-"); code != exitOK || !strings.Contains(f.requests()[2].body, `{\"temp\": 1}`) {
		t.Fatalf("--data -: exit %d: %s %s", code, errs, f.requests()[2].body)
	}
}
