package main

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestCheckConfig(t *testing.T) {
	dir := t.TempDir()
	good := filepath.Join(dir, "good.yaml")
	bad := filepath.Join(dir, "bad.yaml")
	if err := os.WriteFile(good, []byte("log:\n  level: debug\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(bad, []byte("log:\n  level: loud\nmqtt:\n  embedded:\n    listn: x\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	// Forward triggers are parsed by the trigger package, not config:
	// serve refused them at start while check-config said ok.
	forward := filepath.Join(dir, "forward.yaml")
	if err := os.WriteFile(forward, []byte("sync:\n  targets:\n    - name: c\n      type: http\n      http:\n        url: http://127.0.0.1:9/x\n"+
		"  forward:\n    - name: f\n      trigger: \"a/#/b\"\n      targets: [c]\n    - name: g\n      trigger: \"a{b}\"\n      targets: [c]\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	example := filepath.Join("..", "..", "deploy", "config.example.yaml")
	fdir := filepath.Join(dir, "functions")
	if err := os.Mkdir(fdir, 0o755); err != nil {
		t.Fatal(err)
	}
	for name, content := range map[string]string{
		"ok.yaml": "triggers:\n  - mqtt: \"devices/{device}/telemetry\"\n", "ok.lua": "function handle(e) return 1 end",
		"bad.yaml": "triggers:\n  - mqtt: \"a/#/b\"\n", "bad.lua": "return 1",
		"many.yaml": "min_instances: 9\n", "many.lua": "return 1",
	} {
		if err := os.WriteFile(filepath.Join(fdir, name), []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	withFns := filepath.Join(dir, "fns.yaml")
	if err := os.WriteFile(withFns, []byte("functions_dir: "+fdir+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		name     string
		args     []string
		code     int
		stdout   []string
		stderr   []string
		noStdout bool
	}{
		{"valid", []string{"check-config", good}, exitOK, []string{good + ": ok\n"}, nil, false},
		{"example", []string{"check-config", example}, exitOK, []string{example + ": ok\n"}, nil, false},
		{"invalid", []string{"check-config", bad}, exitFailure, nil, []string{
			bad + `:2: log.level: unknown value "loud"`,
			bad + ":5: mqtt.embedded.listn: unknown key",
			bad + ": 2 problem(s)",
		}, true},
		{"functions", []string{"check-config", withFns}, exitFailure, []string{withFns + ": ok\n"}, []string{
			filepath.Join(fdir, "bad.yaml") + ":2: triggers[0].mqtt: invalid trigger pattern",
			filepath.Join(fdir, "many.yaml") + ": invalid function manifest: function many: min_instances 9 is more than max_concurrency 4",
			fdir + ": 1 function(s) ok, 2 problem(s)",
		}, false},
		{"forward triggers", []string{"check-config", forward}, exitFailure, nil, []string{
			forward + `:9: sync.forward[0].trigger: invalid trigger pattern "a/#/b": '#' must be the last level`,
			forward + `:12: sync.forward[1].trigger: invalid trigger pattern "a{b}"`,
			forward + ": 2 problem(s)",
		}, true},
		{"missing", []string{"check-config", filepath.Join(dir, "nope.yaml")}, exitFailure, nil, []string{"no such file"}, true},
		{"no file", []string{"check-config"}, exitUsage, nil, []string{"usage: moongate check-config FILE"}, true},
		{"two files", []string{"check-config", good, bad}, exitUsage, nil, []string{"usage:"}, true},
		{"bad flag", []string{"check-config", "-x", good}, exitUsage, nil, []string{"flag provided but not defined"}, true},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			var out, errb bytes.Buffer
			code := run(context.Background(), tc.args, &out, &errb)
			if code != tc.code {
				t.Errorf("exit %d, want %d (stdout %q, stderr %q)", code, tc.code, out.String(), errb.String())
			}
			for _, s := range tc.stdout {
				if !strings.Contains(out.String(), s) {
					t.Errorf("stdout %q lacks %q", out.String(), s)
				}
			}
			for _, s := range tc.stderr {
				if !strings.Contains(errb.String(), s) {
					t.Errorf("stderr %q lacks %q", errb.String(), s)
				}
			}
			if tc.noStdout && out.Len() != 0 {
				t.Errorf("unexpected stdout %q", out.String())
			}
		})
	}
}

func TestCheckConfigEnv(t *testing.T) {
	p := filepath.Join(t.TempDir(), "m.yaml")
	if err := os.WriteFile(p, []byte("log: {level: info}\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	t.Setenv("MOONGATE_GATEWAY_ID", "not valid")
	var out, errb bytes.Buffer
	if code := run(context.Background(), []string{"check-config", p}, &out, &errb); code != exitFailure {
		t.Fatalf("exit %d with a bad MOONGATE_GATEWAY_ID (stderr %q)", code, errb.String())
	}
	if !strings.Contains(errb.String(), "gateway_id") || !strings.Contains(errb.String(), "$MOONGATE_GATEWAY_ID") {
		t.Fatalf("stderr %q does not name the variable", errb.String())
	}
}

// serve without --config applies the environment overrides to the
// defaults, as documented (it used to ignore them).
func TestLoadConfigWithoutFileAppliesEnv(t *testing.T) {
	dir := t.TempDir()
	t.Setenv("MOONGATE_DATA_DIR", dir)
	t.Setenv("MOONGATE_GATEWAY_ID", "gw-env")
	cfg, err := loadConfig("")
	if err != nil {
		t.Fatal(err)
	}
	if cfg.DataDir != dir || cfg.GatewayID != "gw-env" {
		t.Fatalf("data_dir %q, gateway_id %q: the environment was not applied", cfg.DataDir, cfg.GatewayID)
	}
}

// TestCheckConfigFunctionsServeRefuses: check-config said "ok" to
// functions serve does not load: a result limit over what the store takes
// in one value, a source that does not compile, a name a sync.forward
// entry takes. It runs serve's checks now.
func TestCheckConfigFunctionsServeRefuses(t *testing.T) {
	for _, tc := range []struct {
		name, manifest, source, extra, want string
	}{
		{"big", "triggers:\n  - mqtt: a/{device}\nlimits: {max_result_bytes: 4MiB}\n", "function handle(e) end", "", "max_result_bytes"},
		{"broken", "triggers:\n  - mqtt: a/{device}\n", "function handle(e) end end end", "", "syntax error"},
		{"fwd", "triggers:\n  - mqtt: a/{device}\n", "function handle(e) end",
			"sync:\n  targets:\n    - {name: c, type: http, http: {url: \"http://127.0.0.1:9/x\"}}\n  forward:\n    - {name: fwd, trigger: \"b/{device}\", targets: [c]}\n", "sync.forward[0]"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			fdir := filepath.Join(dir, "functions")
			if err := os.Mkdir(fdir, 0o755); err != nil {
				t.Fatal(err)
			}
			for file, data := range map[string]string{tc.name + ".yaml": tc.manifest, tc.name + ".lua": tc.source} {
				if err := os.WriteFile(filepath.Join(fdir, file), []byte(data), 0o600); err != nil {
					t.Fatal(err)
				}
			}
			cfgPath := filepath.Join(dir, "m.yaml")
			if err := os.WriteFile(cfgPath, []byte("functions_dir: "+fdir+"\n"+tc.extra), 0o600); err != nil {
				t.Fatal(err)
			}
			var out, errb bytes.Buffer
			if code := run(context.Background(), []string{"check-config", cfgPath}, &out, &errb); code != exitFailure {
				t.Fatalf("check-config exit %d (stdout %q, stderr %q)", code, out.String(), errb.String())
			}
			if !strings.Contains(errb.String(), tc.name) || !strings.Contains(errb.String(), tc.want) {
				t.Fatalf("stderr %q does not name the function and %q", errb.String(), tc.want)
			}
		})
	}
}
