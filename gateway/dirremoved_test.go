package gateway

import (
	"os"
	"path/filepath"
	"testing"
	"time"
)

// A function removed from functions_dir (both files deleted) stays removed:
// a later start whose directory cannot be read yet runs "the versions last
// stored from the directory" - but not one the directory had removed.
func TestRemovedDirFunctionNotResurrectedAtStart(t *testing.T) {
	dataDir, base := t.TempDir(), t.TempDir()
	fnDir := filepath.Join(base, "functions")
	if err := os.MkdirAll(fnDir, 0o755); err != nil {
		t.Fatal(err)
	}
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
	if err := os.Rename(fnDir, fnDir+".away"); err != nil {
		t.Fatal(err)
	}
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
