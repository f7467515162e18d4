//go:build unix

package main

import (
	"fmt"
	"os"
	"path/filepath"
	"syscall"
	"testing"
)

func TestToJournal(t *testing.T) {
	f, err := os.Create(filepath.Join(t.TempDir(), "stream"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var st syscall.Stat_t
	if err := syscall.Fstat(int(f.Fd()), &st); err != nil {
		t.Fatal(err)
	}
	match := fmt.Sprintf("%d:%d", st.Dev, st.Ino)
	if !toJournal(match, f) {
		t.Errorf("JOURNAL_STREAM %s naming the file: not detected", match)
	}
	for _, v := range []string{"", "0:0", match + "1", "garbage"} {
		if toJournal(v, f) {
			t.Errorf("JOURNAL_STREAM %q: detected", v)
		}
	}
	if toJournal(match, nil) {
		t.Error("nil file: detected")
	}
}
