package main

import (
	"bytes"
	"context"
	"path/filepath"
	"testing"
)

// The daemon refuses this return value of an HTTP-triggered function
// (502, nothing committed: a body with status 204, a framing header); fn
// test, which "runs the function once as the daemon would", must not
// report it as a success.
func TestFnTestHTTPInvalidResponse(t *testing.T) {
	for name, ret := range map[string]string{
		"body204":       `return {status = 204, body = "gone"}`,
		"contentlength": `return {status = 200, headers = {["Content-Length"] = "1"}, body = "abc"}`,
		"badstatus":     `return {status = 99}`,
		"unknownfield":  `return {status = 200, bdy = "typo"}`,
	} {
		t.Run(name, func(t *testing.T) {
			dir := writeFiles(t, map[string]string{
				"hook.lua":   "function handle(event, ctx)\n  state.set('applied', true)\n  " + ret + "\nend\n",
				"hook.yaml":  "triggers:\n  - http: {methods: [POST]}\n",
				"event.json": `{"id": "e1", "ts": 1, "trigger": "http", "http": {"method": "POST", "path": "/x", "body": "hi"}}`,
			})
			var out, errb bytes.Buffer
			code := run(context.Background(), []string{"fn", "test", filepath.Join(dir, "hook.lua"), "--event", filepath.Join(dir, "event.json")}, &out, &errb)
			if code != exitFailure {
				t.Errorf("exit %d, want %d (the daemon answers 502 and commits nothing):\n%s%s", code, exitFailure, out.String(), errb.String())
			}
		})
	}
}

// A valid response is shown as /fn would send it.
func TestFnTestHTTPResponseShown(t *testing.T) {
	dir := writeFiles(t, map[string]string{
		"hook.lua":   "function handle(event, ctx)\n  return {status = 201, headers = {[\"X-Id\"] = \"7\"}, body = \"made\"}\nend\n",
		"hook.yaml":  "triggers:\n  - http: {methods: [POST]}\n",
		"event.json": `{"id": "e1", "ts": 1, "trigger": "http", "http": {"method": "POST", "path": "/x", "body": "hi"}}`,
	})
	var out, errb bytes.Buffer
	code := run(context.Background(), []string{"fn", "test", filepath.Join(dir, "hook.lua"), "--event", filepath.Join(dir, "event.json")}, &out, &errb)
	if code != exitOK || !bytes.Contains(out.Bytes(), []byte("http response: 201 Created, 4 body bytes\n  Content-Type: text/plain; charset=utf-8\n  X-Id: 7\n")) {
		t.Fatalf("exit %d:\n%s%s", code, out.String(), errb.String())
	}
}

// fn test shows an http event's headers as the daemon does: names in lower
// case, the caller's credentials left out. A function tested with
// "Content-Type" in its event file passed here and found no header on the
// gateway (event.headers["Content-Type"] is nil there).
func TestFnTestHTTPHeadersAsDaemon(t *testing.T) {
	dir := writeFiles(t, map[string]string{
		"hook.lua": "function handle(event, ctx)\n  local h = event.headers\n" +
			"  return {status = 200, body = tostring(h['content-type']) .. ' ' .. tostring(h['Content-Type']) .. ' ' .. tostring(h['authorization']) .. ' ' .. tostring(h['cookie']) .. ' ' .. tostring(h['x-trace'])}\nend\n",
		"hook.yaml":  "triggers:\n  - http: {methods: [POST]}\n",
		"event.json": `{"id": "e1", "ts": 1, "trigger": "http", "http": {"method": "POST", "path": "/x", "headers": {"Content-Type": "application/json", "Authorization": "Bearer secret", "cookie": "s=1", "X-Trace": "t1"}, "body": "{}"}}`,
		"twice.json": `{"id": "e1", "ts": 1, "trigger": "http", "http": {"method": "POST", "path": "/x", "headers": {"X-A": "1", "x-a": "2"}}}`,
	})
	var out, errb bytes.Buffer
	code := run(context.Background(), []string{"fn", "test", filepath.Join(dir, "hook.lua"), "--event", filepath.Join(dir, "event.json"), "--json"}, &out, &errb)
	if code != exitOK || !bytes.Contains(out.Bytes(), []byte(`application/json nil nil nil t1`)) {
		t.Fatalf("exit %d, want the body \"application/json nil nil nil t1\":\n%s%s", code, out.String(), errb.String())
	}
	if !bytes.Contains(errb.Bytes(), []byte("Authorization, cookie left out")) {
		t.Fatalf("no note on the hidden headers: %s", errb.String())
	}
	out.Reset()
	errb.Reset()
	code = run(context.Background(), []string{"fn", "test", filepath.Join(dir, "hook.lua"), "--event", filepath.Join(dir, "twice.json")}, &out, &errb)
	if code != exitUsage || !bytes.Contains(errb.Bytes(), []byte(`header "x-a" given twice`)) {
		t.Fatalf("a header given twice in other cases: exit %d %s, want 2", code, errb.String())
	}
}
