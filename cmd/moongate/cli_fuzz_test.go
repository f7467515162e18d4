package main

import (
	"errors"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"

	"github.com/moongate-edge/moongate/gateway/trigger"
)

// FuzzParseProject: a moongate.yaml never panics the parser; what it
// accepts names valid, distinct functions with a source.
func FuzzParseProject(f *testing.F) {
	for _, s := range []string{
		"functions:\n  - source: a.lua\n",
		"functions:\n  - name: b\n    source: x/b.lua\n    manifest: m.yaml\n",
		"functions:\n  - source: c.lua\n    spec:\n      triggers: [{mqtt: \"a/{device}\"}]\n      config: {x: [1, 2]}\n",
		"functions: [{source: &a a.lua}, {source: *a}]\n",
		"functions:\n  - source: a.lua\n    spec: !!map {a: 1}\n",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		p, err := parseProject("moongate.yaml", data)
		if err != nil {
			return
		}
		seen := map[string]bool{}
		for _, fn := range p.Functions {
			if !trigger.ValidFunctionName(fn.Name) || fn.Source == "" || seen[fn.Name] || (fn.Manifest != "" && fn.Spec.text != "") {
				t.Fatalf("accepted %+v", fn)
			}
			seen[fn.Name] = true
		}
	})
}

// FuzzParseTrigger: a --trigger value is refused or formats back to the
// same trigger.
func FuzzParseTrigger(f *testing.F) {
	for _, s := range []string{"mqtt:devices/{device}/telemetry", "timer:@every 1m", "cron:*/5 * * * *", "http", "http:get,POST", "http:", "mqtt:", "x:y", "",
		"stream:readings", "state:counter", "state:counter:temp/", "state:f:", "upload:photos", "upload:photos:cam*/*.jpg", "upload:b:", "upload:"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		tr, err := parseTrigger(s)
		if err != nil {
			var ue *usageError
			if !errors.As(err, &ue) {
				t.Fatalf("%q: error of the wrong kind: %v", s, err)
			}
			return
		}
		again, err := parseTrigger(fmtTrigger(tr))
		if err != nil || fmtTrigger(again) != fmtTrigger(tr) {
			t.Fatalf("%q -> %q -> %v %v", s, fmtTrigger(tr), again, err)
		}
		if !strings.HasPrefix(s, "http") && fmtTrigger(tr) != s {
			t.Fatalf("%q formats as %q", s, fmtTrigger(tr))
		}
	})
}

// FuzzDecodeStatus: whatever a server answers with, an error status
// becomes an *apiError that is never OK.
func FuzzDecodeStatus(f *testing.F) {
	for _, s := range []string{`{"code":5,"message":"x"}`, `{"code":0}`, `{"code":99}`, `{"code":-1}`, `<html>`, ``, `{"code":"5"}`, `null`} {
		f.Add(404, s)
	}
	f.Fuzz(func(t *testing.T, status int, body string) {
		err := decodeStatus(status, []byte(body))
		var pe *apiError
		if !errors.As(err, &pe) || pe.code == codes.OK || err.Error() == "" {
			t.Fatalf("%d %q: %#v", status, body, err)
		}
		if code := exitCode(err); code < exitFailure || code > exitUnavailable || code == exitUsage {
			t.Fatalf("%d %q: exit %d", status, body, code)
		}
	})
}

// FuzzParseTimeArg: --from/--to values never panic; accepted durations
// lie in the past.
func FuzzParseTimeArg(f *testing.F) {
	for _, s := range []string{"2026-11-26T15:00:00Z", "2026-11-26", "90m", "-1h", "1e9h", "", "yesterday"} {
		f.Add(s)
	}
	now := time.Date(2026, 11, 26, 12, 0, 0, 0, time.UTC)
	f.Fuzz(func(t *testing.T, s string) {
		ts, err := parseTimeArg(s, now)
		if err != nil || ts == nil {
			return
		}
		if _, derr := time.ParseDuration(s); derr == nil && ts.AsTime().After(now) {
			t.Fatalf("%q is after now: %v", s, ts.AsTime())
		}
	})
}
