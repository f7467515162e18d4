package apiserver_test

import (
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

const apiDoc = "../../docs/api.md"

var shBlock = regexp.MustCompile("(?s)```sh\n(.*?)```")

// TestDocExamples runs every ```sh block of docs/api.md, in order, with
// curl against a real daemon: each curl -f fails on an error status.
func TestDocExamples(t *testing.T) {
	doc, err := os.ReadFile(apiDoc)
	if err != nil {
		t.Fatal(err)
	}
	curl, err := exec.LookPath("curl")
	if err != nil {
		t.Fatalf("curl is needed to check docs/api.md (scripts/test-deps.sh installs it): %v", err)
	}
	blocks := shBlock.FindAllSubmatch(doc, -1)
	if len(blocks) < 10 {
		t.Fatalf("only %d sh blocks in %s", len(blocks), apiDoc)
	}
	e := startDaemon(t, daemonConfig(t.TempDir(), "blobs: {buckets: {photos: {max_size: 8MiB}}}\n"))
	var script strings.Builder
	script.WriteString("set -euo pipefail\n")
	for _, b := range blocks {
		script.Write(b[1])
		script.WriteString("\n")
	}
	path := filepath.Join(t.TempDir(), "api-examples.sh")
	if err := os.WriteFile(path, []byte(script.String()), 0o600); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("bash", path)
	cmd.Env = append(os.Environ(), "MOONGATE_SERVER="+e.base, "MOONGATE_TOKEN="+adminToken, "READ_TOKEN="+readToken,
		"PATH="+filepath.Dir(curl)+":"+os.Getenv("PATH"))
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("docs/api.md examples failed: %v\n%s", err, out)
	}
	if testing.Verbose() {
		t.Logf("examples output:\n%s", out)
	}
	// The examples did what they say.
	for _, want := range []string{`"name":"hello"`, `"committed":true`, `"ok":true`, `"LUA_COMPILE_ERROR"`, `"line":"2"`,
		"moongate_invocations_committed_total", `"deleted_versions":"2"`, `"name":"cam1/note.txt"`, "hello blob"} {
		if !strings.Contains(strings.ReplaceAll(string(out), `": `, `":`), want) {
			t.Errorf("examples output lacks %s:\n%s", want, out)
		}
	}
}

// TestDocRoutes checks that the route table of docs/api.md lists every
// REST route of the proto definitions.
func TestDocRoutes(t *testing.T) {
	doc, err := os.ReadFile(apiDoc)
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range allRoutesTemplates(t) {
		row := "| " + r[0] + " | `" + r[1] + "` |"
		if !strings.Contains(string(doc), row) {
			t.Errorf("docs/api.md route table lacks %s", row)
		}
	}
}
