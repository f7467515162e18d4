package gateway

import (
	"errors"
	"log/slog"
	"testing"
	"time"

	"github.com/moongate-edge/moongate/gateway/config"
	"github.com/moongate-edge/moongate/store"
)

// The store's quotas come from store.quotas, usage meters included (their
// age bound is the only one they have; 0 keeps them).
func TestStoreOptionsQuotas(t *testing.T) {
	cfg := config.Default()
	o := storeOptions(cfg, slog.Default())
	if q := o.Quotas[store.SpaceUsage]; q.MaxAge != 2160*time.Hour || q.MaxBytes != 0 {
		t.Fatalf("default usage quota %+v, want 90 days by age", q)
	}
	if q := o.Quotas[store.SpaceLogs]; q.MaxAge != 72*time.Hour || q.MaxBytes != 16<<20 {
		t.Fatalf("logs quota %+v", q)
	}
	if q := o.Quotas[store.SpaceInbox]; q.Policy != store.RejectNew {
		t.Fatalf("inbox quota %+v", q)
	}
	cfg, err := config.Parse("m.yaml", []byte("store:\n  quotas:\n    usage:\n      max_age: 0\n"))
	if err != nil {
		t.Fatal(err)
	}
	if q, ok := storeOptions(cfg, slog.Default()).Quotas[store.SpaceUsage]; !ok || q.MaxAge != 0 {
		t.Fatalf("usage max_age 0 gives %+v (set %v), want no bound", q, ok)
	}
}

// store.compaction_share reaches the store; 0 (no pacing) becomes the
// store's negative, since the store's zero value means its default.
func TestStoreOptionsCompactionShare(t *testing.T) {
	if got := storeOptions(config.Default(), slog.Default()).CompactionShare; got != 0.5 {
		t.Fatalf("default compaction share %v, want 0.5", got)
	}
	for yaml, want := range map[string]float64{"0.25": 0.25, "1": 1, "0": -1} {
		cfg, err := config.Parse("m.yaml", []byte("store:\n  compaction_share: "+yaml+"\n"))
		if err != nil {
			t.Fatal(err)
		}
		if got := storeOptions(cfg, slog.Default()).CompactionShare; got != want {
			t.Errorf("compaction_share %s gives %v, want %v", yaml, got, want)
		}
	}
}

// The settings of the configuration reach the sync targets and the store:
// an MQTT target's max_payload, and the store's value limit sized for the
// largest event.
func TestSyncTargetAndValueLimitOptions(t *testing.T) {
	cfg, err := config.Parse("m.yaml", []byte("mqtt:\n  max_payload: 1MiB\nsync:\n  targets:\n    - {name: up, type: mqtt, mqtt: {broker: \"tcp://127.0.0.1:1883\", max_payload: 128KiB}}\n"))
	if err != nil {
		t.Fatal(err)
	}
	ts := syncTargets(cfg)
	if len(ts) != 1 || ts[0].MQTT.MaxPayload != 128<<10 {
		t.Fatalf("sync targets %+v", ts)
	}
	if got := storeOptions(cfg, slog.Default()).MaxValueBytes; got < 1<<20+2*65535 {
		t.Fatalf("store value limit %d for max_payload 1MiB", got)
	}
	if got := storeOptions(config.Default(), slog.Default()).MaxValueBytes; got != 1<<20 {
		t.Fatalf("default store value limit %d, want 1MiB", got)
	}
}

// TestDiskReserveZero: store.disk_reserve: 0 means no reserve. It was
// passed to the store as 0, the store's own default of 64 MiB: a small
// data partition with 32 MiB free stayed not ready.
func TestDiskReserveZero(t *testing.T) {
	cfg, err := config.Parse("test.yaml", []byte("gateway_id: test\ndata_dir: "+t.TempDir()+"\nstore: {disk_reserve: 0}\n"))
	if err != nil {
		t.Fatal(err)
	}
	o := storeOptions(cfg, slog.New(slog.DiscardHandler))
	o.FreeSpace = func(string) (uint64, error) { return 32 << 20, nil }
	st, err := store.Open(t.Context(), o)
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	if err := st.Health(); err != nil {
		t.Fatalf("disk_reserve: 0 with 32 MiB free: %v", err)
	}
	// The default is still 64 MiB.
	def, err := config.Parse("test.yaml", []byte("gateway_id: test\ndata_dir: "+t.TempDir()+"\n"))
	if err != nil {
		t.Fatal(err)
	}
	if o := storeOptions(def, slog.New(slog.DiscardHandler)); o.DiskReserve != 64<<20 {
		t.Fatalf("default reserve %d", o.DiskReserve)
	}
}

// TestDiskReserveZeroKeepsDiskChecks: "no reserve" was passed to the store
// as -1, which also stopped it reading the free space: the free-bytes
// metric stayed 0 and the value-log GC started without its room check.
func TestDiskReserveZeroKeepsDiskChecks(t *testing.T) {
	cfg, err := config.Parse("test.yaml", []byte("gateway_id: test\ndata_dir: "+t.TempDir()+"\nstore: {disk_reserve: 0}\n"))
	if err != nil {
		t.Fatal(err)
	}
	o := storeOptions(cfg, slog.New(slog.DiscardHandler))
	o.FreeSpace = func(string) (uint64, error) { return 1 << 20, nil } // 1 MiB free
	st, err := store.Open(t.Context(), o)
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	var errs []error
	if free := st.Stats().FreeBytes; free != 1<<20 {
		errs = append(errs, errors.New("FreeBytes (moongate_store_free_bytes) is not the free space"))
		t.Logf("Stats().FreeBytes = %d with 1 MiB free", free)
	}
	if _, err := st.RunValueLogGC(t.Context()); !errors.Is(err, store.ErrStoreFull) {
		errs = append(errs, errors.New("value-log GC started with 1 MiB free"))
		t.Logf("RunValueLogGC with 1 MiB free: %v, want ErrStoreFull (as with any reserve)", err)
	}
	if len(errs) > 0 {
		t.Fatal(errors.Join(errs...))
	}
}
