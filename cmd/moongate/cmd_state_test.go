package main

import (
	"bytes"
	"context"
	"strings"
	"testing"
)

// The state commands against a real daemon: each key reaches the store
// exactly as typed, whatever it holds ("/", "%", "%2F", spaces, non-ASCII,
// "." and ".." that a path would resolve).
func TestStateKeysRoundTrip(t *testing.T) {
	const token = "mgt_cli_state_token_0123456789"
	addr := startBlobDaemon(t, token)
	cli := func(args ...string) (int, string, string) {
		var out, errb bytes.Buffer
		code := run(context.Background(), append(args, "--server", addr, "--token", token), &out, &errb)
		return code, out.String(), errb.String()
	}
	keys := []string{"u%2Fv", "u/v", "%", "100%25", "a%zz", "a b", "temp/µ°C/ü", "日本語 %2f/x", "+&=?#;:@", ".", "..", "a/../b"}
	for i, k := range keys {
		if code, out, errs := cli("state", "put", "kv", k, strings.Repeat("1", i+1)); code != exitOK || out != k+" = "+strings.Repeat("1", i+1)+"\n" {
			t.Fatalf("put %q: %d %q %s", k, code, out, errs)
		}
	}
	for i, k := range keys {
		if code, out, errs := cli("state", "get", "kv", k); code != exitOK || out != strings.Repeat("1", i+1)+"\n" {
			t.Fatalf("get %q: %d %q %s", k, code, out, errs)
		}
	}
	code, out, errs := cli("state", "ls", "kv", "--json")
	if code != exitOK {
		t.Fatalf("ls: %d %s", code, errs)
	}
	for _, k := range keys {
		if !strings.Contains(out, `"key":`+jsonString(k)) {
			t.Errorf("ls: key %q missing:\n%s", k, out)
		}
	}
	if n := strings.Count(out, `"key":`); n != len(keys) {
		t.Errorf("ls: %d keys, want %d:\n%s", n, len(keys), out)
	}
	// Removing u%2Fv leaves u/v.
	if code, _, errs := cli("state", "rm", "kv", "u%2Fv"); code != exitOK {
		t.Fatalf("rm: %d %s", code, errs)
	}
	if code, _, errs := cli("state", "get", "kv", "u%2Fv"); code != exitNotFound {
		t.Fatalf("get after rm: %d %s", code, errs)
	}
	if code, out, errs := cli("state", "get", "kv", "u/v"); code != exitOK || out != "11\n" {
		t.Fatalf("get u/v after rm of u%%2Fv: %d %q %s", code, out, errs)
	}
	for _, k := range keys[1:] {
		if code, _, errs := cli("state", "rm", "kv", k); code != exitOK {
			t.Fatalf("rm %q: %d %s", k, code, errs)
		}
		if code, _, errs := cli("state", "get", "kv", k); code != exitNotFound {
			t.Fatalf("get %q after rm: %d %s", k, code, errs)
		}
	}
}

// jsonString is s as the server's JSON writes it (no HTML escaping).
func jsonString(s string) string {
	var b bytes.Buffer
	b.WriteByte('"')
	for _, r := range s {
		switch r {
		case '"', '\\':
			b.WriteByte('\\')
		}
		b.WriteRune(r)
	}
	b.WriteByte('"')
	return b.String()
}
