package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/moongate-edge/moongate/gateway"
	"github.com/moongate-edge/moongate/gateway/apiserver"
	"github.com/moongate-edge/moongate/gateway/config"
)

// startBlobDaemon runs a daemon with a "files" bucket on loopback ports and
// returns its API address.
func startBlobDaemon(t *testing.T, token string) string {
	t.Helper()
	return startBlobDaemonIn(t, token, t.TempDir())
}

// startBlobDaemonIn is startBlobDaemon with its data in dataDir.
func startBlobDaemonIn(t *testing.T, token, dataDir string) string {
	t.Helper()
	cfgYAML := fmt.Sprintf(`gateway_id: clitest
data_dir: %q
log: {level: warn}
mqtt: {embedded: {listen: "127.0.0.1:0"}}
api: {listen: "127.0.0.1:0", tokens: [{name: admin, scope: admin, hash: %q}]}
blobs: {buckets: {files: {max_size: 64KiB}}}
`, dataDir, apiserver.HashToken(token))
	cfg, err := config.Parse("test.yaml", []byte(cfgYAML))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	d, err := gateway.NewDaemon(ctx, cfg, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		cancel()
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- d.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		<-done
	})
	deadline := time.Now().Add(20 * time.Second)
	for !d.Gateway().Ready() {
		if time.Now().After(deadline) {
			t.Fatal("daemon not ready")
		}
		time.Sleep(5 * time.Millisecond)
	}
	return d.HTTPAddr().String()
}

func TestBlobCommands(t *testing.T) {
	const token = "mgt_cli_blob_token_0123456789"
	addr := startBlobDaemon(t, token)
	conn := []string{"--server", addr, "--token", token}
	cli := func(args ...string) (int, string, string) {
		var out, errb bytes.Buffer
		code := run(context.Background(), append(args, conn...), &out, &errb)
		return code, out.String(), errb.String()
	}
	dir := t.TempDir()
	src := filepath.Join(dir, "report.json")
	content := []byte(`{"hello": "blob"}`)
	if err := os.WriteFile(src, content, 0o644); err != nil {
		t.Fatal(err)
	}
	if code, out, errs := cli("blob", "put", "files/reports/2026 11/report.json", src); code != exitOK ||
		!strings.Contains(out, `"name":"reports/2026 11/report.json"`) || !strings.Contains(out, `"content_type":"application/json"`) {
		t.Fatalf("put: %d %s %s", code, out, errs)
	}
	if code, out, errs := cli("blob", "ls", "files", "--prefix", "reports/"); code != exitOK || !strings.Contains(out, "reports/2026 11/report.json") || !strings.Contains(out, "application/json") {
		t.Fatalf("ls: %d %s %s", code, out, errs)
	}
	// --json: each blob as the server sent it (the API's own object).
	req, _ := http.NewRequest(http.MethodGet, "http://"+addr+"/v1/blobs/files", nil)
	req.Header.Set("Authorization", "Bearer "+token)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	var page struct{ Blobs []json.RawMessage }
	err = json.NewDecoder(resp.Body).Decode(&page)
	resp.Body.Close()
	if err != nil || len(page.Blobs) != 1 {
		t.Fatalf("GET /v1/blobs/files: %d blobs, %v", len(page.Blobs), err)
	}
	var want bytes.Buffer
	if err := json.Compact(&want, page.Blobs[0]); err != nil {
		t.Fatal(err)
	}
	if code, out, errs := cli("blob", "ls", "files", "--json"); code != exitOK || out != want.String()+"\n" {
		t.Fatalf("ls --json: %d %q %s, want the API's object %s", code, out, errs, want.String())
	}
	if code, out, _ := cli("blob", "get", "files/reports/2026 11/report.json"); code != exitOK || out != string(content) {
		t.Fatalf("get: %d %q", code, out)
	}
	dst := filepath.Join(dir, "copy.json")
	if code, _, errs := cli("blob", "get", "files/reports/2026 11/report.json", "-o", dst); code != exitOK {
		t.Fatalf("get -o: %d %s", code, errs)
	}
	if b, _ := os.ReadFile(dst); !bytes.Equal(b, content) {
		t.Fatalf("get -o wrote %q", b)
	}
	// Bad input: oversized file, traversal, unknown bucket, missing blob.
	big := filepath.Join(dir, "big.bin")
	if err := os.WriteFile(big, make([]byte, 65<<10), 0o644); err != nil {
		t.Fatal(err)
	}
	if code, _, errs := cli("blob", "put", "files/big.bin", big); code != exitFailure || !strings.Contains(errs, "over the bucket's max_size of 65536 bytes") {
		t.Fatalf("oversized put: %d %s", code, errs)
	}
	for _, name := range []string{"files/../etc/passwd", "files//etc/passwd", "files/a\\b", "files/a\x00b"} {
		if code, _, errs := cli("blob", "put", name, src); code != exitUsage || !strings.Contains(errs, "blob name") {
			t.Fatalf("put %q: %d %s", name, code, errs)
		}
	}
	if code, _, errs := cli("blob", "put", "nope/a", src); code != exitNotFound || !strings.Contains(errs, `bucket "nope"`) {
		t.Fatalf("unknown bucket: %d %s", code, errs)
	}
	if code, _, _ := cli("blob", "put", "files"); code != exitUsage {
		t.Fatalf("missing arguments: %d", code)
	}
	var errb bytes.Buffer
	if code := run(context.Background(), []string{"blob", "rm", "files/reports/2026 11/report.json", "--server", addr, "--token", "mgt_wrong"}, io.Discard, &errb); code != exitAuth {
		t.Fatalf("rm with an unknown token: %d %s", code, errb.String())
	}
	if code, _, _ := cli("blob", "rm", "files/reports/2026 11/report.json"); code != exitOK {
		t.Fatalf("rm: %d", code)
	}
	if code, _, errs := cli("blob", "get", "files/reports/2026 11/report.json", "-o", filepath.Join(dir, "gone")); code != exitNotFound || !strings.Contains(errs, "not found") {
		t.Fatalf("get after rm: %d %s", code, errs)
	}
	if _, err := os.Stat(filepath.Join(dir, "gone")); !os.IsNotExist(err) {
		t.Fatalf("failed get left a file: %v", err)
	}
}

// TestBlobLsTimeHasMilliseconds: tables print times in UTC with
// milliseconds (docs/cli.md); blob ls printed the server's RFC 3339 text,
// whose precision varies ("05.7Z", "06Z").
func TestBlobLsTimeHasMilliseconds(t *testing.T) {
	f := newFakeAPI(t)
	f.on(http.MethodGet, "/v1/blobs/photos", 200, `{"blobs":[{"bucket":"photos","name":"a","size":1,"content_type":"text/plain","sha256":"00","created":"2026-11-26T15:00:05.7Z"},{"bucket":"photos","name":"b","size":1,"content_type":"text/plain","sha256":"00","created":"2026-11-26T15:00:06Z"}],"next_cursor":""}`)
	out, errs, code := runCLI(t, f.URL, "blob", "ls", "photos")
	if code != exitOK {
		t.Fatalf("exit %d: %s", code, errs)
	}
	if !strings.Contains(out, "2026-11-26T15:00:05.700Z") || !strings.Contains(out, "2026-11-26T15:00:06.000Z") {
		t.Fatalf("blob ls times not in the CLI's format (UTC with milliseconds):\n%s", out)
	}
}

// blob get checks the content it received against the SHA-256 the server
// keeps: an object damaged on the gateway's disk (same size, other bytes)
// is served as it is, and was written under FILE with exit 0. The file
// -o writes gets the permissions of any new file, not CreateTemp's 0600.
func TestBlobGetChecksContentAndMode(t *testing.T) {
	const token = "mgt_cli_blob_token_0123456789"
	data := t.TempDir()
	addr := startBlobDaemonIn(t, token, data)
	cli := func(args ...string) (int, string, string) {
		var out, errb bytes.Buffer
		code := run(context.Background(), append(args, "--server", addr, "--token", token), &out, &errb)
		return code, out.String(), errb.String()
	}
	dir := t.TempDir()
	src := filepath.Join(dir, "a.bin")
	content := []byte("the blob's content, as uploaded")
	if err := os.WriteFile(src, content, 0o644); err != nil {
		t.Fatal(err)
	}
	if code, out, errs := cli("blob", "put", "files/a.bin", src); code != exitOK {
		t.Fatalf("put: %d %s %s", code, out, errs)
	}
	dst := filepath.Join(dir, "copy.bin")
	if code, _, errs := cli("blob", "get", "files/a.bin", "-o", dst); code != exitOK {
		t.Fatalf("get -o: %d %s", code, errs)
	}
	ref := filepath.Join(dir, "ref")
	if err := os.WriteFile(ref, nil, 0o666); err != nil {
		t.Fatal(err)
	}
	st, err := os.Stat(dst)
	if err != nil {
		t.Fatal(err)
	}
	rst, err := os.Stat(ref)
	if err != nil {
		t.Fatal(err)
	}
	if st.Mode().Perm() != rst.Mode().Perm() {
		t.Fatalf("get -o wrote mode %v, want %v (a new file's, as os.WriteFile gives)", st.Mode().Perm(), rst.Mode().Perm())
	}
	// A file replaced keeps its permissions.
	private := filepath.Join(dir, "private.bin")
	if err := os.WriteFile(private, []byte("old"), 0o600); err != nil {
		t.Fatal(err)
	}
	if code, _, errs := cli("blob", "get", "files/a.bin", "-o", private); code != exitOK {
		t.Fatalf("get -o over a file: %d %s", code, errs)
	}
	if st, err := os.Stat(private); err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("get -o over a 0600 file left mode %v (%v), want 0600", st.Mode().Perm(), err)
	}
	if err := os.Remove(private); err != nil {
		t.Fatal(err)
	}
	// Damage the stored object: same size, other bytes.
	var objs []string
	err = filepath.WalkDir(data, func(p string, d fs.DirEntry, err error) error {
		if err == nil && !d.IsDir() && strings.Contains(p, string(filepath.Separator)+"objects"+string(filepath.Separator)) {
			objs = append(objs, p)
		}
		return err
	})
	if err != nil || len(objs) != 1 {
		t.Fatalf("stored objects %v, %v; want one", objs, err)
	}
	bad := bytes.ToUpper(content)
	if err := os.WriteFile(objs[0], bad, 0o600); err != nil {
		t.Fatal(err)
	}
	dst2 := filepath.Join(dir, "damaged.bin")
	if code, _, errs := cli("blob", "get", "files/a.bin", "-o", dst2); code != exitFailure || !strings.Contains(errs, "SHA-256") {
		t.Fatalf("get -o of a damaged blob: exit %d %q, want 1 naming the SHA-256", code, errs)
	}
	if _, err := os.Stat(dst2); !os.IsNotExist(err) {
		t.Fatalf("get -o of a damaged blob left %s (%v)", dst2, err)
	}
	if ents, _ := os.ReadDir(dir); len(ents) != 3 {
		t.Fatalf("get -o of a damaged blob left files behind: %v", ents)
	}
	if code, out, errs := cli("blob", "get", "files/a.bin"); code != exitFailure || out != string(bad) || !strings.Contains(errs, "damaged") {
		t.Fatalf("get of a damaged blob to stdout: exit %d, %q, %q; want 1, the bytes served, an error", code, out, errs)
	}
}
