package trigger

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/moongate-edge/moongate/gateway/config"
)

// write replaces dir/name atomically (through a dot file, which the loader
// ignores), so that a watcher never sees it half written.
func write(t *testing.T, dir, name, content string) {
	t.Helper()
	tmp := filepath.Join(dir, "."+name+".tmp")
	if err := os.WriteFile(tmp, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, filepath.Join(dir, name)); err != nil {
		t.Fatal(err)
	}
}

const okManifest = "triggers:\n  - mqtt: \"devices/{device}/telemetry\"\n"

func TestLoadDir(t *testing.T) {
	dir := t.TempDir()
	write(t, dir, "good.yaml", okManifest)
	write(t, dir, "good.lua", "return function(e) return e end")
	write(t, dir, "also_ok.yaml", "triggers:\n  - timer: 1m\n")
	write(t, dir, "also_ok.lua", "return 1")
	write(t, dir, "broken.yaml", "triggers:\n  - mqtt: \"a/#/b\"\n")
	write(t, dir, "broken.lua", "x")
	write(t, dir, "nolua.yaml", okManifest)
	write(t, dir, "orphan.lua", "x")
	write(t, dir, "Bad-Name.yaml", okManifest)
	write(t, dir, "Bad-Name.lua", "x")
	write(t, dir, ".hidden.yaml", "garbage: [")
	write(t, dir, "notes.txt", "ignored")
	write(t, dir, "big.yaml", okManifest)
	write(t, dir, "big.lua", strings.Repeat("-", MaxSourceBytes+1))
	if err := os.Mkdir(filepath.Join(dir, "dir.yaml"), 0o755); err != nil {
		t.Fatal(err)
	}
	write(t, dir, "dir.lua", "x")

	fns, errs := LoadDir(dir)
	var names []string
	for _, f := range fns {
		names = append(names, f.Manifest.Name)
	}
	if strings.Join(names, ",") != "also_ok,good" {
		t.Fatalf("loaded %v, errors %v", names, errs)
	}
	g := fns[1]
	if string(g.Source) != "return function(e) return e end" || g.SourcePath != filepath.Join(dir, "good.lua") || len(g.SHA256) != 64 || g.Manifest.OrderBy != "device" {
		t.Fatalf("good: %+v", g)
	}
	want := map[string]error{"Bad-Name": ErrFunctionName, "big": ErrSource, "broken": ErrManifest, "dir": ErrManifest, "nolua": ErrSource, "orphan": ErrSource}
	if len(errs) != len(want) {
		t.Fatalf("got %d errors, want %d: %v", len(errs), len(want), errs)
	}
	for _, err := range errs {
		var fe *FileError
		if !errors.As(err, &fe) {
			t.Fatalf("not a *FileError: %v", err)
		}
		if w, ok := want[fe.Name]; !ok || !errors.Is(err, w) {
			t.Errorf("%s: %v, want %v", fe.Name, err, w)
		}
	}
	// Manifest errors keep their line.
	for _, err := range errs {
		if strings.Contains(err.Error(), "broken.yaml") && !strings.Contains(err.Error(), "broken.yaml:2: triggers[0].mqtt") {
			t.Errorf("manifest error without line: %v", err)
		}
	}

	// The hash changes with the manifest and the source.
	h := g.SHA256
	write(t, dir, "good.lua", "return function(e) return nil end")
	fns, _ = LoadDir(dir)
	if fns[1].SHA256 == h {
		t.Error("hash unchanged after a source change")
	}
	h = fns[1].SHA256
	write(t, dir, "good.yaml", okManifest+"stream: s2\n")
	fns, _ = LoadDir(dir)
	if fns[1].SHA256 == h || fns[1].Manifest.Stream != "s2" {
		t.Error("hash unchanged after a manifest change")
	}

	if fns, errs := LoadDir(filepath.Join(dir, "missing")); fns != nil || len(errs) != 1 || !errors.Is(errs[0], os.ErrNotExist) {
		t.Fatalf("missing dir: %v %v", fns, errs)
	}
}

// watcher records Watch's callbacks.
type watcher struct {
	mu    sync.Mutex
	calls [][]Function
	errs  [][]error
	fail  int // the first fail callbacks report the set not applied
}

func (w *watcher) on(fns []Function, errs []error) bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.calls = append(w.calls, fns)
	w.errs = append(w.errs, errs)
	return len(w.calls) > w.fail
}

// waitFor polls until the n-th callback has arrived (or fails after a
// deadline) and returns it.
func (w *watcher) waitFor(t *testing.T, n int) ([]Function, []error) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		w.mu.Lock()
		if len(w.calls) >= n {
			fns, errs := w.calls[n-1], w.errs[n-1]
			w.mu.Unlock()
			return fns, errs
		}
		w.mu.Unlock()
		time.Sleep(5 * time.Millisecond)
	}
	t.Fatalf("callback %d did not arrive", n)
	return nil, nil
}

func (w *watcher) count() int {
	w.mu.Lock()
	defer w.mu.Unlock()
	return len(w.calls)
}

func names(fns []Function) string {
	var s []string
	for _, f := range fns {
		s = append(s, f.Manifest.Name+"@"+f.Manifest.Stream)
	}
	return strings.Join(s, ",")
}

func TestWatch(t *testing.T) {
	dir := t.TempDir()
	write(t, dir, "a.yaml", okManifest)
	write(t, dir, "a.lua", "return 1")
	ctx, cancel := context.WithCancel(context.Background())
	w := &watcher{}
	done := make(chan struct{})
	go func() {
		defer close(done)
		Watch(ctx, dir, 10*time.Millisecond, w.on)
	}()
	// The initial state is reported first.
	fns, errs := w.waitFor(t, 1)
	if names(fns) != "a@a" || len(errs) != 0 {
		t.Fatalf("initial: %v %v", names(fns), errs)
	}
	// Add. The two files may be seen one at a time: wait for the full set.
	write(t, dir, "b.yaml", okManifest)
	write(t, dir, "b.lua", "return 2")
	fns, errs = w.waitFor(t, 2)
	for names(fns) != "a@a,b@b" {
		fns, errs = w.waitFor(t, w.count()+1)
	}
	if len(errs) != 0 {
		t.Fatalf("errors: %v", errs)
	}
	n := w.count()
	// Change: same size, different content.
	write(t, dir, "a.yaml", strings.Replace(okManifest, "telemetry", "telemetrx", 1))
	fns, _ = w.waitFor(t, n+1)
	if fns[0].Manifest.Patterns()[0].String() != "devices/{device}/telemetrx" {
		t.Fatalf("change not seen: %v", fns[0].Manifest.Patterns())
	}
	// Break one: the other still loads, the error is reported.
	write(t, dir, "b.yaml", "triggers: [")
	fns, errs = w.waitFor(t, n+2)
	if names(fns) != "a@a" || len(errs) != 1 || !errors.Is(errs[0], config.ErrInvalid) {
		t.Fatalf("after breaking b: %v %v", names(fns), errs)
	}
	// Remove.
	for _, f := range []string{"b.yaml", "b.lua"} {
		if err := os.Remove(filepath.Join(dir, f)); err != nil {
			t.Fatal(err)
		}
	}
	// The removals may be seen one at a time (b.lua alone is an error):
	// wait for the state without b.
	fns, errs = w.waitFor(t, n+3)
	for names(fns) != "a@a" || len(errs) != 0 {
		fns, errs = w.waitFor(t, w.count()+1)
	}
	// Touching a file without changing it, and ignored files, report nothing.
	now := time.Now().Add(time.Minute)
	if err := os.Chtimes(filepath.Join(dir, "a.lua"), now, now); err != nil {
		t.Fatal(err)
	}
	write(t, dir, "README.txt", "x")
	write(t, dir, "c.yaml", okManifest) // a real change, after the no-ops
	write(t, dir, "c.lua", "x")
	for i := n + 4; ; i++ {
		fns, errs = w.waitFor(t, i)
		if names(fns) == "a@a,c@c" {
			break
		}
		// c.yaml is written before c.lua: an intermediate state has an
		// error for c; a report without one came from the no-op changes.
		if len(errs) == 0 {
			t.Fatalf("no-op change reported: %v", names(fns))
		}
	}
	cancel()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("Watch did not return after cancel")
	}
}

func TestWatchMissingDir(t *testing.T) {
	parent := t.TempDir()
	dir := filepath.Join(parent, "functions")
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	w := &watcher{}
	go Watch(ctx, dir, 10*time.Millisecond, w.on)
	fns, errs := w.waitFor(t, 1)
	if len(fns) != 0 || len(errs) != 1 || !errors.Is(errs[0], os.ErrNotExist) {
		t.Fatalf("initial state of a missing dir: %v %v", fns, errs)
	}
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	write(t, dir, "x.yaml", okManifest)
	write(t, dir, "x.lua", "x")
	fns, _ = w.waitFor(t, 2)
	for names(fns) != "x@x" {
		fns, _ = w.waitFor(t, w.count()+1)
	}
}

// TestWatchNotifies: with polling effectively off (an hour), a new function
// is reported through file-system notifications within a few
// SettleDelays.
func TestWatchNotifies(t *testing.T) {
	dir := t.TempDir()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	w := &watcher{}
	go Watch(ctx, dir, time.Hour, w.on)
	if fns, _ := w.waitFor(t, 1); len(fns) != 0 {
		t.Fatalf("initial: %v", names(fns))
	}
	start := time.Now()
	write(t, dir, "n.yaml", okManifest)
	write(t, dir, "n.lua", "return 1")
	fns, _ := w.waitFor(t, 2)
	for names(fns) != "n@n" {
		fns, _ = w.waitFor(t, w.count()+1)
	}
	t.Logf("deployed in %v without polling", time.Since(start))
	// A change of content is noticed the same way.
	write(t, dir, "n.lua", "return 2")
	n := w.count()
	fns, _ = w.waitFor(t, n+1)
	if names(fns) != "n@n" || string(fns[0].Source) != "return 2" {
		t.Fatalf("change not seen: %v", names(fns))
	}
}

// A set the callback could not apply (it returned false: the store was
// unavailable) is reported again without any change to the files, until it
// is applied; then no more. Before, Watch took it as handled and the new
// version stayed on disk, not running, until the next change.
func TestWatchRetriesUnappliedSet(t *testing.T) {
	dir := t.TempDir()
	write(t, dir, "a.yaml", okManifest)
	write(t, dir, "a.lua", "return 1")
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	w := &watcher{fail: 2}
	done := make(chan struct{})
	go func() {
		defer close(done)
		Watch(ctx, dir, 10*time.Millisecond, w.on)
	}()
	for n := 1; n <= 3; n++ {
		if fns, _ := w.waitFor(t, n); names(fns) != "a@a" {
			t.Fatalf("report %d: %v", n, names(fns))
		}
	}
	// Applied at the third: the next report is the next change, not the
	// same set again.
	write(t, dir, "b.yaml", okManifest)
	write(t, dir, "b.lua", "return 2")
	// The two files may be seen one at a time (b.yaml alone is reported
	// with an error); what must not come is the applied set again.
	deadline := time.Now().Add(10 * time.Second)
	for {
		w.mu.Lock()
		n := len(w.calls)
		last, lastErrs := names(w.calls[n-1]), w.errs[n-1]
		w.mu.Unlock()
		if n > 3 && last == "a@a" && len(lastErrs) == 0 {
			t.Fatalf("the applied set was reported again (%d reports)", n)
		}
		if last == "a@a,b@b" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the new function was not reported")
		}
		time.Sleep(5 * time.Millisecond)
	}
	cancel()
	<-done
}
