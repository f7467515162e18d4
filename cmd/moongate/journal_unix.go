//go:build unix

package main

import (
	"fmt"
	"os"
	"syscall"
)

// toJournal reports whether f is the stream systemd connected to the
// journal: JOURNAL_STREAM (the journal's "device:inode" of that stream, set
// by systemd) names f. A process started from a unit whose output goes
// elsewhere, or whose stderr was redirected, gets no prefixes.
func toJournal(journalStream string, f *os.File) bool {
	if journalStream == "" || f == nil {
		return false
	}
	fi, err := f.Stat() // not f.Fd(): that would put f in blocking mode
	if err != nil {
		return false
	}
	st, ok := fi.Sys().(*syscall.Stat_t)
	return ok && journalStream == fmt.Sprintf("%d:%d", st.Dev, st.Ino)
}
