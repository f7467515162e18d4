package gateway

import (
	"os"
	"path/filepath"
	"testing"
	"time"
)

// TestBrokenSourceAtStartRunsStoredVersion: a NAME.lua that does not
// compile is a broken file like a manifest with a typo (docs/functions.md:
// "A broken file keeps the running version ... This holds across a
// restart"). The load stored the broken pair as the next active version
// before the deploy compiled it; after a restart that version was what the
// store held, it did not load, and the function's events went to the dead
// letters instead of running version 1.
func TestBrokenSourceAtStartRunsStoredVersion(t *testing.T) {
	dataDir, fnDir := t.TempDir(), t.TempDir()
	writeFunction(t, fnDir, "ver", `function handle(e, ctx) return {version = ctx.version} end`, referenceManifest)
	p := startInProcess(t, testConfig(dataDir, fnDir, ""))
	p.stop(t)
	if err := os.WriteFile(filepath.Join(fnDir, "ver.lua"), []byte("function handle(e, ctx)\n  local x = = 1\nend\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	p = startInProcess(t, testConfig(dataDir, fnDir, ""))
	st := p.d.Store()
	dev := connect(t, "tcp://"+p.d.MQTTAddr().String(), "dv", true)
	publish(t, dev, "devices/dv/telemetry", 1, []byte(`{}`))
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		if recs := allRecords(t, st, "ver"); len(recs) == 1 {
			if string(recs[0].Data) != `{"version":1}` {
				t.Fatalf("record %s, want version 1's", recs[0].Data)
			}
			// The store's active version is still the one that runs.
			if r, err := st.GetFunction(t.Context(), "ver", 0); err != nil || r.Version != 1 {
				t.Fatalf("stored active version %d (%v), want 1", r.Version, err)
			}
			return
		}
		if dls, err := st.ListDeadLetters(t.Context(), "ver", 0, 10); err == nil && len(dls) > 0 {
			t.Fatalf("the event was dead-lettered instead of run by the stored version 1: %s (functions deployed: %d)", dls[0].Error, len(p.d.Gateway().Functions()))
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatalf("no record of version 1")
}
