package gateway

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/moongate-edge/moongate/gateway/config"
	"github.com/moongate-edge/moongate/store"
)

// A function removed from functions_dir (both files deleted) stays removed:
// a later start whose directory cannot be read yet runs "the versions last
// stored from the directory" - but not one the directory had removed.
func TestRemovedDirFunctionNotResurrectedAtStart(t *testing.T) {
	dataDir, fnDir := unmountableDirs(t)
	writeFunction(t, fnDir, "keep", countLua, referenceManifest)
	writeFunction(t, fnDir, "gone", `function handle(e) return {t = e.trigger} end`, "triggers:\n  - timer: \"@every 1s\"\n")
	cfg := testConfig(dataDir, fnDir, "")
	p := startInProcess(t, cfg)
	waitFor(t, 10*time.Second, "gone deployed", func() bool { return p.d.Gateway().Lookup("gone") != nil })
	for _, n := range []string{"gone.lua", "gone.yaml"} {
		if err := os.Remove(filepath.Join(fnDir, n)); err != nil {
			t.Fatal(err)
		}
	}
	waitFor(t, 10*time.Second, "gone removed", func() bool { return p.d.Gateway().Lookup("gone") == nil })
	before := len(allRecords(t, p.d.Store(), "gone"))
	p.stop(t)

	// The directory is not there at the next start (not mounted yet).
	unmount(t, fnDir)
	p = startInProcess(t, cfg)
	if f := p.d.Gateway().Lookup("gone"); f != nil {
		ran := poll(5*time.Second, func() bool { return len(allRecords(t, p.d.Store(), "gone")) > before })
		t.Fatalf("function removed from functions_dir is running again after a restart (version %d); its timer ran again: %v", f.Version, ran)
	}
}

// A new NAME.yaml with a typo for a name whose function was removed from
// functions_dir long ago does not bring the removed version back.
func TestBrokenFileDoesNotResurrectRemovedFunction(t *testing.T) {
	dataDir, fnDir := t.TempDir(), t.TempDir()
	writeFunction(t, fnDir, "gone", `function handle(e) return {old = true} end`, "triggers:\n  - timer: \"@every 1s\"\n")
	p := startInProcess(t, testConfig(dataDir, fnDir, ""))
	waitFor(t, 10*time.Second, "gone deployed", func() bool { return p.d.Gateway().Lookup("gone") != nil })
	for _, n := range []string{"gone.lua", "gone.yaml"} {
		if err := os.Remove(filepath.Join(fnDir, n)); err != nil {
			t.Fatal(err)
		}
	}
	waitFor(t, 10*time.Second, "gone removed", func() bool { return p.d.Gateway().Lookup("gone") == nil })
	// Much later: a new function of that name, with a typo in its manifest.
	writeFunction(t, fnDir, "gone", `function handle(e) return {new = true} end`, "triggerz:\n  - mqtt: x/{device}\n")
	if poll(3*time.Second, func() bool { return p.d.Gateway().Lookup("gone") != nil }) {
		t.Fatalf("the removed version of gone (version %d) runs again because a new, broken gone.yaml appeared", p.d.Gateway().Lookup("gone").Version)
	}
}

// gone's files: a timer function, so that a version running again shows.
const goneLua, goneManifest = `function handle(e) return {t = e.trigger} end`, "triggers:\n  - timer: \"@every 1s\"\n"

// activeIn reports whether the store holds an active version of name.
func activeIn(t *testing.T, st *store.Store, name string) bool {
	t.Helper()
	_, err := st.GetFunction(context.Background(), name, 0)
	if err != nil && !errors.Is(err, store.ErrNotFound) {
		t.Fatal(err)
	}
	return err == nil
}

// removeFunction deletes NAME.lua and NAME.yaml from dir.
func removeFunction(t *testing.T, dir, name string) {
	t.Helper()
	for _, n := range []string{name + ".lua", name + ".yaml"} {
		if err := os.Remove(filepath.Join(dir, n)); err != nil {
			t.Fatal(err)
		}
	}
}

// A function whose files were removed from functions_dir while the daemon
// was stopped is deactivated at the next start that reads the directory, so
// that a later start that cannot read it does not run it again.
func TestDirFunctionRemovedWhileStoppedNotResurrected(t *testing.T) {
	fnDir, cfg := keepAndGoneStored(t)

	removeFunction(t, fnDir, "gone") // while stopped
	p := startInProcess(t, cfg)
	if p.d.Gateway().Lookup("gone") != nil {
		t.Fatal("gone runs though its files were removed")
	}
	if activeIn(t, p.d.Store(), "gone") {
		t.Fatal("gone, removed from functions_dir while the daemon was stopped, is still active in the store")
	}
	if !activeIn(t, p.d.Store(), "keep") {
		t.Fatal("keep deactivated")
	}
	before := len(allRecords(t, p.d.Store(), "gone"))
	p.stop(t)

	unmount(t, fnDir) // not mounted at the next start
	p = startInProcess(t, cfg)
	if p.d.Gateway().Lookup("keep") == nil {
		t.Fatal("keep not run from the store while the directory cannot be read")
	}
	if f := p.d.Gateway().Lookup("gone"); f != nil {
		ran := poll(3*time.Second, func() bool { return len(allRecords(t, p.d.Store(), "gone")) > before })
		t.Fatalf("gone (version %d) runs again; its timer ran: %v", f.Version, ran)
	}
}

// An empty functions_dir at start may be a mount point not mounted yet:
// the stored versions stay active (a later start that cannot read the
// directory runs them), and the check is made at the first load that
// finds a function.
func TestEmptyDirAtStartKeepsStoredFunctions(t *testing.T) {
	fnDir, cfg := keepAndGoneStored(t)

	removeFunction(t, fnDir, "keep")
	removeFunction(t, fnDir, "gone")
	p := startInProcess(t, cfg)
	if !activeIn(t, p.d.Store(), "keep") || !activeIn(t, p.d.Store(), "gone") {
		t.Fatal("an empty functions_dir at start deactivated the stored functions")
	}
	// The mount appears, without gone.
	writeFunction(t, fnDir, "keep", countLua, referenceManifest)
	waitFor(t, 10*time.Second, "keep deployed", func() bool { return p.d.Gateway().Lookup("keep") != nil })
	waitFor(t, 10*time.Second, "gone deactivated", func() bool { return !activeIn(t, p.d.Store(), "gone") })
	if !activeIn(t, p.d.Store(), "keep") {
		t.Fatal("keep deactivated")
	}
}

// Functions deployed through the API before functions_dir was set are not
// the directory's: they stay active in the store (run again once
// functions_dir is unset), though the directory does not hold them.
func TestAPIFunctionsSurviveSwitchToDir(t *testing.T) {
	dataDir, fnDir := t.TempDir(), t.TempDir()
	p := startInProcess(t, testConfig(dataDir, "", ""))
	ctx := context.Background()
	for _, name := range []string{"api", "both"} {
		if _, err := p.d.DeployFunction(ctx, DeployRequest{Name: name, Manifest: []byte(referenceManifest), Source: []byte(referenceLua)}); err != nil {
			t.Fatal(err)
		}
	}
	p.stop(t)

	// "both" is also in the directory, identical: from now on it is the
	// directory's, and removing it from there deactivates it.
	writeFunction(t, fnDir, "both", referenceLua, referenceManifest)
	writeFunction(t, fnDir, "keep", countLua, referenceManifest)
	p = startInProcess(t, testConfig(dataDir, fnDir, ""))
	if p.d.Gateway().Lookup("api") != nil {
		t.Fatal("a function not in functions_dir runs")
	}
	if !activeIn(t, p.d.Store(), "api") {
		t.Fatal("a function deployed through the API was deactivated by the switch to functions_dir")
	}
	waitFor(t, 10*time.Second, "both deployed", func() bool { return p.d.Gateway().Lookup("both") != nil })
	p.stop(t)

	removeFunction(t, fnDir, "both")
	p = startInProcess(t, testConfig(dataDir, fnDir, ""))
	if activeIn(t, p.d.Store(), "both") {
		t.Fatal("both, loaded from functions_dir and removed from it while stopped, is still active")
	}
	p.stop(t)

	p = startInProcess(t, testConfig(dataDir, "", ""))
	if p.d.Gateway().Lookup("api") == nil {
		t.Fatal("the API's function does not run once functions_dir is unset")
	}
}

// A removed function whose deactivation failed (the store refused the
// write) is deactivated at the next load.
func TestRemovedFunctionDeactivationRetried(t *testing.T) {
	ctx := context.Background()
	d := idleDaemon(t, t.TempDir())
	defer d.closeAll()
	if _, err := d.store.PutFunction(ctx, store.FunctionRecord{Name: "gone", Source: []byte(goneLua), Manifest: []byte(goneManifest), Active: true, FromDir: true}); err != nil {
		t.Fatal(err)
	}
	d.dirFns = dirFunctions{last: map[string]bool{"gone": true}, swept: true}
	failed, cancel := context.WithCancel(ctx)
	cancel() // every store write fails
	d.deactivateRemoved(failed, nil, map[string]bool{"keep": true})
	if !activeIn(t, d.store, "gone") {
		t.Fatal("test broken: the write did not fail")
	}
	d.deactivateRemoved(ctx, nil, map[string]bool{"keep": true})
	if activeIn(t, d.store, "gone") {
		t.Fatal("a removed function whose deactivation failed once stays active in the store")
	}
}

// A broken NAME.yaml for the name of a function deployed through the API
// before functions_dir was set neither runs that version (it is not the
// directory's) nor, once removed, deactivates it.
func TestBrokenFileDoesNotTouchAPIFunction(t *testing.T) {
	dataDir, fnDir := t.TempDir(), t.TempDir()
	deployThroughAPI(t, dataDir, "api", referenceManifest, referenceLua)

	writeFunction(t, fnDir, "keep", countLua, referenceManifest)
	p := startInProcess(t, testConfig(dataDir, fnDir, ""))
	waitFor(t, 10*time.Second, "keep deployed", func() bool { return p.d.Gateway().Lookup("keep") != nil })
	writeFunction(t, fnDir, "api", referenceLua, "triggerz:\n  - mqtt: x/{device}\n") // a typo
	writeFunction(t, fnDir, "keep2", countLua, referenceManifest)                     // to know the load happened
	waitFor(t, 10*time.Second, "keep2 deployed", func() bool { return p.d.Gateway().Lookup("keep2") != nil })
	if f := p.d.Gateway().Lookup("api"); f != nil {
		t.Fatalf("a broken api.yaml runs the version deployed through the API (%d), not the directory's", f.Version)
	}
	removeFunction(t, fnDir, "api")
	removeFunction(t, fnDir, "keep2")
	waitFor(t, 10*time.Second, "keep2 removed", func() bool { return p.d.Gateway().Lookup("keep2") == nil })
	if !activeIn(t, p.d.Store(), "api") {
		t.Fatal("the function deployed through the API (never the directory's) was deactivated in the store by a broken api.yaml appearing and being removed")
	}
}

// A start that cannot read functions_dir runs the versions stored from
// it, not those deployed through the API before functions_dir was set.
func TestFallbackRunsOnlyDirectoryVersions(t *testing.T) {
	dataDir, fnDir := unmountableDirs(t)
	deployThroughAPI(t, dataDir, "api", goneManifest, goneLua)

	writeFunction(t, fnDir, "keep", countLua, referenceManifest)
	cfg := testConfig(dataDir, fnDir, "")
	p := startInProcess(t, cfg)
	if p.d.Gateway().Lookup("api") != nil {
		t.Fatal("test broken: a function not in functions_dir runs")
	}
	p.stop(t)

	unmount(t, fnDir) // not mounted at the next start
	p = startInProcess(t, cfg)
	if p.d.Gateway().Lookup("keep") == nil {
		t.Fatal("keep not run from the store while the directory cannot be read")
	}
	if f := p.d.Gateway().Lookup("api"); f != nil {
		t.Fatalf("api (version %d), deployed through the API before functions_dir was set and never in the directory, runs while functions_dir cannot be read", f.Version)
	}
}

// A name the store refuses (a broken file's name that is not a function
// name) is not retried as a failed deactivation at every load.
func TestInvalidNameNotRetriedForever(t *testing.T) {
	ctx := context.Background()
	d := idleDaemon(t, t.TempDir())
	defer d.closeAll()
	// Load 1: the directory held bad\xff.yaml, a file name not valid UTF-8 (FileError "bad\xff") and keep.
	d.deactivateRemoved(ctx, nil, map[string]bool{"bad\xff": true, "keep": true})
	// Load 2: bad\xff.yaml removed.
	d.deactivateRemoved(ctx, nil, map[string]bool{"keep": true})
	// Load 3, 4: more changes.
	d.deactivateRemoved(ctx, nil, map[string]bool{"keep": true})
	d.deactivateRemoved(ctx, nil, map[string]bool{"keep": true})
	if d.dirFns.off["bad\xff"] {
		t.Fatalf("an invalid function name is retried as a failed deactivation at every load: off = %v", d.dirFns.off)
	}
}

// A function removed from functions_dir while a sync.forward entry took its
// name is deactivated all the same (forwards are not stored).
func TestForwardNameDoesNotKeepRemovedFunctionActive(t *testing.T) {
	dataDir, fnDir := unmountableDirs(t)
	writeFunction(t, fnDir, "keep", countLua, referenceManifest)
	writeFunction(t, fnDir, "raw", goneLua, goneManifest)
	p := startInProcess(t, testConfig(dataDir, fnDir, ""))
	waitFor(t, 10*time.Second, "raw deployed", func() bool { return p.d.Gateway().Lookup("raw") != nil })
	p.stop(t)

	removeFunction(t, fnDir, "raw")
	fwd := "sync:\n  targets:\n    - {name: up, type: http, http: {url: \"http://127.0.0.1:1/ingest\"}}\n  forward:\n    - {name: raw, trigger: \"devices/{device}/telemetry\", targets: [up]}\n"
	p = startInProcess(t, testConfig(dataDir, fnDir, fwd))
	waitFor(t, 10*time.Second, "keep deployed", func() bool { return p.d.Gateway().Lookup("keep") != nil })
	p.stop(t)

	unmount(t, fnDir) // not mounted at the next start
	p = startInProcess(t, testConfig(dataDir, fnDir, ""))
	if f := p.d.Gateway().Lookup("raw"); f != nil {
		t.Fatalf("raw (version %d), removed from functions_dir, runs again from the store: its name was a sync.forward entry's when the directory was checked", f.Version)
	}
}

// unmountableDirs returns a data directory and a functions directory that
// unmount can take away (it is not a t.TempDir itself).
func unmountableDirs(t *testing.T) (dataDir, fnDir string) {
	t.Helper()
	fnDir = filepath.Join(t.TempDir(), "functions")
	if err := os.MkdirAll(fnDir, 0o755); err != nil {
		t.Fatal(err)
	}
	return t.TempDir(), fnDir
}

// unmount makes fnDir unreadable for the next start, as a file system not
// mounted yet.
func unmount(t *testing.T, fnDir string) {
	t.Helper()
	if err := os.Rename(fnDir, fnDir+".away"); err != nil {
		t.Fatal(err)
	}
}

// deployThroughAPI deploys name through the API of a daemon on dataDir
// without functions_dir, then stops it.
func deployThroughAPI(t *testing.T, dataDir, name, manifest, source string) {
	t.Helper()
	p := startInProcess(t, testConfig(dataDir, "", ""))
	if _, err := p.d.DeployFunction(context.Background(), DeployRequest{Name: name, Manifest: []byte(manifest), Source: []byte(source)}); err != nil {
		t.Fatal(err)
	}
	p.stop(t)
}

// idleDaemon builds a daemon on dataDir (its store open) that does not run;
// the caller closes it (closeAll).
func idleDaemon(t *testing.T, dataDir string) *Daemon {
	t.Helper()
	cfg, err := config.Parse("test.yaml", []byte(testConfig(dataDir, t.TempDir(), "")))
	if err != nil {
		t.Fatal(err)
	}
	d, err := NewDaemon(context.Background(), cfg, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	return d
}

// keepAndGoneStored runs a daemon once with "keep" and "gone" in an
// unmountable functions_dir (both stored from it), then stops it; it
// returns the directory and the daemon's config.
func keepAndGoneStored(t *testing.T) (fnDir, cfg string) {
	t.Helper()
	dataDir, fnDir := unmountableDirs(t)
	writeFunction(t, fnDir, "keep", countLua, referenceManifest)
	writeFunction(t, fnDir, "gone", goneLua, goneManifest)
	cfg = testConfig(dataDir, fnDir, "")
	p := startInProcess(t, cfg)
	waitFor(t, 10*time.Second, "gone deployed", func() bool { return p.d.Gateway().Lookup("gone") != nil })
	p.stop(t)
	return fnDir, cfg
}
