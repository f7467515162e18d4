package gateway

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/moongate-edge/moongate/gateway/trigger"
)

// A NAME.lua that is not UTF-8 (a Latin-1 comment) was taken from
// functions_dir although the API refuses such a source ("source is not
// valid UTF-8"): GET /v1/functions/NAME then failed with 500 (the source
// goes out as a protobuf string). The directory refuses it like any broken
// file, saying why; the other functions load.
func TestDirNonUTF8SourceRefused(t *testing.T) {
	fnDir := t.TempDir()
	src := "-- temp\xe9rature (Latin-1)\nfunction handle(e) return nil end\n"
	if err := os.WriteFile(filepath.Join(fnDir, "latin.lua"), []byte(src), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(fnDir, "latin.yaml"), []byte("triggers:\n  - mqtt: x/{device}\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	writeFunction(t, fnDir, "fine", countLua, referenceManifest)
	fns, errs := trigger.LoadDir(fnDir)
	if len(fns) != 1 || fns[0].Manifest.Name != "fine" {
		t.Fatalf("loaded %d functions, want fine alone", len(fns))
	}
	if len(errs) != 1 || !strings.Contains(errs[0].Error(), "latin.lua") || !strings.Contains(errs[0].Error(), "not valid UTF-8") {
		t.Fatalf("errors %v, want latin.lua not valid UTF-8", errs)
	}
	p := startInProcess(t, testConfig(t.TempDir(), fnDir, ""))
	if p.d.Gateway().Lookup("latin") != nil || p.d.Gateway().Lookup("fine") == nil {
		t.Fatalf("deployed: latin %v, fine %v; want fine only", p.d.Gateway().Lookup("latin") != nil, p.d.Gateway().Lookup("fine") != nil)
	}
}
