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
	example := filepath.Join("..", "..", "deploy", "config.example.yaml")
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
