package store

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// fullDiskEnv names the tmpfs a child test process fills.
const fullDiskEnv = "MOONGATE_TEST_FULL_DISK"

// TestFullDiskIsAnError: a disk filled by another process makes writes
// fail with ENOSPC, and the store carries on once there is room again,
// with every acknowledged entry kept. Badger writes its write-ahead log,
// value log and tables through shared mappings of files it had extended
// with holes: the first write into a hole with no block left faulted with
// SIGBUS and killed the process (in the WAL, during ordinary commits), and
// a failed memtable switch then left Badger without a memtable (nil
// dereference on every later read). The store's free-space guard
// (DiskReserve) is off here: another process can fill the disk between
// two of its checks.
//
// The scenario runs in a child process on a small tmpfs, so that a crash
// is this test's failure, not the end of the test binary (TestQEMUArm32
// runs it on 32-bit ARM too). It needs root for the mount.
func TestFullDiskIsAnError(t *testing.T) {
	if dir := os.Getenv(fullDiskEnv); dir != "" {
		fillDiskScenario(t, dir)
		return
	}
	mnt := t.TempDir()
	if out, err := exec.Command("mount", "-t", "tmpfs", "-o", "size=96m", "tmpfs", mnt).CombinedOutput(); err != nil {
		if os.Getenv("CI") != "" {
			t.Fatalf("mount a tmpfs (CI runs as root): %v %s", err, out)
		}
		t.Skipf("needs root to mount a tmpfs: %v %s", err, out)
	}
	t.Cleanup(func() { _ = exec.Command("umount", mnt).Run() })
	args := []string{"-test.run=^TestFullDiskIsAnError$", "-test.v", "-test.timeout=2m"}
	cmd := exec.Command(os.Args[0], args...)
	if w := os.Getenv("MOONGATE_STORE_EXEC_WRAPPER"); w != "" {
		// Under qemu-arm without binfmt_misc the binary needs its emulator.
		cmd = exec.Command(w, append([]string{os.Args[0]}, args...)...)
	}
	cmd.Env = append(os.Environ(), fullDiskEnv+"="+mnt)
	out, err := cmd.CombinedOutput()
	if err != nil || !strings.Contains(string(out), "--- PASS: TestFullDiskIsAnError") {
		t.Fatalf("child: %v\n%s", err, tail(out, 4000))
	}
	t.Logf("child:\n%s", tail(out, 1500))
}

func tail(b []byte, n int) []byte {
	if len(b) > n {
		return b[len(b)-n:]
	}
	return b
}

func fillDiskScenario(t *testing.T, mnt string) {
	ctx := context.Background()
	o := Options{Dir: filepath.Join(mnt, "db"), DiskReserve: -1, Logger: quietLogger()}
	s, err := Open(ctx, o)
	if err != nil {
		t.Fatal(err)
	}
	ev := []byte(strings.Repeat("x", 200))
	var acked []uint64
	enqueue := func() error {
		c, cancel := context.WithTimeout(ctx, 10*time.Second)
		defer cancel()
		seqs, err := s.Enqueue(c, []InboxEntry{{Function: "f", Key: "k", Event: ev}})
		if err == nil {
			acked = append(acked, seqs...)
		}
		return err
	}
	for range 2000 {
		if err := enqueue(); err != nil {
			t.Fatal(err)
		}
	}
	// Another process takes every free block.
	filler := filepath.Join(mnt, "filler")
	f, err := os.Create(filler)
	if err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 64<<10)
	for {
		if _, err := f.Write(buf); err != nil {
			if !errors.Is(err, syscall.ENOSPC) {
				t.Fatal(err)
			}
			break
		}
	}
	f.Close()
	var refused error
	for i := 0; i < 200_000 && refused == nil; i++ {
		refused = enqueue()
	}
	if refused == nil || !strings.Contains(refused.Error(), "no space left on device") {
		t.Fatalf("writes on a full disk: %v", refused)
	}
	t.Logf("refused after %d entries: %v", len(acked), refused)
	if err := enqueue(); err == nil {
		t.Fatal("a write succeeded on the full disk")
	}
	// Room again: writes go on without a restart.
	if err := os.Remove(filler); err != nil {
		t.Fatal(err)
	}
	if err := enqueue(); err != nil {
		t.Fatalf("write after the disk has room again: %v", err)
	}
	if err := s.Close(); err != nil {
		t.Fatalf("close: %v", err)
	}
	s, err = Open(ctx, o)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	got, err := s.InboxPending(ctx, 0, len(acked)+10)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != len(acked) {
		t.Fatalf("%d entries after reopening, %d acknowledged", len(got), len(acked))
	}
	for i, e := range got {
		if e.Seq != acked[i] {
			t.Fatalf("entry %d: seq %d, acknowledged %d", i, e.Seq, acked[i])
		}
	}
}
