package trigger

import (
	"io/fs"
	"syscall"
	"time"
)

// fileStamps returns a file's inode number and change time.
func fileStamps(fi fs.FileInfo) (ino uint64, ctime time.Time, ok bool) {
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		return 0, time.Time{}, false
	}
	return st.Ino, time.Unix(int64(st.Ctim.Sec), int64(st.Ctim.Nsec)), true //nolint:unconvert // 32-bit ARM
}
