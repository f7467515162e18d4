package trigger

import (
	"fmt"
	"runtime"
	"strings"
	"testing"
)

// TestManifestParseMemoryBounded: a manifest's function config is decoded
// twice (YAML nodes, then values), about 180 times its size: the 1 MiB
// manifests once allowed took 186 MiB and were accepted (GET
// /v1/functions decodes them again). At the 64 KiB limit it stays small.
func TestManifestParseMemoryBounded(t *testing.T) {
	body := "triggers:\n  - mqtt: a/b\nconfig:\n  x: [" + strings.Repeat("0,", (MaxManifestBytes-64)/2) + "0]\n"
	if len(body) > MaxManifestBytes {
		t.Fatal("test body over the limit")
	}
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	_, err := ParseManifest("f.yaml", []byte(body))
	runtime.ReadMemStats(&after)
	if err != nil {
		t.Fatal(err)
	}
	alloc := after.TotalAlloc - before.TotalAlloc
	t.Logf("manifest of %d bytes: %d MiB allocated to parse it", len(body), alloc>>20)
	if alloc > 64<<20 {
		t.Fatalf("parsing a %d-byte manifest allocated %d MiB", len(body), alloc>>20)
	}
}

// TestStoredManifestWithLargeConfigTable: a manifest stored under the old
// 1 MiB limit with a 50,000-entry table in its config is over the element
// bound of new files, and was refused again at load (the function vanished
// on upgrade). Stored manifests are not held to it.
func TestStoredManifestWithLargeConfigTable(t *testing.T) {
	var b strings.Builder
	b.WriteString("triggers:\n  - mqtt: cal/{device}\nconfig:\n  offsets:\n")
	for i := range 50000 {
		fmt.Fprintf(&b, "    s%05d: %d.25\n", i, i%100)
	}
	data := []byte(b.String())
	if len(data) > MaxStoredManifestBytes {
		t.Fatalf("manifest of %d bytes", len(data))
	}
	if _, err := ParseStoredManifest("cal.yaml", data); err != nil {
		t.Fatalf("stored manifest of %d bytes (under the old 1 MiB limit) refused: %v", len(data), err)
	}
}
