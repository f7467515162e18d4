package main

import (
	"bytes"
	"context"
	"strings"
	"testing"
)

// TestNotFoundMessagesSayNotFound: a missing state key and a missing dead
// letter (exit 3) say "not found", as every other not-found message does
// (they said only "state key "missing" of function "f"" and "dead letter
// 999"). Found by a review.
func TestNotFoundMessagesSayNotFound(t *testing.T) {
	const token = "mgt_notfound_token_0123456789abcdef"
	addr := startBlobDaemon(t, token)
	for _, args := range [][]string{{"state", "get", "f", "missing"}, {"dlq", "replay", "999"}} {
		var out, errb bytes.Buffer
		code := run(context.Background(), append(args, "--server", addr, "--token", token), &out, &errb)
		if code != exitNotFound {
			t.Fatalf("%v: exit %d, want %d: %s", args, code, exitNotFound, errb.String())
		}
		if !strings.Contains(errb.String(), "not found") {
			t.Errorf("%v: message does not say not found: %q", args, errb.String())
		}
	}
}

// TestFlagBeforeCommand: "moongate --server URL fn ls" says that flags go
// after the command (it reported the unknown command "--server URL").
func TestFlagBeforeCommand(t *testing.T) {
	var out, errb bytes.Buffer
	code := run(context.Background(), []string{"--server", "http://127.0.0.1:1", "fn", "ls"}, &out, &errb)
	if code != exitUsage || !strings.Contains(errb.String(), "flags go after it") || strings.Contains(errb.String(), `"--server http`) {
		t.Fatalf("exit %d: %q", code, errb.String())
	}
}

// TestHelpExitsZero: every COMMAND --help exits 0; `token --help` exited 2.
func TestHelpExitsZero(t *testing.T) {
	for _, args := range [][]string{{"token", "--help"}, {"token", "-h"}, {"token", "create", "--help"}, {"check-config", "--help"}, {"fn", "ls", "--help"}} {
		var out, errb bytes.Buffer
		if code := run(context.Background(), args, &out, &errb); code != exitOK {
			t.Errorf("%s: exit %d, want 0 (%s)", strings.Join(args, " "), code, strings.TrimSpace(errb.String()))
		}
	}
	var out, errb bytes.Buffer
	if code := run(context.Background(), []string{"token"}, &out, &errb); code != exitUsage {
		t.Errorf("token without a subcommand: exit %d, want %d", code, exitUsage)
	}
}
