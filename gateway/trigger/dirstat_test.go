package trigger

import (
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"
)

// TestDirReaderReadsOnlyChanges: Watch's poll reads the files only when
// the file system's stamps changed (names, inode, size, mode, modification
// and change time), when a file changed too recently to vouch for its
// content, and every fullReadEvery. The clock passed in is ahead of the
// real one where the files must count as settled.
func TestDirReaderReadsOnlyChanges(t *testing.T) {
	if runtime.GOOS != "linux" {
		t.Skip("change times are read on Linux only; elsewhere every poll reads")
	}
	dir := t.TempDir()
	write(t, dir, "a.yaml", okManifest)
	write(t, dir, "a.lua", "return 1")
	r := &dirReader{dir: dir}
	later := func() time.Time { return time.Now().Add(2 * racyWindow) }

	// Files just written are racy: every load reads them.
	if _, _, _, read := r.load(time.Now(), false); !read {
		t.Fatal("first load did not read")
	}
	if _, _, _, read := r.load(time.Now(), false); !read {
		t.Fatal("files changed within the racy window were not read again")
	}
	fns, _, fp, read := r.load(later(), false)
	if !read || len(fns) != 1 {
		t.Fatalf("a racy read was taken as settled: read=%v fns=%d", read, len(fns))
	}
	t0 := r.at
	// Nothing changed: no read, the same fingerprint.
	if fns, errs, got, read := r.load(t0.Add(time.Second), false); read || got != fp || fns != nil || errs != nil {
		t.Fatalf("unchanged directory: read=%v fp %q -> %q", read, fp, got)
	}
	// force reads.
	if _, _, got, read := r.load(t0.Add(time.Second), true); !read || got != fp {
		t.Fatalf("forced load: read=%v, fingerprint changed=%v", read, got != fp)
	}
	// After fullReadEvery it reads anyway.
	if _, _, _, read := r.load(r.at.Add(fullReadEvery), false); !read {
		t.Fatal("no full read after fullReadEvery")
	}
	// A clock set back before the last read: read.
	if _, _, _, read := r.load(r.at.Add(-time.Minute), false); !read {
		t.Fatal("no read with the clock set back")
	}
	settle := func() string {
		t.Helper()
		_, _, fp, _ := r.load(later(), true)
		if r.stamp == "" {
			t.Fatal("a read with settled files left no stamp")
		}
		return fp
	}

	// Same size, modification time put back (cp -p, rsync -t): the change
	// time moved, so the poll reads and sees the new content.
	fp = settle()
	path := filepath.Join(dir, "a.lua")
	st, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, []byte("return 2"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Chtimes(path, st.ModTime(), st.ModTime()); err != nil {
		t.Fatal(err)
	}
	fns, _, got, read := r.load(r.at.Add(time.Second), false)
	if !read || got == fp || len(fns) != 1 || string(fns[0].Source) != "return 2" {
		t.Fatalf("same-size rewrite with its mtime restored: read=%v changed=%v", read, got != fp)
	}

	// A new file, a removed file, a mode change: each reads.
	for _, change := range []func(){
		func() { write(t, dir, "b.yaml", okManifest) },
		func() { os.Remove(filepath.Join(dir, "b.yaml")) },
		func() { os.Chmod(path, 0o600) },
	} {
		settle()
		at := r.at
		change()
		if _, _, _, read := r.load(at.Add(time.Second), false); !read {
			t.Fatal("a change of the directory was not read")
		}
	}
	// Ignored names do not count.
	settle()
	write(t, dir, "README.txt", "x")
	write(t, dir, ".hidden.lua", "x")
	if _, _, _, read := r.load(r.at.Add(time.Second), false); read {
		t.Fatal("an ignored file made the poll read")
	}
	// An unreadable directory: every poll reads (and reports the error).
	settle()
	gone := dir + ".moved"
	if err := os.Rename(dir, gone); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(gone) })
	_, errs, _, read := r.load(r.at.Add(time.Second), false)
	if !read || len(errs) != 1 || !strings.Contains(errs[0].Error(), "read functions directory") {
		t.Fatalf("missing directory: read=%v errs=%v", read, errs)
	}
}

// BenchmarkWatchPoll is what one poll of Watch costs on a directory of 20
// functions that did not change (a stat of each file) against a full read
// (every file read and hashed, every manifest parsed).
func BenchmarkWatchPoll(b *testing.B) {
	for _, size := range []int{4 << 10, 250 << 10} {
		dir := b.TempDir()
		for i := range 20 {
			name := "fn" + string(rune('a'+i))
			if err := os.WriteFile(filepath.Join(dir, name+".yaml"), []byte(okManifest+"limits:\n  timeout: 200ms\n  max_memory: 4MiB\n"), 0o644); err != nil {
				b.Fatal(err)
			}
			if err := os.WriteFile(filepath.Join(dir, name+".lua"), []byte(strings.Repeat("local x = 1\n", size/12)), 0o644); err != nil {
				b.Fatal(err)
			}
		}
		label := map[int]string{4 << 10: "20x4KiB", 250 << 10: "20x250KiB"}[size]
		b.Run(label+"/full", func(b *testing.B) {
			for b.Loop() {
				if fns, errs, _ := loadDir(dir); len(fns) != 20 || len(errs) != 0 {
					b.Fatal(errs)
				}
			}
		})
		b.Run(label+"/unchanged", func(b *testing.B) {
			r := &dirReader{dir: dir}
			now := time.Now().Add(2 * racyWindow)
			r.load(now, true)
			for b.Loop() {
				if _, _, _, read := r.load(now, false); read {
					b.Fatal("read")
				}
			}
		})
	}
}
