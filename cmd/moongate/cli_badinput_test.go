package main

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// A FILE that cannot be read (here a directory) is bad input: exit 2,
// not "cannot reach the server" (exit 5, "retry later").
func TestCLIBlobPutDirectoryIsUsageError(t *testing.T) {
	const token = blobCLIToken
	addr := startBlobDaemon(t, token)
	var out, errb bytes.Buffer
	code := run(context.Background(), []string{"blob", "put", "files/x.bin", t.TempDir(), "--server", addr, "--token", token}, &out, &errb)
	if code != exitUsage {
		t.Fatalf("blob put DIR: exit %d, want %d (bad input file); stderr: %s", code, exitUsage, errb.String())
	}
}

// An oversized VALUE file is exit 2 before anything is sent (docs/cli.md:
// "missing or oversized file ... nothing was sent"), as '-' is bounded.
func TestCLIStatePutHugeFileIsUsageError(t *testing.T) {
	const token = blobCLIToken
	addr := startBlobDaemon(t, token)
	p := filepath.Join(t.TempDir(), "big.json")
	big := `"` + strings.Repeat("a", 40<<20) + `"`
	if err := os.WriteFile(p, []byte(big), 0o600); err != nil {
		t.Fatal(err)
	}
	var out, errb bytes.Buffer
	code := run(context.Background(), []string{"state", "put", "fn1", "k", "@" + p, "--server", addr, "--token", token}, &out, &errb)
	if code != exitUsage {
		t.Fatalf("state put @40MiB: exit %d, want %d; stderr: %s", code, exitUsage, clipText(errb.String(), 300))
	}
}

// A state key is any UTF-8 text without NUL (a function chooses it): the
// state ls table must not let it fake lines or columns, as logs, dead
// letters and errors are escaped (oneLine/clipText).
func TestCLIStateLsKeyCannotFakeLines(t *testing.T) {
	cli := blobDaemonCLI(t)
	key := "a\nadmin_password\t\"hunter2\""
	if code, out, errs := cli("state", "put", "fn1", key, "1"); code != exitOK {
		t.Fatalf("state put: %d %s %s", code, out, errs)
	}
	code, out, errs := cli("state", "ls", "fn1")
	if code != exitOK {
		t.Fatalf("state ls: %d %s %s", code, out, errs)
	}
	if lines := strings.Split(strings.TrimSuffix(out, "\n"), "\n"); len(lines) != 2 {
		t.Fatalf("state ls of one key printed %d lines, want 2 (header + 1):\n%s", len(lines), out)
	}
}

// The DEVICE column of data query comes from the topic a device chose
// ({device} capture): it must not fake lines or columns of the table.
func TestCLIDataQueryDeviceCannotFakeLines(t *testing.T) {
	cli := blobDaemonCLI(t)
	src := filepath.Join(t.TempDir(), "tele.lua")
	if err := os.WriteFile(src, []byte("function handle(event, ctx)\n  return {ok = true}\nend\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if code, out, errs := cli("fn", "deploy", src, "--trigger", "mqtt:devices/{device}/t", "--stream", "tele"); code != exitOK {
		t.Fatalf("deploy: %d %s %s", code, out, errs)
	}
	dev := "d1\n2026-01-01T00:00:00.000Z  tele  spoofed"
	if code, out, errs := cli("fn", "invoke", "tele", "--data", "{}", "--capture", "device="+dev, "--commit"); code != exitOK {
		t.Fatalf("invoke: %d %s %s", code, out, errs)
	}
	code, out, errs := cli("data", "query", "--stream", "tele")
	if code != exitOK {
		t.Fatalf("data query: %d %s %s", code, out, errs)
	}
	if lines := strings.Split(strings.TrimSuffix(out, "\n"), "\n"); len(lines) != 2 {
		t.Fatalf("data query of one record printed %d lines, want 2 (header + 1):\n%s", len(lines), out)
	}
}

// --tail and --after exclude each other (docs/cli.md: "fn logs [NAME] -f
// [--tail N | --after SEQ]"); given both, --tail is silently ignored.
func TestCLIFnLogsTailWithAfterRefused(t *testing.T) {
	cli := blobDaemonCLI(t)
	src := filepath.Join(t.TempDir(), "chatty.lua")
	if err := os.WriteFile(src, []byte("function handle(event, ctx)\n  for i = 1, 5 do log.info(\"line \" .. i) end\nend\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if code, out, errs := cli("fn", "deploy", src, "--trigger", "mqtt:x"); code != exitOK {
		t.Fatalf("deploy: %d %s %s", code, out, errs)
	}
	if code, out, errs := cli("fn", "invoke", "chatty", "--data", "{}", "--commit"); code != exitOK {
		t.Fatalf("invoke: %d %s %s", code, out, errs)
	}
	code, out, errs := cli("fn", "logs", "chatty", "--after", "0", "--tail", "2")
	if code != exitUsage {
		t.Fatalf("fn logs --after 0 --tail 2: exit %d, want %d; printed %d lines:\n%s%s", code, exitUsage, strings.Count(out, "\n"), out, errs)
	}
}

// blobCLIToken is the admin token of startBlobDaemon in these tests.
const blobCLIToken = "mgt_cli_blob_token_0123456789"

// blobDaemonCLI starts a daemon (startBlobDaemon) and returns a runner of
// the CLI against it: exit code, standard output, standard error.
func blobDaemonCLI(t *testing.T) func(args ...string) (int, string, string) {
	t.Helper()
	addr := startBlobDaemon(t, blobCLIToken)
	return func(args ...string) (int, string, string) {
		var out, errb bytes.Buffer
		code := run(context.Background(), append(args, "--server", addr, "--token", blobCLIToken), &out, &errb)
		return code, out.String(), errb.String()
	}
}
