package store

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestFullDiskIsAnError: a disk filled by another process makes writes
// fail with ENOSPC, and the store carries on once there is room again,
// with every acknowledged entry kept. Badger writes its write-ahead log,
// value log and tables through shared mappings of files it had extended
// with holes: the first write into a hole with no block left faulted with
// SIGBUS and killed the process (in the WAL, during ordinary commits), and
// a failed memtable switch then left Badger without a memtable (nil
// dereference on every later read). The store's free-space guard
// (DiskReserve) is off here: another process can fill the disk between
// two of its checks. TestQEMUArm32 runs it on 32-bit ARM too.
func TestFullDiskIsAnError(t *testing.T) {
	inTmpfs(t, "96m", fillDiskScenario)
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
	filler := fillDisk(t, mnt, 0)
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
	reopenHasAll(t, o, acked)
}

// reopenHasAll opens the store of o and checks that its inbox holds
// exactly the acknowledged entries.
func reopenHasAll(t *testing.T, o Options, acked []uint64) {
	t.Helper()
	ctx := context.Background()
	s, err := Open(ctx, o)
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

// TestFullDiskCloseKeepsTheLog: closing the store on a disk that stays
// full returns (Badger retried its last memtable flush each second,
// forever, so the daemon's stop ran into its 45 s deadline and exited 1);
// the memtable's write-ahead log stays, and the next open, with room
// again, has every acknowledged entry.
func TestFullDiskCloseKeepsTheLog(t *testing.T) {
	inTmpfs(t, "64m", func(t *testing.T, mnt string) {
		ctx := context.Background()
		o := Options{Dir: filepath.Join(mnt, "db"), DiskReserve: -1, Logger: quietLogger()}
		s, err := Open(ctx, o)
		if err != nil {
			t.Fatal(err)
		}
		ev := []byte(strings.Repeat("x", 200))
		var acked []uint64
		for range 2000 {
			seqs, err := s.Enqueue(ctx, []InboxEntry{{Function: "f", Key: "k", Event: ev}})
			if err != nil {
				t.Fatal(err)
			}
			acked = append(acked, seqs...)
		}
		filler := fillDisk(t, mnt, 0)
		closed := make(chan error, 1)
		go func() { closed <- s.Close() }()
		select {
		case err := <-closed:
			t.Logf("close on the full disk: %v", err)
		case <-time.After(30 * time.Second):
			t.Fatal("close on a full disk did not return in 30 s")
		}
		if err := os.Remove(filler); err != nil {
			t.Fatal(err)
		}
		reopenHasAll(t, o, acked)
	})
}
