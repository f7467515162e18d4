package store

import (
	"context"
	"os"
	"path/filepath"
	"testing"
)

// A SIGKILL just after Badger created a value-log or memtable WAL file
// leaves it empty; Badger then refuses to open the database ("Create a new
// file"). Seen in TestCrash about once in 100 kills (the .vlog case) and in
// CI (the .mem case: "while opening memtables err: while opening fid: 1").
// Open removes such files (they hold no data) and opens.
func TestOpenAfterEmptyLogFile(t *testing.T) {
	for _, name := range []string{"000099.vlog", "00099.mem"} {
		t.Run(name, func(t *testing.T) {
			ctx := context.Background()
			dir := t.TempDir()
			st, err := Open(ctx, Options{Dir: dir})
			if err != nil {
				t.Fatal(err)
			}
			if _, err := st.Enqueue(ctx, []InboxEntry{{Function: "f", Event: []byte("e")}}); err != nil {
				t.Fatal(err)
			}
			if err := st.Close(); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(filepath.Join(dir, name), nil, 0o644); err != nil {
				t.Fatal(err)
			}
			st, err = Open(ctx, Options{Dir: dir})
			if err != nil {
				t.Fatalf("open with an empty %s: %v", name, err)
			}
			defer st.Close()
			if n := st.InboxLen(); n != 1 {
				t.Fatalf("inbox length %d after reopen, want 1", n)
			}
			if _, err := os.Stat(filepath.Join(dir, name)); !os.IsNotExist(err) {
				t.Fatalf("the empty %s is still there (err %v)", name, err)
			}
		})
	}
}

// While another store has the directory open, Open removes nothing (the
// empty file may be one the running Badger has just created) and fails
// with Badger's lock error.
func TestOpenLeavesLockedDirectory(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	st, err := Open(ctx, Options{Dir: dir})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	empty := filepath.Join(dir, "00099.mem")
	if err := os.WriteFile(empty, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if st2, err := Open(ctx, Options{Dir: dir}); err == nil {
		st2.Close()
		t.Fatal("a second Open of a directory in use succeeded")
	}
	if _, err := os.Stat(empty); err != nil {
		t.Fatalf("the empty file of the directory in use was removed: %v", err)
	}
}
