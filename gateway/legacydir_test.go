package gateway

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/moongate-edge/moongate/gateway/trigger"
	"github.com/moongate-edge/moongate/store"
)

// seedLegacyStore writes, as a moongate from before FromDir did when it
// loaded functions_dir, the active versions of fns (name -> [source,
// manifest]) into dataDir's store: FromDir false.
func seedLegacyStore(t *testing.T, dataDir string, fns map[string][2]string) {
	t.Helper()
	ctx := context.Background()
	d := idleDaemon(t, dataDir)
	defer d.closeAll()
	for name, f := range fns {
		src, man := []byte(f[0]), []byte(f[1])
		if _, err := d.store.PutFunction(ctx, store.FunctionRecord{Name: name, Source: src, Manifest: man,
			SHA256: trigger.Fingerprint(man, src), Active: true}); err != nil {
			t.Fatal(err)
		}
	}
}

// Upgrade from a store written before FromDir existed: the directory holds
// "good" (unchanged) and "alerts", whose NAME.yaml got a typo. The stored
// version of "alerts" runs (any active version counts as the directory's
// until the store notes the adoption), at that start and at a later one
// that cannot read the directory. It did not when "good" was marked first
// (the events were acknowledged as unmatched and lost).
func TestLegacyStoreBrokenFileFallsBackAtUpgrade(t *testing.T) {
	dataDir, fnDir := unmountableDirs(t)
	const alertsManifest = "triggers:\n  - mqtt: alerts/{device}\n"
	seedLegacyStore(t, dataDir, map[string][2]string{
		"good":   {countLua, referenceManifest},
		"alerts": {referenceLua, alertsManifest},
	})
	writeFunction(t, fnDir, "good", countLua, referenceManifest)
	writeFunction(t, fnDir, "alerts", referenceLua, "triggerz:\n  - mqtt: alerts/{device}\n") // a typo
	cfg := testConfig(dataDir, fnDir, "")
	p := startInProcess(t, cfg)
	if p.d.Gateway().Lookup("good") == nil {
		t.Fatal("test broken: good not loaded")
	}
	c := connect(t, "tcp://"+p.d.MQTTAddr().String(), "dev1", true)
	publish(t, c, "alerts/d1", 1, []byte(`{"temp": 90}`)) // acknowledged by the gateway's broker
	c.Disconnect(100)
	runs := p.d.Gateway().Lookup("alerts") != nil
	handled := poll(5*time.Second, func() bool { return len(allRecords(t, p.d.Store(), "alerts")) > 0 })
	p.stop(t)

	// The next start cannot read the directory (not mounted yet): the
	// versions stored from it run - "alerts" is one of them.
	unmount(t, fnDir)
	p = startInProcess(t, cfg)
	runs2 := p.d.Gateway().Lookup("alerts") != nil
	if !runs || !handled || !runs2 {
		t.Fatalf("legacy store upgraded with a broken alerts.yaml: its stored version runs at the upgrade start: %v; the acknowledged event produced its record: %v; at the next start with the directory unreadable it runs: %v", runs, handled, runs2)
	}
}

// Control: the same legacy store with only "timed" in the directory runs
// its stored version.
func TestLegacyStoreBrokenFileFallsBackAlone(t *testing.T) {
	dataDir, fnDir := t.TempDir(), t.TempDir()
	seedLegacyStore(t, dataDir, map[string][2]string{"timed": {goneLua, goneManifest}})
	writeFunction(t, fnDir, "timed", goneLua, "triggerz:\n  - timer: \"@every 1s\"\n")
	p := startInProcess(t, testConfig(dataDir, fnDir, ""))
	if p.d.Gateway().Lookup("timed") == nil {
		t.Fatal("legacy fallback does not run timed")
	}
}

// A store that holds functions deployed through the API before
// functions_dir was set, and whose directory functions were all removed
// from the directory, is not taken for a legacy store again: a start that
// cannot read the directory does not run the API's versions.
func TestAllDirFunctionsRemovedFallbackSkipsAPIVersions(t *testing.T) {
	dataDir, fnDir := unmountableDirs(t)
	deployThroughAPI(t, dataDir, "api", goneManifest, goneLua)

	writeFunction(t, fnDir, "keep", countLua, referenceManifest)
	cfg := testConfig(dataDir, fnDir, "")
	p := startInProcess(t, cfg)
	waitFor(t, 10*time.Second, "keep deployed", func() bool { return p.d.Gateway().Lookup("keep") != nil })
	removeFunction(t, fnDir, "keep") // the directory's last function is removed
	waitFor(t, 10*time.Second, "keep deactivated", func() bool { return !activeIn(t, p.d.Store(), "keep") })
	p.stop(t)

	unmount(t, fnDir) // not mounted at the next start
	p = startInProcess(t, cfg)
	if f := p.d.Gateway().Lookup("api"); f != nil {
		t.Fatalf("api (version %d), deployed through the API before functions_dir was set and never in the directory, runs while functions_dir cannot be read", f.Version)
	}
}

// Upgrade from a store written before FromDir existed, on a nearly full
// disk: the first load marks "a" FromDir (MarkFromDir does not grow the
// store), then fails storing the new function "a2" (store full) and is not
// applied. The start falls back to the stored versions, all of them (the
// adoption is not noted): "b", unchanged in the directory and active in
// the store, runs.
func TestLegacyStoreHalfMarkedLoadKeepsFunctions(t *testing.T) {
	dataDir, fnDir := t.TempDir(), t.TempDir()
	const bManifest = "triggers:\n  - mqtt: b/{device}\n"
	seedLegacyStore(t, dataDir, map[string][2]string{
		"a": {countLua, referenceManifest},
		"b": {referenceLua, bManifest},
	})
	writeFunction(t, fnDir, "a", countLua, referenceManifest)
	writeFunction(t, fnDir, "a2", countLua, "triggers:\n  - mqtt: a2/{device}\n") // new: needs a write that grows the store
	writeFunction(t, fnDir, "b", referenceLua, bManifest)
	cfg := strings.Replace(testConfig(dataDir, fnDir, ""), "store: {durability: always}", "store: {durability: always, disk_reserve: 1000TB}", 1)
	p := startInProcess(t, cfg)
	if p.d.Gateway().Lookup("a") == nil {
		t.Fatal("test broken: a does not run")
	}
	if p.d.Gateway().Lookup("b") == nil {
		t.Fatalf("b, active in the store and unchanged in functions_dir, does not run after a load that failed half-way (store: a FromDir %v)", fromDir(t, p.d.Store(), "a"))
	}
}

func fromDir(t *testing.T, st *store.Store, name string) bool {
	t.Helper()
	r, err := st.GetFunction(context.Background(), name, 0)
	if err != nil {
		t.Fatal(err)
	}
	return r.FromDir
}
