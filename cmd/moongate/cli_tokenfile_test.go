package main

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// --token-file reads the token from a file or standard input (-); --token
// still works but warns that the token is visible in ps and the history.
func TestTokenFile(t *testing.T) {
	srv := newFakeAPI(t)
	srv.on("GET", "/v1/sync", 200, `{"targets":[]}`)
	file := filepath.Join(t.TempDir(), "token")
	if err := os.WriteFile(file, []byte("filetoken\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	runWith := func(in string, args ...string) (string, int) {
		withEnv(t, map[string]string{"MOONGATE_SERVER": srv.URL, "MOONGATE_TOKEN": "envtoken", "HOME": t.TempDir()})
		old := stdin
		stdin = strings.NewReader(in)
		t.Cleanup(func() { stdin = old })
		var out, errb bytes.Buffer
		code := run(context.Background(), append([]string{"sync", "status"}, args...), &out, &errb)
		return errb.String(), code
	}
	last := func() string {
		r := srv.requests()
		if len(r) == 0 {
			return ""
		}
		return r[len(r)-1].auth
	}

	if errs, code := runWith("", "--token-file", file); code != 0 || last() != "Bearer filetoken" || errs != "" {
		t.Errorf("--token-file FILE: exit %d, auth %q, stderr %q", code, last(), errs)
	}
	if errs, code := runWith("stdintoken\n", "--token-file", "-"); code != 0 || last() != "Bearer stdintoken" || errs != "" {
		t.Errorf("--token-file -: exit %d, auth %q, stderr %q", code, last(), errs)
	}
	if errs, code := runWith(""); code != 0 || last() != "Bearer envtoken" || errs != "" {
		t.Errorf("MOONGATE_TOKEN: exit %d, auth %q, stderr %q", code, last(), errs)
	}
	errs, code := runWith("", "--token", "flagtoken")
	if code != 0 || last() != "Bearer flagtoken" || !strings.Contains(errs, "warning: --token") ||
		!strings.Contains(errs, "MOONGATE_TOKEN") || !strings.Contains(errs, "--token-file") {
		t.Errorf("--token: exit %d, auth %q, stderr %q", code, last(), errs)
	}
	// A token file others can read draws the warning the CLI configuration
	// file draws (docs/cli.md said so; it did not).
	if err := os.Chmod(file, 0o644); err != nil {
		t.Fatal(err)
	}
	if errs, code := runWith("", "--token-file", file); code != 0 || last() != "Bearer filetoken" ||
		!strings.Contains(errs, "readable by others") || !strings.Contains(errs, file) {
		t.Errorf("--token-file of mode 0644: exit %d, auth %q, stderr %q", code, last(), errs)
	}
	n := len(srv.requests())
	for _, c := range []struct {
		in   string
		args []string
		want string
	}{
		{"", []string{"--token-file", filepath.Join(t.TempDir(), "missing")}, "no such file"},
		{"  \n", []string{"--token-file", "-"}, "empty"},
		{"", []string{"--token-file", file, "--token", "x"}, "give one"},
	} {
		if errs, code := runWith(c.in, c.args...); code != exitUsage || !strings.Contains(errs, c.want) {
			t.Errorf("%v: exit %d (want %d), stderr %q (want %q)", c.args, code, exitUsage, errs, c.want)
		}
	}
	if len(srv.requests()) != n {
		t.Error("a bad --token-file still sent a request")
	}
	// The help names it.
	var out bytes.Buffer
	if code := run(context.Background(), []string{"sync", "status", "--help"}, &out, &out); code != 0 || !strings.Contains(out.String(), "--token-file FILE") {
		t.Errorf("help: %d %s", code, out.String())
	}
}

// --token-file - reads standard input: a value of - elsewhere in the same
// command (--data -, state put's VALUE, blob put's FILE) is refused with
// the reason instead of reading nothing (an empty event, an empty blob).
func TestTokenFileStdinNotReadTwice(t *testing.T) {
	srv := newFakeAPI(t)
	withEnv(t, map[string]string{"MOONGATE_SERVER": srv.URL, "HOME": t.TempDir()})
	for _, args := range [][]string{
		{"fn", "invoke", "f", "--data", "-"},
		{"state", "put", "f", "k", "-"},
		{"blob", "put", "b/n", "-"},
	} {
		old := stdin
		stdin = strings.NewReader("tok\n")
		var out, errb bytes.Buffer
		code := run(context.Background(), append(args, "--token-file", "-"), &out, &errb)
		stdin = old
		if code != exitUsage || !strings.Contains(errb.String(), "standard input was read for --token-file -") {
			t.Errorf("%v: exit %d (want %d), stderr %q", args, code, exitUsage, errb.String())
		}
	}
	if n := len(srv.requests()); n != 0 {
		t.Errorf("%d requests sent", n)
	}
}
