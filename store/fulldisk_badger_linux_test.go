package store

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	badger "github.com/dgraph-io/badger/v4"
)

// What a full disk does to Badger itself, now that its mapped files get
// their blocks up front (store/third_party/ristretto, section 4): the
// write that needs blocks fails with ENOSPC, and the error paths behind it
// must lose nothing. Each scenario runs in a child process on a small
// tmpfs (inTmpfs): a crash is the test's failure.

// tmpfsEnv names the tmpfs a child test process works on.
const tmpfsEnv = "MOONGATE_TEST_TMPFS"

// inTmpfs runs scenario in a child process of this test binary, on a fresh
// tmpfs of the given size mounted for it (root needed: skipped without,
// except under CI).
func inTmpfs(t *testing.T, size string, scenario func(t *testing.T, mnt string)) {
	t.Helper()
	if dir := os.Getenv(tmpfsEnv); dir != "" {
		scenario(t, dir)
		return
	}
	mnt := t.TempDir()
	if out, err := exec.Command("mount", "-t", "tmpfs", "-o", "size="+size, "tmpfs", mnt).CombinedOutput(); err != nil {
		if os.Getenv("CI") != "" {
			t.Fatalf("mount a tmpfs (CI runs as root): %v %s", err, out)
		}
		t.Skipf("needs root to mount a tmpfs: %v %s", err, out)
	}
	t.Cleanup(func() { _ = exec.Command("umount", mnt).Run() })
	args := []string{"-test.run=^" + t.Name() + "$", "-test.v", "-test.timeout=2m"}
	cmd := exec.Command(os.Args[0], args...)
	if w := os.Getenv("MOONGATE_STORE_EXEC_WRAPPER"); w != "" {
		// Under qemu-arm without binfmt_misc the binary needs its emulator.
		cmd = exec.Command(w, append([]string{os.Args[0]}, args...)...)
	}
	cmd.Env = append(os.Environ(), tmpfsEnv+"="+mnt)
	out, err := cmd.CombinedOutput()
	if err != nil || !strings.Contains(string(out), "--- PASS: "+t.Name()) {
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

// fillDisk writes a file into mnt until about leave bytes are free (as
// another process on the same disk would) and returns its path.
func fillDisk(t *testing.T, mnt string, leave int64) string {
	t.Helper()
	filler := filepath.Join(mnt, "filler")
	f, err := os.OpenFile(filler, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var st syscall.Statfs_t
	if err := syscall.Statfs(mnt, &st); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 64<<10)
	for n := int64(st.Bavail)*int64(st.Bsize) - leave; n > 0; {
		k, err := f.Write(buf[:min(int64(len(buf)), n)])
		n -= int64(k)
		if errors.Is(err, syscall.ENOSPC) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
	}
	return filler
}

// badgerLog records whether Badger logged a failed compaction or memtable
// flush.
type badgerLog struct{ compactionFailed, flushFailed atomic.Bool }

func (l *badgerLog) Errorf(f string, a ...any) { l.note(f, a...) }
func (l *badgerLog) Warningf(f string, a ...any) {
	l.note(f, a...)
}
func (l *badgerLog) Infof(string, ...any)  {}
func (l *badgerLog) Debugf(string, ...any) {}
func (l *badgerLog) note(f string, a ...any) {
	msg := fmt.Sprintf(f, a...)
	if strings.Contains(msg, "doCompact") {
		l.compactionFailed.Store(true)
	}
	if strings.Contains(msg, "error flushing memtable") {
		l.flushFailed.Store(true)
	}
}

// fullDiskBadger is moongate's low-memory profile, as far as these
// scenarios need it.
func fullDiskBadger(dir string, log badger.Logger) badger.Options {
	return badger.DefaultOptions(dir).WithLogger(log).WithSyncWrites(true).
		WithMemTableSize(4 << 20).WithNumMemtables(2).WithValueLogFileSize(16 << 20).
		WithValueThreshold(1 << 10).WithNumVersionsToKeep(1).WithNumCompactors(2).
		WithBaseTableSize(2 << 20).WithBaseLevelSize(16 << 20)
}

// TestFullDiskCompactionKeepsKeys: a compaction whose output table cannot
// be written fails (and is tried again later) and keeps its input tables.
// Upstream's builder goroutine reported its error with a deferred call made
// while the error was still nil: the compaction went on without the table
// and deleted its inputs (43,100 of 60,000 keys readable, no error).
func TestFullDiskCompactionKeepsKeys(t *testing.T) {
	if testing.Short() {
		t.Skip("-short (qemu-arm): the amd64 run covers it")
	}
	inTmpfs(t, "96m", func(t *testing.T, mnt string) {
		log := &badgerLog{}
		opts := fullDiskBadger(filepath.Join(mnt, "db"), log).WithNumLevelZeroTables(8).WithNumLevelZeroTablesStall(16)
		db, err := badger.Open(opts)
		if err != nil {
			t.Fatal(err)
		}
		const n = 60_000
		key := func(i int) []byte { return fmt.Appendf(nil, "k%08d", i) }
		val := func(i int) []byte { return bytes.Repeat([]byte{byte('a' + i%26)}, 200) }
		for i := 0; i < n; i += 100 {
			wb := db.NewWriteBatch()
			for j := i; j < i+100; j++ {
				if err := wb.Set(key(j), val(j)); err != nil {
					t.Fatal(err)
				}
			}
			if err := wb.Flush(); err != nil {
				t.Fatal(err)
			}
		}
		if err := db.Close(); err != nil { // every memtable flushed: level-0 tables
			t.Fatal(err)
		}
		level0 := func(db *badger.DB) int {
			k := 0
			for _, ti := range db.Tables() {
				if ti.Level == 0 {
					k++
				}
			}
			return k
		}
		// Room to open (a 32 MiB value log, an 8 MiB write-ahead log), not
		// for the compaction that opening with a lower level-0 bound starts.
		filler := fillDisk(t, mnt, 40<<20+64<<10)
		opts = opts.WithNumLevelZeroTables(2).WithNumLevelZeroTablesStall(4)
		if db, err = badger.Open(opts); err != nil {
			t.Fatal(err)
		}
		start := level0(db)
		deadline := time.Now().Add(30 * time.Second)
		for !log.compactionFailed.Load() && level0(db) == start {
			if time.Now().After(deadline) {
				t.Fatalf("no compaction in 30 s (%d level-0 tables)", start)
			}
			time.Sleep(10 * time.Millisecond)
		}
		count := func() int {
			c := 0
			err := db.View(func(txn *badger.Txn) error {
				for i := range n {
					it, err := txn.Get(key(i))
					if errors.Is(err, badger.ErrKeyNotFound) {
						continue
					}
					if err != nil {
						return err
					}
					if v, err := it.ValueCopy(nil); err == nil && bytes.Equal(v, val(i)) {
						c++
					}
				}
				return nil
			})
			if err != nil {
				t.Fatal(err)
			}
			return c
		}
		if c := count(); c != n {
			t.Fatalf("on the full disk after the compaction: %d of %d keys", c, n)
		}
		if err := os.Remove(filler); err != nil {
			t.Fatal(err)
		}
		if err := db.Close(); err != nil {
			t.Fatal(err)
		}
		if db, err = badger.Open(opts); err != nil {
			t.Fatal(err)
		}
		defer db.Close()
		if c := count(); c != n {
			t.Fatalf("reopened with room: %d of %d keys", c, n)
		}
	})
}

// TestFullDiskValueLogKeepsEntries: writes refused while the value log
// cannot grow leave no gap in it. Upstream moved the write offset before
// growing the file: the refused writes left zeros before the next entry,
// value-log GC's rewrite stopped at them and deleted the file with the
// acknowledged entry after them.
func TestFullDiskValueLogKeepsEntries(t *testing.T) {
	if testing.Short() {
		t.Skip("-short (qemu-arm): the amd64 run covers it")
	}
	inTmpfs(t, "96m", func(t *testing.T, mnt string) {
		dir := filepath.Join(mnt, "db")
		opts := fullDiskBadger(dir, &badgerLog{})
		db, err := badger.Open(opts)
		if err != nil {
			t.Fatal(err)
		}
		val := func(i int) []byte { return bytes.Repeat([]byte{byte('a' + i%26)}, 2048) } // over the value threshold
		filler := fillDisk(t, mnt, 0)
		var acked [][]byte
		for i := 0; ; i++ {
			k := fmt.Appendf(nil, "a%06d", i)
			if err := db.Update(func(txn *badger.Txn) error { return txn.Set(k, val(i)) }); err != nil {
				break // the value log could not grow
			}
			acked = append(acked, k)
		}
		fillDisk(t, mnt, 0) // what the refusals freed, the other process takes
		for i := range 3 {
			if err := db.Update(func(txn *badger.Txn) error { return txn.Set(fmt.Appendf(nil, "z%d", i), val(i)) }); err == nil {
				t.Fatal("a write on the full disk succeeded")
			}
		}
		if err := os.Remove(filler); err != nil {
			t.Fatal(err)
		}
		keep := bytes.Repeat([]byte("K"), 2048)
		if err := db.Update(func(txn *badger.Txn) error { return txn.Set([]byte("keep"), keep) }); err != nil {
			t.Fatalf("write once there is room: %v", err)
		}
		// Only "keep" is live: value-log GC rewrites it out of the file.
		for _, k := range acked {
			if err := db.Update(func(txn *badger.Txn) error { return txn.Delete(k) }); err != nil {
				t.Fatal(err)
			}
		}
		if err := db.Close(); err != nil {
			t.Fatal(err)
		}
		if db, err = badger.Open(opts); err != nil {
			t.Fatal(err)
		}
		if err := db.Flatten(1); err != nil {
			t.Fatal(err)
		}
		for db.RunValueLogGC(0.5) == nil {
		}
		get := func() error {
			return db.View(func(txn *badger.Txn) error {
				it, err := txn.Get([]byte("keep"))
				if err != nil {
					return err
				}
				v, err := it.ValueCopy(nil)
				if err == nil && !bytes.Equal(v, keep) {
					err = fmt.Errorf("a value of %d bytes, not the one written", len(v))
				}
				return err
			})
		}
		if err := get(); err != nil {
			t.Fatalf("the acknowledged key after value-log GC: %v", err)
		}
		if err := db.Close(); err != nil {
			t.Fatal(err)
		}
		if db, err = badger.Open(opts); err != nil {
			t.Fatal(err)
		}
		defer db.Close()
		if err := get(); err != nil {
			t.Fatalf("the acknowledged key after reopening: %v", err)
		}
	})
}

// TestFullDiskDropPrefix: DropPrefix (the store's format migrations use
// it) that cannot make its next memtable fails and leaves the DB usable.
// It left db.mt nil: the next read panicked, the next write exited the
// process.
func TestFullDiskDropPrefix(t *testing.T) {
	inTmpfs(t, "96m", func(t *testing.T, mnt string) {
		db, err := badger.Open(fullDiskBadger(filepath.Join(mnt, "db"), &badgerLog{}))
		if err != nil {
			t.Fatal(err)
		}
		defer db.Close()
		for i := range 1000 {
			if err := db.Update(func(txn *badger.Txn) error {
				return txn.Set(fmt.Appendf(nil, "p%06d", i), bytes.Repeat([]byte("v"), 100))
			}); err != nil {
				t.Fatal(err)
			}
		}
		// A reader holds the memtable (so its log stays) while another
		// process takes the free blocks.
		txn := db.NewTransaction(false)
		it := txn.NewIterator(badger.DefaultIteratorOptions)
		filler := fillDisk(t, mnt, 256<<10)
		if err := db.DropPrefix([]byte("p")); err == nil || !strings.Contains(err.Error(), "no space left on device") {
			t.Fatalf("DropPrefix on a full disk: %v", err)
		}
		it.Close()
		txn.Discard()
		if err := db.View(func(txn *badger.Txn) error {
			_, err := txn.Get([]byte("p000001"))
			return err
		}); err != nil {
			t.Fatalf("read after the failed drop: %v", err)
		}
		if err := os.Remove(filler); err != nil {
			t.Fatal(err)
		}
		if err := db.Update(func(txn *badger.Txn) error { return txn.Set([]byte("x"), []byte("y")) }); err != nil {
			t.Fatalf("write after the failed drop: %v", err)
		}
	})
}

// TestFullDiskManifestTakesBackAFailedWrite: a MANIFEST change set that
// could not be written whole is taken back, so the DB opens again once
// there is room. Upstream left the part written at the end of the file and
// appended the next change set after it: replay failed its checksum ("manifest
// has checksum mismatch") and the DB did not open any more. The MANIFEST is
// padded to end 8 bytes before a page boundary so that the flush's change
// set needs a page the full disk does not have, with room left for the
// table itself.
func TestFullDiskManifestTakesBackAFailedWrite(t *testing.T) {
	inTmpfs(t, "96m", func(t *testing.T, mnt string) {
		log := &badgerLog{}
		opts := func(dir string) badger.Options {
			return fullDiskBadger(dir, log).WithNumLevelZeroTables(8).WithNumLevelZeroTablesStall(16)
		}
		write := func(db *badger.DB) {
			for i := 0; i < 3000; i += 100 {
				if err := db.Update(func(txn *badger.Txn) error {
					for j := i; j < i+100; j++ {
						if err := txn.Set(fmt.Appendf(nil, "k%08d", j), bytes.Repeat([]byte{'v'}, 200)); err != nil {
							return err
						}
					}
					return nil
				}); err != nil {
					t.Fatal(err)
				}
			}
		}
		// The size of the level-0 table these keys make.
		a := filepath.Join(mnt, "a")
		db, err := badger.Open(opts(a))
		if err != nil {
			t.Fatal(err)
		}
		write(db)
		if err := db.Close(); err != nil {
			t.Fatal(err)
		}
		fi, err := os.Stat(filepath.Join(a, "000001.sst"))
		if err != nil {
			t.Fatal(err)
		}
		pages := (fi.Size() + 4095) / 4096
		if err := os.RemoveAll(a); err != nil {
			t.Fatal(err)
		}
		// A new DB whose MANIFEST ends 8 bytes before a page boundary
		// (padded with empty change sets: 8 bytes each, valid records).
		b := filepath.Join(mnt, "b")
		if db, err = badger.Open(opts(b)); err != nil {
			t.Fatal(err)
		}
		if err := db.Close(); err != nil {
			t.Fatal(err)
		}
		mf := filepath.Join(b, "MANIFEST")
		st, err := os.Stat(mf)
		if err != nil {
			t.Fatal(err)
		}
		f, err := os.OpenFile(mf, os.O_WRONLY|os.O_APPEND, 0)
		if err != nil {
			t.Fatal(err)
		}
		for n := st.Size(); n%4096 != 4088; n += 8 {
			if _, err := f.Write(make([]byte, 8)); err != nil { // length 0, CRC-32C of nothing 0
				t.Fatal(err)
			}
		}
		f.Close()
		if db, err = badger.Open(opts(b)); err != nil {
			t.Fatal(err)
		}
		write(db)
		filler := fillDisk(t, mnt, pages*4096) // room for the table, not the MANIFEST's next page
		closed := make(chan error, 1)
		go func() { closed <- db.Close() }() // flushes the memtable
		deadline := time.Now().Add(30 * time.Second)
		for !log.flushFailed.Load() {
			if time.Now().After(deadline) {
				t.Fatal("the flush did not fail on the full disk")
			}
			time.Sleep(10 * time.Millisecond)
		}
		if err := os.Remove(filler); err != nil {
			t.Fatal(err)
		}
		if err := <-closed; err != nil { // the flush is retried each second
			t.Fatal(err)
		}
		if db, err = badger.Open(opts(b)); err != nil {
			t.Fatalf("reopening with room: %v", err)
		}
		defer db.Close()
		if err := db.View(func(txn *badger.Txn) error {
			_, err := txn.Get([]byte("k00002999"))
			return err
		}); err != nil {
			t.Fatalf("a key after reopening: %v", err)
		}
	})
}
