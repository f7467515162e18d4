package gateway

import (
	"context"
	"errors"
	"testing"
)

// A reload that cannot read the store keeps the running functions (an
// empty list would remove them all).
func TestReloadKeepsFunctionsOnStoreError(t *testing.T) {
	p := startInProcess(t, testConfig(t.TempDir(), "", ""))
	d, g := p.d, p.d.Gateway()
	for _, name := range []string{"a", "b"} {
		if _, err := d.DeployFunction(context.Background(), DeployRequest{Name: name, Manifest: []byte(referenceManifest), Source: []byte(referenceLua)}); err != nil {
			t.Fatal(err)
		}
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := d.storedFunctions(ctx, false); !errors.Is(err, context.Canceled) {
		t.Fatalf("storedFunctions with a cancelled context: %v", err)
	}
	if err := d.reload(ctx); !errors.Is(err, context.Canceled) {
		t.Fatalf("reload with a cancelled context: %v", err)
	}
	if len(g.Functions()) != 2 || g.Lookup("a") == nil || g.Lookup("b") == nil {
		t.Fatalf("after a failed reload the gateway runs %d functions", len(g.Functions()))
	}
}
