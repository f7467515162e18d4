package config

import (
	"bytes"
	"errors"
	"io"
	"os"
	"path/filepath"
	"testing"

	"go.yaml.in/yaml/v3"
)

// FuzzParse checks that Parse never panics, that every error wraps
// ErrInvalid, and that when the input is well-formed YAML every problem
// carries a line number.
func FuzzParse(f *testing.F) {
	if data, err := os.ReadFile(filepath.Join("..", "..", "deploy", "config.example.yaml")); err == nil {
		f.Add(data)
	}
	for _, s := range []string{
		"", "mqtt: 5\n", "log: {level: loud}\n", "pipeline: {workers: -1}\n",
		"mqtt:\n  mode: external\n", "mqtt: {embedded: {listen: '0.0.0.0:1'}}\n",
		"a: &x [*x]\n", "store: {disk_reserve: 1.5MiB}\n", "functions: {timeout: -1s}\n",
		"mqtt: {embedded: {users: [{username: u, password_hash: x, publish: ['#/a']}]}}\n",
		"- [[[[]]]]\n", "? [a]\n: b\n", "log: !!binary aGVsbG8=\n", "api: {listen: '[::1]:80'}\n",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		c, err := Parse("f.yaml", data)
		if err == nil {
			if c == nil {
				t.Fatal("nil config without error")
			}
			return
		}
		if !errors.Is(err, ErrInvalid) {
			t.Fatalf("error does not wrap ErrInvalid: %v", err)
		}
		es := Errors(err)
		if len(es) == 0 {
			t.Fatalf("error holds no *Error: %v", err)
		}
		if !wellFormed(data) || len(data) > MaxFileSize {
			return
		}
		for _, e := range es {
			if e.Line <= 0 {
				t.Fatalf("error without a line for well-formed YAML %q: %v", data, e)
			}
		}
	})
}

// wellFormed reports whether every document of data parses as YAML.
func wellFormed(data []byte) bool {
	dec := yaml.NewDecoder(bytes.NewReader(data))
	for {
		var n yaml.Node
		if err := dec.Decode(&n); err != nil {
			return errors.Is(err, io.EOF)
		}
	}
}
