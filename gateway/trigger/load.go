package trigger

import (
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync/atomic"
	"time"
	"unicode/utf8"

	"github.com/fsnotify/fsnotify"
)

// MaxSourceBytes is the largest NAME.lua LoadDir reads, and the largest
// source a deploy takes: the Lua compiler's own limit
// (luavm.DefaultMaxSourceBytes, pinned by a test), so that every check
// says the same.
const MaxSourceBytes = 256 << 10

// Function is a function loaded from a directory.
type Function struct {
	Manifest     *Manifest
	ManifestData []byte // content of NAME.yaml, as parsed into Manifest
	Source       []byte // content of NAME.lua
	SourcePath   string
	ManifestPath string
	// SHA256 is the hex SHA-256 of the manifest and the source together: it
	// changes when either changes.
	SHA256 string
}

// LoadDir loads the functions of dir: every NAME.yaml with its NAME.lua.
// Files whose names start with '.' and files with other extensions are
// ignored. A bad function (invalid name, bad manifest, missing or oversized
// source, NAME.lua without NAME.yaml) yields a *FileError and does not stop
// the others from loading. Functions are returned sorted by name. LoadDir
// never panics; a directory that cannot be read yields one error.
func LoadDir(dir string) ([]Function, []error) {
	fns, errs, _ := loadDir(dir)
	return fns, errs
}

// loadDir also returns a fingerprint of everything it read (names, contents,
// errors), for Watch.
func loadDir(dir string) ([]Function, []error, string) {
	h := sha256.New()
	entries, err := os.ReadDir(dir)
	if err != nil {
		err = fmt.Errorf("%w: read functions directory: %w", ErrSource, err)
		h.Write([]byte(err.Error()))
		return nil, []error{err}, hex.EncodeToString(h.Sum(nil))
	}
	manifests := map[string]bool{}
	sources := map[string]bool{}
	for _, e := range entries {
		n := e.Name()
		if strings.HasPrefix(n, ".") {
			continue
		}
		switch filepath.Ext(n) {
		case ".yaml":
			manifests[strings.TrimSuffix(n, ".yaml")] = true
		case ".lua":
			sources[strings.TrimSuffix(n, ".lua")] = true
		}
	}
	names := make([]string, 0, len(manifests))
	for n := range manifests {
		names = append(names, n)
	}
	sort.Strings(names)
	var fns []Function
	var errs []error
	for _, name := range names {
		f, err := loadOne(dir, name, h)
		if err != nil {
			h.Write([]byte(err.Error()))
			errs = append(errs, err)
			continue
		}
		fns = append(fns, f)
	}
	orphans := make([]string, 0)
	for n := range sources {
		if !manifests[n] {
			orphans = append(orphans, n)
		}
	}
	sort.Strings(orphans)
	for _, n := range orphans {
		p := filepath.Join(dir, n+".lua")
		err := &FileError{Name: n, Path: p, Err: fmt.Errorf("%w: no manifest %s.yaml next to it", ErrSource, n)}
		h.Write([]byte(err.Error()))
		errs = append(errs, err)
	}
	return fns, errs, hex.EncodeToString(h.Sum(nil))
}

func loadOne(dir, name string, fp io.Writer) (Function, error) {
	mpath := filepath.Join(dir, name+".yaml")
	spath := filepath.Join(dir, name+".lua")
	fail := func(path string, err error) (Function, error) {
		return Function{}, &FileError{Name: name, Path: path, Err: err}
	}
	if !ValidFunctionName(name) {
		return fail(mpath, fmt.Errorf("%w %q: use [a-z0-9][a-z0-9_-]{0,62}", ErrFunctionName, clip(name)))
	}
	mdata, err := readLimited(mpath, MaxManifestBytes)
	if err != nil {
		return fail(mpath, fmt.Errorf("%w: %w", ErrManifest, err))
	}
	src, err := readLimited(spath, MaxSourceBytes)
	if err != nil {
		return fail(spath, fmt.Errorf("%w: %w", ErrSource, err))
	}
	if !utf8.Valid(src) {
		// As the API refuses it: the source is returned as text (fn get).
		return fail(spath, fmt.Errorf("%w: not valid UTF-8", ErrSource))
	}
	hash := Fingerprint(mdata, src)
	fmt.Fprintf(fp, "%s\x00%s\x00", name, hash)
	m, err := ParseManifest(mpath, mdata)
	if err != nil {
		return fail(mpath, err)
	}
	return Function{Manifest: m, ManifestData: mdata, Source: src, SourcePath: spath, ManifestPath: mpath, SHA256: hash}, nil
}

// readLimited reads a regular file of at most limit bytes. It checks the
// file before it opens it: opening a FIFO without a writer blocks (a
// NAME.yaml FIFO in functions_dir held the daemon's start, and its stop).
func readLimited(path string, limit int64) ([]byte, error) {
	if st, err := os.Stat(path); err != nil {
		return nil, err
	} else if !st.Mode().IsRegular() {
		return nil, fmt.Errorf("%s is not a regular file", path)
	}
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return nil, err
	}
	if !st.Mode().IsRegular() {
		return nil, fmt.Errorf("%s is not a regular file", path)
	}
	data, err := io.ReadAll(io.LimitReader(f, limit+1))
	if err != nil {
		return nil, err
	}
	if int64(len(data)) > limit {
		return nil, fmt.Errorf("%s is larger than the limit of %d bytes", path, limit)
	}
	return data, nil
}

// DefaultPollInterval is Watch's interval when given 0 or less.
const DefaultPollInterval = time.Second

// SettleDelay is how long Watch waits after a file-system notification
// before it reads the directory, and again before it trusts what it read.
const SettleDelay = 100 * time.Millisecond

// Watch watches dir until ctx is done and calls onChange with the whole set
// of functions (as [LoadDir] returns it): once at the start, then each time
// the content of the directory's manifests and sources has changed.
// Reporting the initial state leaves no window in which a change could be
// missed between a separate LoadDir and the start of Watch; a caller that
// loaded the directory already gets the same set again.
//
// Changes are noticed through the operating system's file notifications
// (inotify on Linux), so a deployment takes effect within a few
// SettleDelays, and also by polling every interval, which covers file
// systems without notifications and a directory created after the start.
// Changes are detected by content hash, not modification time; a poll
// reads the files only when what the file system says of them (inode,
// size, modification and change time) changed, and every 30 seconds. A change is
// reported once the directory has read the same twice in a row, a
// SettleDelay (or a poll) apart, so a file caught half-written is not
// reported before it is complete. onChange reports whether it applied the
// set: when it did not (a store that failed, a context that ended), the
// same set is reported again at the next poll, until it is. Watch blocks;
// run it in its own goroutine. onChange runs on Watch's goroutine, never
// concurrently with itself.
func Watch(ctx context.Context, dir string, interval time.Duration, onChange func([]Function, []error) bool) {
	if interval <= 0 {
		interval = DefaultPollInterval
	}
	if ctx.Err() != nil {
		return
	}
	fw := newDirNotifier(dir)
	defer fw.close()
	dr := &dirReader{dir: dir}
	fns, errs, fp, _ := dr.load(time.Now(), true)
	reported := ""
	if onChange(fns, errs) {
		reported = fp
	}
	pending := ""
	t := time.NewTicker(interval)
	defer t.Stop()
	settle := time.NewTimer(SettleDelay)
	settle.Stop()
	// check reads the directory; a poll (full false) only when the file
	// system's stamps changed, unless a set waits to be confirmed or
	// applied.
	check := func(full bool) {
		fns, errs, fp, _ := dr.load(time.Now(), full || pending != "" || dr.fp != reported)
		switch {
		case fp == reported:
			pending = ""
		case fp == pending:
			pending = ""
			if ctx.Err() == nil && onChange(fns, errs) {
				reported = fp
			}
		default:
			pending = fp
			settle.Reset(SettleDelay) // confirm soon rather than at the next poll
		}
	}
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			fw.retry()
			check(false)
		case <-fw.events():
			settle.Reset(SettleDelay)
		case <-settle.C:
			check(true)
		}
	}
}

// dirNotifier forwards file-system notifications for one directory. When
// notifications are unavailable (no inotify, directory missing) its
// channel never delivers and Watch relies on polling; retry tries again.
type dirNotifier struct {
	dir  string
	w    *fsnotify.Watcher
	c    chan struct{}
	gone atomic.Bool // the directory itself was removed or renamed: watch again
}

func newDirNotifier(dir string) *dirNotifier {
	n := &dirNotifier{dir: dir, c: make(chan struct{}, 1)}
	n.retry()
	return n
}

// retry starts watching if it is not watching (any more).
func (n *dirNotifier) retry() {
	if n.w != nil && n.gone.Load() {
		_ = n.w.Close()
		n.w = nil
	}
	if n.w != nil {
		return
	}
	n.gone.Store(false)
	w, err := fsnotify.NewWatcher()
	if err != nil {
		return
	}
	if err := w.Add(n.dir); err != nil {
		_ = w.Close()
		return
	}
	n.w = w
	go func() {
		for {
			select {
			case ev, ok := <-w.Events:
				if !ok {
					return
				}
				if filepath.Clean(ev.Name) == filepath.Clean(n.dir) && ev.Op&(fsnotify.Remove|fsnotify.Rename) != 0 {
					n.gone.Store(true)
				}
				select {
				case n.c <- struct{}{}:
				default:
				}
			case _, ok := <-w.Errors:
				if !ok {
					return
				}
			}
		}
	}()
}

func (n *dirNotifier) events() <-chan struct{} { return n.c }

func (n *dirNotifier) close() {
	if n.w != nil {
		_ = n.w.Close()
	}
}

// Fingerprint is Function.SHA256 of a manifest and a source: the hex
// SHA-256 of the manifest's length (8 bytes, big-endian), the manifest and
// the source.
func Fingerprint(manifest, source []byte) string {
	sum := sha256.New()
	var n [8]byte
	binary.BigEndian.PutUint64(n[:], uint64(len(manifest)))
	sum.Write(n[:])
	sum.Write(manifest)
	sum.Write(source)
	return hex.EncodeToString(sum.Sum(nil))
}
