package gateway

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/moongate-edge/moongate/gateway/trigger"
)

// lockedBuffer is a log sink safe for concurrent use.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// A function whose files are in the directory but fail to load keeps its
// running version (the error is logged); it is removed only when its files
// are gone.
func TestBrokenFileKeepsRunningVersion(t *testing.T) {
	dataDir, fnDir := t.TempDir(), t.TempDir()
	src := `function handle(e, ctx) return {v = %d, version = ctx.version} end`
	writeFunction(t, fnDir, "ver", fmt.Sprintf(src, 1), referenceManifest)
	logs := &lockedBuffer{}
	p := startInProcessLog(t, testConfig(dataDir, fnDir, ""), logs)
	url := "tcp://" + p.d.MQTTAddr().String()
	dev := connect(t, url, "dv", true)
	st := p.d.Store()
	records := 0
	send := func(want string) {
		t.Helper()
		publish(t, dev, "devices/dv/telemetry", 1, []byte(`{}`))
		records++
		waitFor(t, 10*time.Second, fmt.Sprintf("record %d", records), func() bool { return len(allRecords(t, st, "ver")) == records })
		if got := string(allRecords(t, st, "ver")[records-1].Data); got != want {
			t.Fatalf("record %d = %s, want %s", records, got, want)
		}
	}
	send(`{"v":1,"version":1}`)

	manifest := filepath.Join(fnDir, "ver.yaml")
	for i, c := range []struct{ manifest, inLog string }{
		{"triggers:\n  - mqtt: devices/{device}/telemetry\ntimout: 1s\n", "timout: unknown key"}, // a typo
		{"triggers:\n  - mqtt: devices/{device}/telemetry\nlimits:\n  max_steps: -1\n", "max_steps: -1 out of range"},
		{"triggers:\n  - mqtt: devices/{device}/telemetry\nmin_instances: 5\n", "min_instances 5 is more than max_concurrency"}, // over the gateway's default
	} {
		// The manifest first, then a new source: no version of the broken
		// pair may run, nor a mix of it with the old files.
		if err := os.WriteFile(manifest, []byte(c.manifest), 0o644); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(fnDir, "ver.lua"), []byte(fmt.Sprintf(src, 100+i)), 0o644); err != nil {
			t.Fatal(err)
		}
		waitFor(t, 10*time.Second, "the load error in the log: "+c.inLog, func() bool {
			return logsMention(logs.String(), c.inLog, "ver")
		})
		if fns := p.d.Gateway().Functions(); len(fns) != 1 || fns[0].Name != "ver" || fns[0].Version != 1 {
			t.Fatalf("case %d: functions %+v, want ver version 1 still deployed", i, fns)
		}
		send(`{"v":1,"version":1}`)
	}
	if !strings.Contains(logs.String(), "function=ver") {
		t.Errorf("the log does not name the function:\n%s", logs.String())
	}

	// Fixed: the new version loads.
	writeFunction(t, fnDir, "ver", fmt.Sprintf(src, 2), referenceManifest)
	waitFor(t, 10*time.Second, "version 2 deployed", func() bool {
		fns := p.d.Gateway().Functions()
		return len(fns) == 1 && fns[0].Version == 2
	})
	send(`{"v":2,"version":2}`)

	// Half removed (NAME.lua gone): kept. Both files gone: removed.
	n := strings.Count(logs.String(), "function not loaded") // before the watcher can see the removal
	if err := os.Remove(filepath.Join(fnDir, "ver.lua")); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 10*time.Second, "the missing source in the log", func() bool { return strings.Count(logs.String(), "function not loaded") > n })
	if fns := p.d.Gateway().Functions(); len(fns) != 1 || fns[0].Version != 2 {
		t.Fatalf("functions %+v, want ver version 2 still deployed", fns)
	}
	if err := os.Remove(manifest); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 10*time.Second, "ver removed", func() bool { return len(p.d.Gateway().Functions()) == 0 })
}

// When the store cannot be read the update is skipped: the deployed
// functions stay.
func TestLoadFunctionsStoreErrorKeepsAll(t *testing.T) {
	dataDir, fnDir := t.TempDir(), t.TempDir()
	writeFunction(t, fnDir, "a", `function handle(e, ctx) return {} end`, referenceManifest)
	writeFunction(t, fnDir, "b", `function handle(e, ctx) return {} end`, "triggers:\n  - mqtt: other/{device}\n")
	logs := &lockedBuffer{}
	p := startInProcessLog(t, testConfig(dataDir, fnDir, ""), logs)
	if n := len(p.d.Gateway().Functions()); n != 2 {
		t.Fatalf("%d functions, want 2", n)
	}
	// A load whose store reads fail (here: its context is done) changes
	// nothing, although it saw only "b".
	all, errs := trigger.LoadDir(fnDir)
	if len(all) != 2 || len(errs) != 0 {
		t.Fatalf("LoadDir: %d functions, %v", len(all), errs)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if fns, err := p.d.versioned(ctx, all[1:], map[string]bool{}); err == nil {
		t.Fatalf("versioned with a failing store: %d functions and no error", len(fns))
	}
	p.d.loadFunctions(ctx, all[1:], nil)
	if n := len(p.d.Gateway().Functions()); n != 2 {
		t.Fatalf("%d functions after a failed load, want 2", n)
	}
	// An unreadable directory changes nothing either.
	p.d.loadFunctions(context.Background(), nil, []error{fmt.Errorf("%w: read functions directory: boom", trigger.ErrSource)})
	if n := len(p.d.Gateway().Functions()); n != 2 {
		t.Fatalf("%d functions after an unreadable directory, want 2", n)
	}
	if !strings.Contains(logs.String(), "functions directory not read") {
		t.Errorf("no log of the unreadable directory")
	}
}

// logsMention reports whether a log line contains both s and name.
func logsMention(logs, s, name string) bool {
	for _, l := range strings.Split(logs, "\n") {
		if strings.Contains(l, s) && strings.Contains(l, name) {
			return true
		}
	}
	return false
}
