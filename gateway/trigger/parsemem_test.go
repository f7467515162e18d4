package trigger

import (
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
