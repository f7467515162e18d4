package trigger

import (
	"errors"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/moongate-edge/moongate/gateway/config"
)

func TestParseManifestValid(t *testing.T) {
	src := `
description: telemetry to records
triggers:
  - mqtt: "devices/{device}/telemetry"
  - mqtt: "sites/{site}/devices/{device}/telemetry"
  - timer: "@every 1m"
  - timer: 30s
  - cron: "*/5 * * * *"
  - http: {methods: [GET, POST]}
  - http:
stream: telemetry.v1
sync: [cloud, backup]
limits:
  timeout: 2s
  max_steps: 1000
  max_memory: 8MiB
  max_result_bytes: 64KiB
  max_effects: 10
  max_effect_bytes: 1KiB
  max_call_depth: 50
min_instances: 1
max_concurrency: 2
idle_timeout: 5m
config:
  threshold: 21.5
  units: [c, f]
  nested: {a: 1, b: null}
  since: 2026-01-01
  hex: 0x10
`
	m, err := ParseManifest("functions/telemetry.yaml", []byte(src))
	if err != nil {
		t.Fatal(err)
	}
	if m.Name != "telemetry" || m.Stream != "telemetry.v1" || m.OrderBy != "device" {
		t.Fatalf("name %q stream %q order_by %q", m.Name, m.Stream, m.OrderBy)
	}
	if len(m.Triggers) != 7 {
		t.Fatalf("%d triggers", len(m.Triggers))
	}
	kinds := []TriggerKind{KindMQTT, KindMQTT, KindTimer, KindTimer, KindCron, KindHTTP, KindHTTP}
	for i, tr := range m.Triggers {
		if tr.Kind != kinds[i] || tr.Line != 4+i {
			t.Errorf("trigger %d: kind %s line %d", i, tr.Kind, tr.Line)
		}
	}
	if got := m.Patterns(); len(got) != 2 || got[0].Filter() != "devices/+/telemetry" {
		t.Errorf("Patterns = %v", got)
	}
	base := time.Date(2026, 11, 26, 10, 2, 0, 0, time.UTC)
	ss := m.Schedules()
	if len(ss) != 3 || ss[0].Next(base) != base.Add(time.Minute) || ss[1].Next(base) != base.Add(30*time.Second) || ss[2].Next(base) != base.Add(3*time.Minute) {
		t.Errorf("schedules wrong: %v", ss)
	}
	if !reflect.DeepEqual(m.Triggers[5].HTTP.Methods, []string{"GET", "POST"}) || !reflect.DeepEqual(m.Triggers[6].HTTP.Methods, []string{"POST"}) {
		t.Errorf("http methods %v %v", m.Triggers[5].HTTP, m.Triggers[6].HTTP)
	}
	want := ManifestLimits{Timeout: config.Duration(2 * time.Second), MaxSteps: 1000, MaxMemory: 8 << 20, MaxResultBytes: 64 << 10, MaxEffects: 10, MaxEffectBytes: 1024, MaxCallDepth: 50}
	if m.Limits != want || m.MinInstances != 1 || m.MaxConcurrency != 2 || m.IdleTimeout != config.Duration(5*time.Minute) {
		t.Errorf("limits %+v", m)
	}
	wantCfg := map[string]any{"threshold": 21.5, "units": []any{"c", "f"}, "nested": map[string]any{"a": 1, "b": nil}, "since": "2026-01-01", "hex": 16}
	if !reflect.DeepEqual(m.Config, wantCfg) {
		t.Errorf("config = %#v", m.Config)
	}
	if k := m.OrderKey("devices/d1/telemetry", map[string]string{"device": "d1"}); k != "d1" {
		t.Errorf("OrderKey = %q", k)
	}
}

func TestParseManifestDefaults(t *testing.T) {
	m, err := ParseManifest("rollup.yaml", []byte("triggers:\n  - mqtt: \"sensors/+/temp\"\n"))
	if err != nil {
		t.Fatal(err)
	}
	if m.Stream != "rollup" || m.OrderBy != OrderTopic || m.Config != nil {
		t.Fatalf("defaults: %+v", m)
	}
	if k := m.OrderKey("sensors/x/temp", nil); k != "sensors/x/temp" {
		t.Errorf("OrderKey = %q", k)
	}
	m, err = ParseManifest("a.yaml", []byte("triggers:\n  - mqtt: \"{site}/{dev}/t\"\norder_by: dev\n"))
	if err != nil || m.OrderKey("s/d9/t", map[string]string{"site": "s", "dev": "d9"}) != "d9" {
		t.Fatalf("explicit order_by: %v %v", m, err)
	}
	m, err = ParseManifest("a.yaml", []byte("triggers:\n  - mqtt: \"d/{device}\"\norder_by: topic\n"))
	if err != nil || m.OrderBy != OrderTopic || m.OrderKey("d/x", map[string]string{"device": "x"}) != "d/x" {
		t.Fatalf("order_by topic: %v %v", m, err)
	}
	if m, err := ParseManifest("empty.yaml", nil); err != nil || m.Name != "empty" {
		t.Fatalf("empty manifest: %v %v", m, err)
	}
}

func TestParseManifestChainTriggers(t *testing.T) {
	src := "triggers:\n  - stream: readings\n  - stream: alerts.v1\n  - state: {function: counter, prefix: \"temp/\"}\n  - state: {function: counter}\n"
	m, err := ParseManifest("agg.yaml", []byte(src))
	if err != nil {
		t.Fatal(err)
	}
	if got := m.Streams(); !reflect.DeepEqual(got, []string{"readings", "alerts.v1"}) {
		t.Errorf("Streams = %v", got)
	}
	want := []StateTrigger{{Function: "counter", Prefix: "temp/"}, {Function: "counter"}}
	if got := m.StateWatches(); !reflect.DeepEqual(got, want) {
		t.Errorf("StateWatches = %v", got)
	}
	if len(m.Patterns()) != 0 || len(m.Schedules()) != 0 {
		t.Errorf("chain triggers counted as mqtt or timers")
	}
}

func TestParseManifestUploadTrigger(t *testing.T) {
	src := "triggers:\n  - upload: {bucket: photos, name: \"cam*/*.jpg\"}\n  - upload: {bucket: docs}\n"
	m, err := ParseManifest("thumb.yaml", []byte(src))
	if err != nil {
		t.Fatal(err)
	}
	want := []UploadTrigger{{Bucket: "photos", Name: "cam*/*.jpg"}, {Bucket: "docs"}}
	if got := m.Uploads(); !reflect.DeepEqual(got, want) {
		t.Fatalf("Uploads = %v", got)
	}
	for _, c := range []struct {
		bucket, name string
		want         bool
	}{{"photos", "cam1/a.jpg", true}, {"photos", "a.jpg", false}, {"photos", "cam1/a.png", false}, {"docs", "x/y/z", true}, {"other", "cam1/a.jpg", false}} {
		got := false
		for _, u := range m.Uploads() {
			got = got || u.Matches(c.bucket, c.name)
		}
		if got != c.want {
			t.Errorf("%s/%s matches %v, want %v", c.bucket, c.name, got, c.want)
		}
	}
}

func TestParseManifestErrors(t *testing.T) {
	cases := []struct{ name, src, want string }{
		{"upload without bucket", "triggers:\n  - upload: {name: a}\n", "f.yaml:2: triggers[0].upload: upload trigger needs a bucket"},
		{"upload bad bucket", "triggers:\n  - upload: {bucket: \"../x\"}\n", `invalid bucket name "../x"`},
		{"upload bad glob", "triggers:\n  - upload: {bucket: b, name: \"[a\"}\n", `invalid name glob "[a"`},
		{"upload unknown key", "triggers:\n  - upload: {bucket: b, nam: a}\n", "triggers[0].upload.nam: unknown key"},
		{"upload not a mapping", "triggers:\n  - upload: photos\n", "triggers[0].upload: expected a mapping"},
		{"duplicate upload", "triggers:\n  - upload: {bucket: b}\n  - upload: {bucket: b}\n", "f.yaml:3: triggers[1]: same trigger as triggers[0]"},
		{"unknown key", "triggers: []\ntimeout: 1s\n", "f.yaml:2: timeout: unknown key"},
		{"unknown nested key", "limits:\n  max_stepz: 1\n", "f.yaml:2: limits.max_stepz: unknown key"},
		{"triggers not a list", "triggers: {mqtt: a}\n", "f.yaml:1: triggers: expected a list, got a mapping"},
		{"trigger two keys", "triggers:\n  - {mqtt: a, timer: 1s}\n", "f.yaml:2: triggers[0]: a trigger is a mapping with one key"},
		{"trigger scalar", "triggers:\n  - a/b\n", "f.yaml:2: triggers[0]: a trigger is a mapping"},
		{"empty trigger", "triggers:\n  -\n", "f.yaml:2: triggers[0]: empty list item"},
		{"unknown trigger kind", "triggers:\n  - amqp: q\n", "f.yaml:2: triggers[0].amqp: unknown trigger kind"},
		{"bad pattern", "triggers:\n  - mqtt: ok/x\n  - mqtt: \"a/#/b\"\n", `f.yaml:3: triggers[1].mqtt: invalid trigger pattern "a/#/b": '#' must be the last level`},
		{"mixed name", "triggers:\n  - mqtt: \"a{b}\"\n", "f.yaml:2: triggers[0].mqtt: invalid trigger pattern"},
		{"pattern not a string", "triggers:\n  - mqtt: [a]\n", "f.yaml:2: triggers[0].mqtt: expected a string, got a list"},
		{"duplicate trigger", "triggers:\n  - mqtt: a\n  - mqtt: a\n", "f.yaml:3: triggers[1]: same trigger as triggers[0]"},
		{"bad stream", "triggers:\n  - stream: \"Bad Name\"\n", `f.yaml:2: triggers[0].stream: invalid stream name "Bad Name"`},
		{"stream not a string", "triggers:\n  - stream: {a: 1}\n", "f.yaml:2: triggers[0].stream: expected a string, got a mapping"},
		{"duplicate stream", "triggers:\n  - stream: s\n  - stream: s\n", "f.yaml:3: triggers[1]: same trigger as triggers[0]"},
		{"state without function", "triggers:\n  - state: {prefix: a}\n", "f.yaml:2: triggers[0].state: state trigger needs the function"},
		{"state bad function", "triggers:\n  - state: {function: \"../x\"}\n", `invalid function name "../x"`},
		{"state unknown key", "triggers:\n  - state: {function: f, prefx: a}\n", "triggers[0].state.prefx: unknown key"},
		{"state long prefix", "triggers:\n  - state: {function: f, prefix: " + strings.Repeat("a", 1025) + "}\n", "state prefix must be at most 1024 bytes"},
		{"duplicate state", "triggers:\n  - state: {function: f, prefix: a}\n  - state: {function: f, prefix: a}\n", "f.yaml:3: triggers[1]: same trigger as triggers[0]"},
		{"duplicate timer 1m 60s", "triggers:\n  - timer: 1m\n  - timer: 60s\n", "f.yaml:3: triggers[1]: same trigger as triggers[0]"},
		{"duplicate timer bare and every", "triggers:\n  - timer: 90s\n  - timer: \"@every 1m30s\"\n", "f.yaml:3: triggers[1]: same trigger as triggers[0]"},
		{"duplicate every spaces", "triggers:\n  - timer: \"@every 1m\"\n  - timer: \"@every  1m\"\n", "f.yaml:3: triggers[1]: same trigger as triggers[0]"},
		{"duplicate timer and cron", "triggers:\n  - timer: \"@hourly\"\n  - cron: \"@hourly\"\n", "f.yaml:3: triggers[1]: same trigger as triggers[0]"},
		{"duplicate descriptor and cron", "triggers:\n  - cron: \"@daily\"\n  - cron: \"0 0 * * *\"\n", "f.yaml:3: triggers[1]: same trigger as triggers[0]"},
		{"duplicate cron spaces", "triggers:\n  - cron: \"*/5 * * * *\"\n  - timer: \"*/5  *  * * *\"\n", "f.yaml:3: triggers[1]: same trigger as triggers[0]"},
		{"bad timer", "triggers:\n  - timer: \"@every 10ms\"\n", "f.yaml:2: triggers[0].timer: invalid schedule \"@every 10ms\": interval shorter than 1s"},
		{"bad bare timer", "triggers:\n  - timer: 100ms\n", "triggers[0].timer: invalid schedule"},
		{"bad cron", "triggers:\n  - cron: \"61 * * * *\"\n", "f.yaml:2: triggers[0].cron: invalid schedule"},
		{"cron never fires", "triggers:\n  - cron: \"0 0 31 4 *\"\n", "never fires"},
		{"cron six fields", "triggers:\n  - cron: \"0 0 * * * *\"\n", "triggers[0].cron: invalid schedule"},
		{"bad http method", "triggers:\n  - http: {methods: [FETCH]}\n", `f.yaml:2: triggers[0].http: unknown HTTP method "FETCH"`},
		{"http unknown key", "triggers:\n  - http:\n      path: /x\n", "f.yaml:3: triggers[0].http.path: unknown key"},
		{"bad stream", "stream: Bad Stream\n", `f.yaml:1: stream: invalid stream name "Bad Stream"`},
		{"bad sync", "sync:\n  - ok\n  - \"x/y\"\n", `f.yaml:3: sync[1]: invalid sync target name "x/y"`},
		{"dup sync", "sync: [a, a]\n", `f.yaml:1: sync[1]: sync target "a" listed twice`},
		{"timeout over cap", "limits:\n  timeout: 11m\n", "f.yaml:2: limits.timeout: 11m0s longer than the cap 10m0s"},
		{"negative timeout", "limits:\n  timeout: -1s\n", `f.yaml:2: limits.timeout: invalid duration "-1s": negative`},
		{"memory too small", "limits:\n  max_memory: 1KiB\n", "f.yaml:2: limits.max_memory: 1KiB out of range"},
		{"bad size", "limits:\n  max_memory: 1 potato\n", `f.yaml:2: limits.max_memory: invalid size "1 potato"`},
		{"negative steps", "limits:\n  max_steps: -1\n", "f.yaml:2: limits.max_steps: -1 out of range"},
		{"effects over cap", "limits:\n  max_effects: 100000\n", "f.yaml:2: limits.max_effects: 100000 out of range"},
		{"min over max", "max_concurrency: 2\nmin_instances: 3\n", "f.yaml:2: min_instances: 3 is more than max_concurrency 2"},
		{"concurrency over cap", "max_concurrency: 100000\n", "f.yaml:1: max_concurrency: 100000 out of range"},
		{"wrong type", "max_concurrency: lots\n", `f.yaml:1: max_concurrency: expected an integer, got string "lots"`},
		{"config not a map", "config: [1, 2]\n", "f.yaml:1: config: expected a mapping, got a list"},
		{"config huge integer", "config:\n  big: 18446744073709551615\n", "f.yaml:2: config.big: unsupported value integer 18446744073709551615"},
		{"config infinity", "config:\n  x: .inf\n", "f.yaml:2: config.x: NaN and infinity are not allowed"},
		{"config alias", "config:\n  a: &x 1\n  b: *x\n", "f.yaml:3: config.b: YAML aliases"},
		{"order_by missing capture", "triggers:\n  - mqtt: \"a/{x}\"\n  - mqtt: \"b/+\"\norder_by: x\n", "f.yaml:4: order_by: every mqtt trigger must capture {x}"},
		{"order_by without mqtt", "order_by: device\n", "f.yaml:1: order_by: order_by \"device\" needs mqtt triggers"},
		{"syntax", "triggers:\n - mqtt: a\n  - mqtt: b\n", "f.yaml:1: YAML syntax"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			m, err := ParseManifest("f.yaml", []byte(tc.src))
			if err == nil {
				t.Fatalf("accepted: %+v", m)
			}
			if !errors.Is(err, ErrManifest) || !errors.Is(err, config.ErrInvalid) {
				t.Errorf("%v does not wrap ErrManifest and config.ErrInvalid", err)
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error\n%v\ndoes not contain\n%s", err, tc.want)
			}
			for _, e := range config.Errors(err) {
				if e.Line <= 0 || e.File != "f.yaml" {
					t.Errorf("error without position: %v", e)
				}
			}
		})
	}
}

func TestParseManifestName(t *testing.T) {
	for _, name := range []string{"Bad.yaml", "-x.yaml", "a b.yaml", ".yaml", strings.Repeat("a", 64) + ".yaml", "ü.yaml"} {
		if _, err := ParseManifest(name, nil); !errors.Is(err, ErrFunctionName) {
			t.Errorf("ParseManifest(%q): %v, want ErrFunctionName", name, err)
		}
	}
	for _, name := range []string{"a.yaml", "dir/x_1-y.yaml", strings.Repeat("a", 63) + ".yaml", "0"} {
		if _, err := ParseManifest(name, nil); err != nil {
			t.Errorf("ParseManifest(%q): %v", name, err)
		}
	}
	if _, err := ParseManifest("big.yaml", make([]byte, MaxManifestBytes+1)); !errors.Is(err, ErrManifest) || !strings.Contains(err.Error(), "larger than the limit") {
		t.Errorf("oversized manifest: %v", err)
	}
}

func TestParseSchedule(t *testing.T) {
	base := time.Date(2026, 11, 26, 10, 2, 3, 0, time.UTC)
	good := map[string]time.Time{
		"@every 30s":     base.Add(30 * time.Second),
		"@every 1h30m":   base.Add(90 * time.Minute),
		"@hourly":        time.Date(2026, 11, 26, 11, 0, 0, 0, time.UTC),
		"@daily":         time.Date(2026, 11, 27, 0, 0, 0, 0, time.UTC),
		"@midnight":      time.Date(2026, 11, 27, 0, 0, 0, 0, time.UTC),
		"@weekly":        time.Date(2026, 11, 29, 0, 0, 0, 0, time.UTC),
		"@monthly":       time.Date(2026, 12, 1, 0, 0, 0, 0, time.UTC),
		"@yearly":        time.Date(2027, 1, 1, 0, 0, 0, 0, time.UTC),
		"*/5 * * * *":    time.Date(2026, 11, 26, 10, 5, 0, 0, time.UTC),
		"0 6 * * 1-5":    time.Date(2026, 11, 27, 6, 0, 0, 0, time.UTC),
		" 30 10 26 11 *": time.Date(2026, 11, 26, 10, 30, 0, 0, time.UTC),
		"0 0 29 2 *":     time.Date(2028, 2, 29, 0, 0, 0, 0, time.UTC),
	}
	for spec, want := range good {
		s, err := ParseSchedule(spec)
		if err != nil {
			t.Errorf("ParseSchedule(%q): %v", spec, err)
			continue
		}
		if got := s.Next(base); !got.Equal(want) {
			t.Errorf("ParseSchedule(%q).Next(%v) = %v, want %v", spec, base, got, want)
		}
	}
	for _, spec := range []string{"", "@every", "@every 500ms", "@every -1m", "@every1m", "@every x", "@often", "* * * *", "0 0 * * * *", "60 * * * *", "*/0 * * * *", "0 0 31 2 *", "a b c d e", strings.Repeat("1", 300), "CRON_TZ=UTC @every 1m", "CRON_TZ=Europe/Berlin @every 100ms"} {
		if s, err := ParseSchedule(spec); err == nil || !errors.Is(err, ErrSchedule) {
			t.Errorf("ParseSchedule(%q) = %v, %v; want ErrSchedule", spec, s, err)
		}
	}
	if next := Every(0).Next(base); !next.Equal(base.Add(MinInterval)) {
		t.Errorf("Every(0).Next = %v", next)
	}
	if e, ok := mustSchedule(t, "@every 2m").(Every); !ok || e.String() != "@every 2m0s" {
		t.Errorf("Every.String = %v", e)
	}
}

func mustSchedule(t *testing.T, s string) Schedule {
	t.Helper()
	sc, err := ParseSchedule(s)
	if err != nil {
		t.Fatal(err)
	}
	return sc
}

func TestManifestCheckWith(t *testing.T) {
	d := config.Default().Functions // max_concurrency 4, min_instances 0
	m, err := ParseManifest("a.yaml", []byte("min_instances: 5\n"))
	if err != nil {
		t.Fatal(err)
	}
	if err := m.CheckWith(d); !errors.Is(err, ErrManifest) || !strings.Contains(err.Error(), "min_instances 5 is more than max_concurrency 4") {
		t.Fatalf("CheckWith = %v", err)
	}
	d.MinInstances = 3
	m, _ = ParseManifest("a.yaml", []byte("max_concurrency: 2\n"))
	if err := m.CheckWith(d); err == nil {
		t.Fatal("default min_instances above the manifest's max_concurrency accepted")
	}
	m, _ = ParseManifest("a.yaml", []byte("max_concurrency: 3\n"))
	if err := m.CheckWith(d); err != nil {
		t.Fatal(err)
	}
}

// Schedules that differ in meaning are not duplicates.
func TestParseManifestDistinctSchedules(t *testing.T) {
	src := "triggers:\n  - timer: 1m\n  - timer: 61s\n  - cron: \"* * * * *\"\n  - cron: \"@hourly\"\n  - cron: \"CRON_TZ=Europe/Berlin 0 * * * *\"\n  - cron: \"1 * * * *\"\n"
	m, err := ParseManifest("f.yaml", []byte(src))
	if err != nil {
		t.Fatal(err)
	}
	if n := len(m.Schedules()); n != 6 {
		t.Fatalf("%d schedules, want 6", n)
	}
}
