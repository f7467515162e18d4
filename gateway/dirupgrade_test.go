package gateway

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/moongate-edge/moongate/gateway/trigger"
	"github.com/moongate-edge/moongate/store"
)

// Upgrade from a store written before FromDir existed, and the first start
// of the new moongate cannot read functions_dir yet (mount late): every
// stored active version runs, "alerts" among them. The directory then
// appears with alerts.yaml broken: the running "alerts" becomes the
// directory's, so that at the next start (alerts.yaml still broken) it
// runs again. It was not marked (fallBack skipped a running name), and its
// acknowledged events were taken for unmatched messages.
func TestLegacyRunningFallbackBecomesDirectorys(t *testing.T) {
	dataDir, base := t.TempDir(), t.TempDir()
	fnDir := filepath.Join(base, "functions")
	away := fnDir + ".away"
	if err := os.MkdirAll(away, 0o755); err != nil {
		t.Fatal(err)
	}
	const alertsManifest = "triggers:\n  - mqtt: alerts/{device}\n"
	seedLegacyStore(t, dataDir, map[string][2]string{
		"good":   {countLua, referenceManifest},
		"alerts": {referenceLua, alertsManifest},
	})
	writeFunction(t, away, "good", countLua, referenceManifest)
	writeFunction(t, away, "alerts", referenceLua, "triggerz:\n  - mqtt: alerts/{device}\n") // a typo
	cfg := testConfig(dataDir, fnDir, "")

	// Start 1: the directory is not there yet.
	p := startInProcess(t, cfg)
	if p.d.Gateway().Lookup("alerts") == nil {
		t.Fatal("test broken: legacy fallback does not run alerts")
	}
	if err := os.Rename(away, fnDir); err != nil { // the mount appears
		t.Fatal(err)
	}
	ctx := context.Background()
	waitFor(t, 10*time.Second, "directory adopted", func() bool {
		_, ok, err := p.d.Store().GetState(ctx, gatewayState, dirAdoptedKey)
		return err == nil && ok
	})
	if p.d.Gateway().Lookup("alerts") == nil {
		t.Fatal("test broken: alerts no longer runs after the directory's load")
	}
	p.stop(t)

	// Start 2: same directory, alerts.yaml still broken.
	p = startInProcess(t, cfg)
	runs := p.d.Gateway().Lookup("alerts") != nil
	c := connect(t, "tcp://"+p.d.MQTTAddr().String(), "dev1", true)
	publish(t, c, "alerts/d1", 1, []byte(`{"temp": 90}`)) // acknowledged
	c.Disconnect(100)
	handled := poll(5*time.Second, func() bool { return len(allRecords(t, p.d.Store(), "alerts")) > 0 })
	if !runs || !handled {
		t.Fatalf("alerts ran (stored version, broken file) until the stop, but after a restart with the same directory: runs %v; acknowledged event handled %v (FromDir %v)", runs, handled, fromDir(t, p.d.Store(), "alerts"))
	}
}

// Upgrade from a store written before FromDir existed; the first start of
// the new moongate finds functions_dir empty (a mount point not mounted
// yet). That load does not note the directory as adopted (nothing was
// checked against it), so at the next start, with good.yaml broken, good's
// stored version runs. It did not (the note was written), and good's
// acknowledged events were taken for unmatched messages.
func TestLegacyEmptyDirAdoptsNothing(t *testing.T) {
	dataDir, fnDir := t.TempDir(), t.TempDir()
	seedLegacyStore(t, dataDir, map[string][2]string{"good": {referenceLua, referenceManifest}})
	cfg := testConfig(dataDir, fnDir, "")

	// Start 1: the directory is empty (not mounted yet); stopped before
	// the mount appears.
	p := startInProcess(t, cfg)
	p.stop(t)

	// Start 2: mounted, good.yaml has a typo.
	writeFunction(t, fnDir, "good", referenceLua, "triggerz:\n  - mqtt: devices/{device}/telemetry\n")
	p = startInProcess(t, cfg)
	runs := p.d.Gateway().Lookup("good") != nil
	c := connect(t, "tcp://"+p.d.MQTTAddr().String(), "dev1", true)
	publish(t, c, "devices/d1/telemetry", 1, []byte(`{"temp": 20}`)) // acknowledged
	c.Disconnect(100)
	handled := poll(5*time.Second, func() bool { return len(allRecords(t, p.d.Store(), "good")) > 0 })
	if !runs || !handled {
		_, adopted, _ := p.d.Store().GetState(context.Background(), gatewayState, dirAdoptedKey)
		t.Fatalf("legacy store, broken good.yaml, after one start that found functions_dir empty: good's stored version runs %v; acknowledged event handled %v (adopted %v, good FromDir %v)", runs, handled, adopted, fromDir(t, p.d.Store(), "good"))
	}
}

// A function of functions_dir whose source is within trigger.MaxSourceBytes
// (256 KiB) but over about 140 KiB could not be stored on the default
// low-memory profile: PutFunction counted its record as if it were in the
// LSM tree, twice, against half of Badger's batch size (~283 KB), and the
// whole load was refused: no other function of the directory was
// deployed either.
func TestBigSourceLoadsFromDir(t *testing.T) {
	dataDir, fnDir := t.TempDir(), t.TempDir()
	big := "function handle(e) return {n = 1} end\n--" + strings.Repeat("x", 200<<10) + "\n"
	if len(big) > trigger.MaxSourceBytes {
		t.Fatal("test broken: source over the limit")
	}
	writeFunction(t, fnDir, "big", big, "triggers:\n  - mqtt: big/{device}\n")
	writeFunction(t, fnDir, "good", referenceLua, referenceManifest)
	var logw lockedBuffer
	p := startInProcessLog(t, testConfig(dataDir, fnDir, ""), &logw)
	// A function added later, while running.
	writeFunction(t, fnDir, "later", referenceLua, "triggers:\n  - mqtt: later/{device}\n")
	later := poll(3*time.Second, func() bool { return p.d.Gateway().Lookup("later") != nil })
	good, bigRuns := p.d.Gateway().Lookup("good") != nil, p.d.Gateway().Lookup("big") != nil
	if !good || !later || !bigRuns {
		line := ""
		for _, l := range strings.Split(logw.String(), "\n") {
			if strings.Contains(l, "functions not updated") {
				line = l
				break
			}
		}
		t.Fatalf("a %d-byte source (limit %d) in functions_dir: big runs %v; good (another function) runs %v; later (added while running) runs %v\nlog: %s", len(big), trigger.MaxSourceBytes, bigRuns, good, later, line)
	}
}

// Upgrade from a store written by a moongate on the "large" store profile,
// now on the default low-memory one, with "big" (a 150 KB source)
// unchanged in functions_dir: its MarkFromDir was refused (the same
// over-estimate as PutFunction's), only logged, and the load noted the
// adoption all the same; "big" was then never the directory's, and the
// next start that could not read the directory did not run it.
func TestLegacyBigFunctionMarkedAndKeptAsFallback(t *testing.T) {
	dataDir, fnDir := unmountableDirs(t)
	bigLua := referenceLua + "\n--" + strings.Repeat("x", 150<<10) + "\n"
	const bigManifest = "triggers:\n  - mqtt: big/{device}\n"
	large := strings.Replace(testConfig(dataDir, t.TempDir(), ""), "store: {durability: always}", "store: {durability: always, profile: large}", 1)
	{ // the older moongate, on the large profile
		p := startInProcess(t, large)
		src, man := []byte(bigLua), []byte(bigManifest)
		if _, err := p.d.Store().PutFunction(context.Background(), store.FunctionRecord{Name: "big", Source: src, Manifest: man,
			SHA256: trigger.Fingerprint(man, src), Active: true}); err != nil {
			t.Fatal(err)
		}
		p.stop(t)
	}
	writeFunction(t, fnDir, "big", bigLua, bigManifest)
	writeFunction(t, fnDir, "good", referenceLua, referenceManifest)
	cfg := testConfig(dataDir, fnDir, "")
	p := startInProcess(t, cfg)
	ctx := context.Background()
	waitFor(t, 10*time.Second, "directory adopted", func() bool {
		_, ok, err := p.d.Store().GetState(ctx, gatewayState, dirAdoptedKey)
		return err == nil && ok
	})
	if p.d.Gateway().Lookup("big") == nil {
		t.Fatal("test broken: big does not run from the directory")
	}
	p.stop(t)

	unmount(t, fnDir) // not mounted at the next start
	p = startInProcess(t, cfg)
	runs := p.d.Gateway().Lookup("big") != nil
	c := connect(t, "tcp://"+p.d.MQTTAddr().String(), "dev1", true)
	publish(t, c, "big/d1", 1, []byte(`{"temp": 20}`)) // acknowledged
	c.Disconnect(100)
	handled := poll(5*time.Second, func() bool { return len(allRecords(t, p.d.Store(), "big")) > 0 })
	if !runs || !handled {
		t.Fatalf("big, loaded from functions_dir (unchanged) at the last start, with the directory unreadable now: runs %v; acknowledged event handled %v (FromDir %v)", runs, handled, fromDir(t, p.d.Store(), "big"))
	}
}

// The same limit through the API (no functions_dir): a source within the
// documented 256 KiB was refused as a store error.
func TestBigSourceAPIDeploy(t *testing.T) {
	p := startInProcess(t, testConfig(t.TempDir(), "", ""))
	big := "function handle(e) return {n = 1} end\n--" + strings.Repeat("x", 200<<10) + "\n"
	if _, err := p.d.DeployFunction(context.Background(), DeployRequest{Name: "big", Manifest: []byte("triggers:\n  - mqtt: big/{device}\n"), Source: []byte(big)}); err != nil {
		t.Fatalf("deploy of a %d-byte source (limit %d): %v", len(big), trigger.MaxSourceBytes, err)
	}
}
