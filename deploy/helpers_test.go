package deploy

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"
)

// Version and commit stamped into the binaries the tests build.
const (
	testVersion = "0.0.1-test"
	testCommit  = "deploytest"
)

var (
	binDir   string
	binMu    sync.Mutex
	binBuilt = map[string]string{}
)

func TestMain(m *testing.M) {
	d, err := os.MkdirTemp("", "moongate-deploy-bin-")
	if err != nil {
		panic(err)
	}
	binDir = d
	code := m.Run()
	_ = os.RemoveAll(d)
	os.Exit(code)
}

// repoRoot is the repository root (the tests run in deploy/).
func repoRoot(t testing.TB) string {
	t.Helper()
	r, err := filepath.Abs("..")
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// moongateBinary builds cmd/moongate once per target the way
// `make build-all` does (static, stamped, stripped) and returns its path.
// Unlike the release build it keeps full paths (no -trimpath): the
// packages then come from the build cache that the store's qemu-arm test
// and the native test builds fill, which saves about a minute of cold
// compilation in CI.
func moongateBinary(t testing.TB, goarch, goarm string) string {
	t.Helper()
	binMu.Lock()
	defer binMu.Unlock()
	key := goarch + goarm
	if p, ok := binBuilt[key]; ok {
		return p
	}
	out := filepath.Join(binDir, "moongate-"+key)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, filepath.Join(runtime.GOROOT(), "bin", "go"), "build",
		"-ldflags", "-s -w -X main.version="+testVersion+" -X main.commit="+testCommit,
		"-o", out, "./cmd/moongate")
	cmd.Dir = repoRoot(t)
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOOS=linux", "GOARCH="+goarch, "GOARM="+goarm)
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("building moongate for %s: %v\n%s", key, err, b)
	}
	binBuilt[key] = out
	return out
}

// goEnv points scripts at the go command running the tests.
func goEnv() []string {
	return []string{"GO=" + filepath.Join(runtime.GOROOT(), "bin", "go")}
}

// nativeBinary is moongateBinary for this machine.
func nativeBinary(t testing.TB) string {
	return moongateBinary(t, runtime.GOARCH, "")
}

// needTool fails the test when a command is missing: scripts/test-deps.sh
// (run by make test) installs it.
func needTool(t testing.TB, name, pkg string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	if err != nil {
		t.Fatalf("%s not found: install the Debian package %s (scripts/test-deps.sh does)", name, pkg)
	}
	return p
}

// needRoot skips tests that change the machine (users, dpkg database).
func needRoot(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root (it creates users or installs packages on this machine); CI runs it as root")
	}
}

// run runs a command and returns its combined output; it fails the test
// when the exit status is not 0.
func run(t testing.TB, dir string, env []string, name string, args ...string) string {
	t.Helper()
	out, err := runErr(dir, env, name, args...)
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return out
}

func runErr(dir string, env []string, name string, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), env...)
	var b bytes.Buffer
	cmd.Stdout = &b
	cmd.Stderr = &b
	err := cmd.Run()
	return b.String(), err
}

// packagedConfig is the output of deploy/config.sh.
func packagedConfig(t testing.TB) []byte {
	t.Helper()
	return []byte(run(t, repoRoot(t), nil, "sh", "deploy/config.sh"))
}

func mustExist(t testing.TB, path string) os.FileInfo {
	t.Helper()
	fi, err := os.Lstat(path)
	if err != nil {
		t.Fatalf("expected %s: %v", path, err)
	}
	return fi
}

func mustNotExist(t testing.TB, path string) {
	t.Helper()
	if _, err := os.Lstat(path); err == nil {
		t.Fatalf("%s still exists", path)
	} else if !os.IsNotExist(err) {
		t.Fatal(err)
	}
}
