package gateway

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/moongate-edge/moongate/gateway/trigger"
	"github.com/moongate-edge/moongate/store"
)

// TestStoredLargeManifestLoadsAfterUpgrade: a function stored with a
// manifest over today's 64 KiB limit (allowed up to 1 MiB before) did not
// load after the upgrade: not even a function whose events are
// dead-lettered, since its triggers were unknown, so its topics were not
// routed and the broker's acknowledged events were dropped.
func TestStoredLargeManifestLoadsAfterUpgrade(t *testing.T) {
	ctx := context.Background()
	dataDir := t.TempDir()
	p := startInProcess(t, testConfig(dataDir, "", ""))
	manifest := "triggers:\n  - mqtt: big/{device}\nconfig:\n  table: \"" + strings.Repeat("x", 100<<10) + "\"\n"
	if len(manifest) <= trigger.MaxManifestBytes || len(manifest) > 1<<20 {
		t.Fatal("manifest size")
	}
	src := []byte(`function handle(e, ctx) return {device = e.device, n = #ctx.config.table} end`)
	if _, err := p.d.Store().PutFunction(ctx, store.FunctionRecord{Name: "big", Source: src, Manifest: []byte(manifest), SHA256: "v1", Active: true}); err != nil {
		t.Fatal(err)
	}
	p.stop(t)

	p = startInProcess(t, testConfig(dataDir, "", ""))
	st := p.d.Store()
	dev := connect(t, "tcp://"+p.d.MQTTAddr().String(), "d1", true)
	publish(t, dev, "big/d1", 1, []byte(`{"t":1}`))
	// publish waited for the broker's PUBACK: the message is acknowledged.
	waitFor(t, 10*time.Second, "the event's record", func() bool { return len(allRecords(t, st, "big")) == 1 })
	if got := string(allRecords(t, st, "big")[0].Data); got != `{"device":"d1","n":102400}` {
		t.Fatalf("record %s", got)
	}
}
