package store

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"
)

// TestQEMUArm32 cross-compiles this package's tests for GOARCH=arm GOARM=7
// and runs the whole suite in -test.short mode, with the default
// low-memory profile, under qemu-arm (Debian package qemu-user), including
// a shortened crash test. 32-bit is where Badger's address-space limits
// bite, and where store/third_party/ristretto's fix matters
// (TestBatchSplitsIntoTransactions read corrupt tables without it).
// store/testdata/qemu-arm.sh runs the same by hand.
func TestQEMUArm32(t *testing.T) {
	if runtime.GOARCH == "arm" {
		t.Skip("already running on 32-bit ARM")
	}
	qemu, err := exec.LookPath("qemu-arm")
	if err != nil {
		t.Skip("qemu-arm not installed (scripts/test-deps.sh installs qemu-user)")
	}
	goBin := filepath.Join(runtime.GOROOT(), "bin", "go")
	bin := filepath.Join(t.TempDir(), "store.arm.test")
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	build := exec.CommandContext(ctx, goBin, "test", "-c", "-o", bin, ".")
	build.Env = append(os.Environ(), "CGO_ENABLED=0", "GOARCH=arm", "GOARM=7")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("cross-compiling for arm: %v\n%s", err, out)
	}
	run := exec.CommandContext(ctx, qemu, bin, "-test.short", "-test.v", "-test.timeout", "3m")
	run.Env = append(os.Environ(), "MOONGATE_STORE_EXEC_WRAPPER="+qemu, "MOONGATE_STORE_CRASH_KILLS=5")
	out, err := run.CombinedOutput()
	if err != nil {
		t.Fatalf("arm test binary under qemu-arm: %v\n%s", err, out)
	}
	mustPass := []string{"TestCrash", "TestValueLogFiles", "TestBatchSplitsIntoTransactions", "TestFormatVersion", "TestMigrateOlderFormat"}
	if os.Geteuid() == 0 {
		mustPass = append(mustPass, "TestFullDiskIsAnError") // mounts a tmpfs
	}
	for _, name := range mustPass {
		if !strings.Contains(string(out), "--- PASS: "+name+" ") {
			t.Fatalf("%s did not pass under qemu-arm:\n%s", name, out)
		}
	}
	if strings.Contains(string(out), "--- FAIL") || strings.Contains(string(out), "--- SKIP: TestCrash ") {
		t.Fatalf("expected tests did not run under qemu-arm:\n%s", out)
	}
	t.Logf("qemu-arm run:\n%s", lastLines(string(out), 12))
}

func lastLines(s string, n int) string {
	ls := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(ls) > n {
		ls = ls[len(ls)-n:]
	}
	return strings.Join(ls, "\n")
}
