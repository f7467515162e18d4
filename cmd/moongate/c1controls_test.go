package main

import (
	"bytes"
	"context"
	"path/filepath"
	"testing"
	"unicode/utf8"
)

// c1Controls reports the C1 control characters (U+0080-U+009F, which
// terminals in UTF-8 mode act on: U+009B is CSI, U+0085 NEL starts a new
// line) and DEL found in s.
func c1Controls(s string) []rune {
	var out []rune
	for _, r := range s {
		if r == 0x7f || (r >= 0x80 && r <= 0x9f) {
			out = append(out, r)
		}
	}
	return out
}

// A function's log line (message and fields) printed by the CLI must not
// carry terminal control characters: oneLine escapes C0 controls and DEL
// "so that it cannot fake lines or columns", but C1 controls (the project
// itself treats U+0080-U+009F as control characters, docs/blobs.md) pass
// through, in the message and in the fields, in `fn logs` and `fn test`.
func TestLogLinesEscapeC1Controls(t *testing.T) {
	// fn logs against an API answering with what the server sends for
	// log.info("ok\u{85}2026-11-30T00:00:00.000Z ERROR other fake\u{9b}2J", {k = "\u{9b}31m\127"})
	f := newFakeAPI(t)
	f.on("GET", "/v1/logs", 200, `{"lines":[{"seq":"1","function":"f","invocation_id":"i1","level":"info",`+
		`"msg":"ok\u00852026-11-30T00:00:00.000Z ERROR other fake\u009b2J","fields":{"k":"\u009b31m\u007f"},"time":"2026-11-30T00:00:00Z"}],"next_after":"1"}`)
	out, errs, code := runCLI(t, f.URL, "fn", "logs", "--after", "0")
	if code != exitOK {
		t.Fatalf("fn logs: exit %d: %s", code, errs)
	}
	if c := c1Controls(out); len(c) > 0 {
		t.Errorf("fn logs printed control characters %U: %q", c, out)
	}

	// fn test runs the real VM locally and prints its log lines the same way.
	dir := writeFiles(t, map[string]string{
		"f.lua":      "function handle(event, ctx)\n  log.info(\"ok\\194\\133fake line\\194\\1552J\", {k = \"\\194\\15531m\\127\"})\n  return nil\nend\n",
		"event.json": `{"id": "e1", "topic": "t", "payload": {}, "trigger": "mqtt"}`,
	})
	var tout, terr bytes.Buffer
	if code := run(context.Background(), []string{"fn", "test", filepath.Join(dir, "f.lua"), "--event", filepath.Join(dir, "event.json")}, &tout, &terr); code != exitOK {
		t.Fatalf("fn test: exit %d: %s %s", code, tout.String(), terr.String())
	}
	if !utf8.ValidString(tout.String()) {
		t.Fatalf("fn test: invalid UTF-8 %q", tout.String())
	}
	if c := c1Controls(tout.String()); len(c) > 0 {
		t.Errorf("fn test printed control characters %U: %q", c, tout.String())
	}
}
