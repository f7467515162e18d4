package store

import (
	"bufio"
	"bytes"
	"context"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	badger "github.com/dgraph-io/badger/v4"
)

// smapsDirtyKB returns the kilobytes of path's mappings in this process
// that are dirty in the page cache (not written back), from
// /proc/self/smaps, and whether the file is mapped at all.
func smapsDirtyKB(t *testing.T, path string) (int, bool) {
	t.Helper()
	f, err := os.Open("/proc/self/smaps")
	if err != nil {
		t.Skipf("no /proc/self/smaps: %v", err)
	}
	defer f.Close()
	kb, mapped, in := 0, false, false
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := sc.Text()
		fields := strings.Fields(line)
		if len(fields) >= 5 && strings.Contains(fields[0], "-") && !strings.HasSuffix(fields[0], ":") {
			in = fields[len(fields)-1] == path
			mapped = mapped || in
			continue
		}
		if in && (strings.HasPrefix(line, "Private_Dirty:") || strings.HasPrefix(line, "Shared_Dirty:")) {
			n, err := strconv.Atoi(fields[1])
			if err != nil {
				t.Fatalf("smaps line %q: %v", line, err)
			}
			kb += n
		}
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	return kb, mapped
}

// logFiles returns the paths of dir's files ending in ext, sorted.
func logFiles(t *testing.T, dir, ext string) []string {
	t.Helper()
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, e := range ents {
		if strings.HasSuffix(e.Name(), ext) {
			out = append(out, filepath.Join(dir, e.Name()))
		}
	}
	sort.Strings(out)
	return out
}

// Value-log GC rewrites the live values of a value-log file into the
// current value log and memtable log, then deletes the old file. Without
// SyncWrites (durability interval) nothing synced the copies (the GC's
// writes do not go through the committer, so they do not even mark the
// store dirty): a power loss after the deletion reached the journal took
// them back, and values committed and synced long ago were gone. The
// copies must be written back (not dirty in the page cache) once GC
// returns, in both modes.
func TestValueLogGCSyncsBeforeDeleting(t *testing.T) {
	for _, d := range []Durability{DurabilityInterval, DurabilityAlways} {
		t.Run(d.String(), func(t *testing.T) { testValueLogGCSyncsBeforeDeleting(t, d) })
	}
}

func testValueLogGCSyncsBeforeDeleting(t *testing.T, durability Durability) {
	old := badgerTune
	badgerTune = func(bo badger.Options) badger.Options {
		return bo.WithValueLogFileSize(1 << 20).WithMemTableSize(1 << 20)
	}
	t.Cleanup(func() { badgerTune = old })
	ctx := context.Background()
	dir, err := filepath.EvalSymlinks(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	s := openTest(t, Options{Dir: dir, Durability: durability, SyncInterval: 5 * time.Millisecond,
		RetentionInterval: time.Hour, GCInterval: -1})
	val := bytes.Repeat([]byte("v"), 4<<10) // over the value threshold: in the value log
	var seqs []uint64
	for i := 0; i < 16; i++ {
		var es []InboxEntry
		for j := 0; j < 50; j++ {
			es = append(es, InboxEntry{Function: "f", Event: val})
		}
		sq, err := s.Enqueue(ctx, es)
		if err != nil {
			t.Fatal(err)
		}
		seqs = append(seqs, sq...)
	}
	live := 0
	for i, sq := range seqs {
		if i%4 == 0 {
			live++
			continue // stays in the inbox: a live value GC must move
		}
		if _, err := s.Commit(ctx, &Commit{InboxSeq: sq}); err != nil {
			t.Fatal(err)
		}
	}
	// Small events fill memtables (flushes count the deleted values).
	churn(t, s, "g", bytes.Repeat([]byte("s"), 900), 60)
	if err := s.db.Flatten(1); err != nil {
		t.Fatal(err)
	}
	// Everything written so far synced (this sync covers the current logs),
	// and the store's own interval sync done.
	for wait := time.Now().Add(2 * time.Second); s.dirty.Load(); time.Sleep(time.Millisecond) {
		if time.Now().After(wait) {
			t.Fatal("interval sync did not run")
		}
	}
	if err := s.db.Sync(); err != nil {
		t.Fatal(err)
	}
	vlogsBefore := logFiles(t, dir, ".vlog")
	memsBefore := logFiles(t, dir, ".mem")
	if vk, _ := smapsDirtyKB(t, vlogsBefore[len(vlogsBefore)-1]); vk != 0 {
		t.Fatalf("before GC: current value log %d KiB dirty after a sync", vk)
	}
	if mk, _ := smapsDirtyKB(t, memsBefore[len(memsBefore)-1]); mk != 0 {
		t.Fatalf("before GC: current memtable log %d KiB dirty after a sync", mk)
	}
	t.Logf("before GC: %d value-log files, current %s clean", len(vlogsBefore), filepath.Base(vlogsBefore[len(vlogsBefore)-1]))
	syncs := s.Stats().Syncs
	n, err := s.RunValueLogGC(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if n == 0 {
		t.Skip("no value-log file rewritten: setup did not give GC anything to do")
	}
	vlogsAfter := logFiles(t, dir, ".vlog")
	var deleted []string
	for _, p := range vlogsBefore {
		if _, err := os.Stat(p); os.IsNotExist(err) {
			deleted = append(deleted, filepath.Base(p))
		}
	}
	if len(deleted) == 0 {
		t.Fatalf("GC rewrote %d files but deleted none (before %v, after %v)", n, vlogsBefore, vlogsAfter)
	}
	if got := s.InboxLen(); got != int64(live) {
		t.Fatalf("inbox %d, want %d", got, live)
	}
	curVlog := vlogsAfter[len(vlogsAfter)-1]
	mems := logFiles(t, dir, ".mem")
	curMem := mems[len(mems)-1]
	// Wait for the store's interval syncs (5 ms) to write the copies back.
	deadline := time.Now().Add(2 * time.Second)
	for {
		vk, _ := smapsDirtyKB(t, curVlog)
		mk, _ := smapsDirtyKB(t, curMem)
		if vk == 0 && mk == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("value-log GC deleted %v; 2 s (400 sync intervals) later the copies of its %d live values are still not written back: %s has %d KiB dirty, %s %d KiB (interval syncs since the GC: %d)",
				deleted, live, filepath.Base(curVlog), vk, filepath.Base(curMem), mk, s.Stats().Syncs-syncs)
		}
		time.Sleep(5 * time.Millisecond)
	}
}
