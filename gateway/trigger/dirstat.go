package trigger

import (
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// fullReadEvery is how often Watch's poll reads every file even when what
// the file system says of them has not changed: a safety net for file
// systems whose attributes may lag their content (NFS attribute caching).
const fullReadEvery = 30 * time.Second

// racyWindow: a file whose modification or change time is less than this
// before a full read (or after it: a clock set back) may change again
// within its file system's timestamp granularity (Linux takes file times
// from a clock that ticks every few milliseconds; FAT keeps 2 seconds)
// without its stamps changing, so such a read vouches for nothing.
var racyWindow = 3 * time.Second

// dirReader is loadDir for Watch's poll: it reads the files again only
// when the file system's stamps of the function files (names, inode,
// size, mode, modification and change time, symbolic links followed)
// differ from those taken at the last full read, or fullReadEvery has
// passed. A change time cannot be set back by a program (touch -r, cp -p
// and rsync -t set the modification time, and that changes it), so equal
// stamps mean equal contents once the last read was not racy. Before, the
// poll read and hashed every source and parsed every manifest every two
// seconds: on a Pi Zero with large sources a steady share of its one core.
// Not safe for concurrent use; the zero value (with dir set) is ready.
type dirReader struct {
	dir   string
	stamp string    // statStamp of the last full read; "" when it vouches for nothing
	fp    string    // loadDir's fingerprint at the last full read
	at    time.Time // of the last full read
}

// load returns loadDir's result, or only the last fingerprint (fns and
// errs nil, read false) when nothing changed since the last full read and
// force is false.
func (r *dirReader) load(now time.Time, force bool) (fns []Function, errs []error, fp string, read bool) {
	if !force && r.stamp != "" && now.Sub(r.at) < fullReadEvery && !now.Before(r.at) {
		if s, ok := statStamp(r.dir, now); ok && s == r.stamp {
			return nil, nil, r.fp, false
		}
	}
	// Stamped before the read: a change during it shows at the next poll.
	s, ok := statStamp(r.dir, now)
	fns, errs, fp = loadDir(r.dir)
	r.stamp, r.fp, r.at = "", fp, now
	if ok {
		r.stamp = s
	}
	return fns, errs, fp, true
}

// statStamp describes the function files of dir as the file system sees
// them. ok is false when that cannot stand for their content: the
// directory or a file cannot be stat'ed, the platform gives no change
// time, or a file changed within racyWindow of now.
func statStamp(dir string, now time.Time) (string, bool) {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return "", false
	}
	var b strings.Builder
	for _, e := range entries {
		n := e.Name()
		if strings.HasPrefix(n, ".") || (filepath.Ext(n) != ".yaml" && filepath.Ext(n) != ".lua") {
			continue
		}
		fi, err := os.Stat(filepath.Join(dir, n))
		if err != nil {
			return "", false
		}
		ino, ctime, ok := fileStamps(fi)
		if !ok {
			return "", false
		}
		mtime := fi.ModTime()
		if now.Sub(mtime) < racyWindow || now.Sub(ctime) < racyWindow {
			return "", false
		}
		b.WriteString(strconv.Quote(n))
		for _, v := range []int64{int64(ino), fi.Size(), int64(fi.Mode()), mtime.UnixNano(), ctime.UnixNano()} {
			b.WriteByte(' ')
			b.WriteString(strconv.FormatInt(v, 10))
		}
		b.WriteByte('\n')
	}
	return b.String(), true
}
