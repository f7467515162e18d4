package gateway

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/moongate-edge/moongate/gateway/config"
	"github.com/moongate-edge/moongate/gateway/trigger"
	"github.com/moongate-edge/moongate/luavm"
	"github.com/moongate-edge/moongate/mqtt"
	"github.com/moongate-edge/moongate/mqtt/mqtttest"
	"github.com/moongate-edge/moongate/store"
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

// A stored function that no longer loads when the daemon starts (here: its
// min_instances is over the max_concurrency the operator configured since)
// still owns its topics: its events are dead-lettered with ErrNotLoaded,
// not taken for unmatched messages, and they replay once a version that
// loads is deployed.
func TestStoredFunctionNotLoadedDeadLetters(t *testing.T) {
	ctx := context.Background()
	dataDir := t.TempDir()
	p := startInProcess(t, testConfig(dataDir, "", ""))
	src := []byte(`function handle(e, ctx) return {device = e.device} end`)
	manifest := "triggers:\n  - mqtt: devices/{device}/telemetry\n  - timer: \"@every 1s\"\nmin_instances: %d\n"
	if _, err := p.d.DeployFunction(ctx, DeployRequest{Name: "hot", Manifest: []byte(fmt.Sprintf(manifest, 3)), Source: src}); err != nil {
		t.Fatal(err)
	}
	// And one whose stored source does not compile (as after an upgrade
	// of the runtime that refuses what an older one took).
	if _, err := p.d.Store().PutFunction(ctx, store.FunctionRecord{Name: "old", Source: []byte("function handle("), Manifest: []byte("triggers:\n  - mqtt: legacy/{device}\n"), SHA256: "x", Active: true}); err != nil {
		t.Fatal(err)
	}
	p.stop(t)

	logs := &lockedBuffer{}
	p = startInProcessLog(t, testConfig(dataDir, "", "functions: {max_concurrency: 2}\n"), logs)
	if fns := p.d.Gateway().Functions(); len(fns) != 0 {
		t.Fatalf("functions %+v, want none loaded", fns)
	}
	if !logsMention(logs.String(), "function not loaded", "hot") || !strings.Contains(logs.String(), "min_instances 3 is more than max_concurrency 2") {
		t.Errorf("the log does not say why hot is not loaded:\n%s", logs.String())
	}
	st := p.d.Store()
	dev := connect(t, "tcp://"+p.d.MQTTAddr().String(), "d7", true)
	publish(t, dev, "devices/d7/telemetry", 1, []byte(`{"t":1}`))
	var dl []store.DeadLetter
	waitFor(t, 10*time.Second, "the event dead-lettered", func() bool {
		var err error
		dl, err = st.ListDeadLetters(ctx, "hot", 0, 10)
		return err == nil && len(dl) == 1
	})
	if !strings.Contains(dl[0].Error, ErrNotLoaded.Error()) || !strings.Contains(dl[0].Error, "max_concurrency") || dl[0].Key != "d7" {
		t.Errorf("dead letter %q (key %q), want ErrNotLoaded and the cause", dl[0].Error, dl[0].Key)
	}
	// No API call reaches it, and its timer has no loop.
	g := p.d.Gateway()
	if _, err := g.Invoke(ctx, "hot", &luavm.Event{Trigger: "http"}, true, nil); !errors.Is(err, ErrNoFunction) {
		t.Errorf("Invoke of a function not loaded: %v, want ErrNoFunction", err)
	}
	g.timersMu.Lock()
	loop := g.timers["hot"]
	g.timersMu.Unlock()
	if loop != nil {
		t.Errorf("a timer loop runs for a function that is not loaded")
	}
	if n := len(allRecords(t, st, "hot")); n != 0 {
		t.Fatalf("%d records from a function that is not loaded", n)
	}
	publish(t, dev, "legacy/d7", 1, []byte(`{}`))
	waitFor(t, 10*time.Second, "the legacy event dead-lettered", func() bool {
		d, err := st.ListDeadLetters(ctx, "old", 0, 10)
		return err == nil && len(d) == 1 && strings.Contains(d[0].Error, ErrNotLoaded.Error()) && strings.Contains(d[0].Error, "compile")
	})

	// A version that loads; the dead letter replays through it.
	if _, err := p.d.DeployFunction(ctx, DeployRequest{Name: "hot", Manifest: []byte(fmt.Sprintf(manifest, 1)), Source: src}); err != nil {
		t.Fatal(err)
	}
	if err := p.d.Gateway().Requeue(ctx, "hot", dl[0].Key, dl[0].Event, dl[0].Seq); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 10*time.Second, "the replayed event's record", func() bool {
		for _, r := range allRecords(t, st, "hot") {
			if string(r.Data) == `{"device":"d7"}` {
				return true
			}
		}
		return false
	})
}

// A function whose files fail to load when the daemon starts runs its
// stored version (the one that ran before the restart), as it keeps its
// running version when the files break while the daemon runs.
func TestBrokenFileAtStartRunsStoredVersion(t *testing.T) {
	dataDir, fnDir := t.TempDir(), t.TempDir()
	writeFunction(t, fnDir, "ver", `function handle(e, ctx) return {version = ctx.version} end`, referenceManifest)
	p := startInProcess(t, testConfig(dataDir, fnDir, ""))
	p.stop(t)
	if err := os.WriteFile(filepath.Join(fnDir, "ver.yaml"), []byte("triggers:\n  - mqtt: devices/{device}/telemetry\ntimout: 1s\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	logs := &lockedBuffer{}
	p = startInProcessLog(t, testConfig(dataDir, fnDir, ""), logs)
	if fns := p.d.Gateway().Functions(); len(fns) != 1 || fns[0].Name != "ver" || fns[0].Version != 1 {
		t.Fatalf("functions %+v, want the stored ver version 1", fns)
	}
	if !logsMention(logs.String(), "running its stored version", "ver") {
		t.Errorf("no log of the fallback:\n%s", logs.String())
	}
	st := p.d.Store()
	dev := connect(t, "tcp://"+p.d.MQTTAddr().String(), "dv", true)
	publish(t, dev, "devices/dv/telemetry", 1, []byte(`{}`))
	waitFor(t, 10*time.Second, "a record of version 1", func() bool {
		recs := allRecords(t, st, "ver")
		return len(recs) == 1 && string(recs[0].Data) == `{"version":1}`
	})
}

// A store whose functions cannot be listed fails the start (store mode):
// running without them would take their events for unmatched messages.
func TestStoreListErrorFailsStart(t *testing.T) {
	cfg, err := config.Parse("test.yaml", []byte(testConfig(t.TempDir(), "", "")))
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	d, err := NewDaemon(ctx, cfg, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	if err := d.Store().Close(); err != nil {
		t.Fatal(err)
	}
	err = d.Run(ctx)
	if !errors.Is(err, store.ErrClosed) || !strings.Contains(err.Error(), "list stored functions") {
		t.Fatalf("Run with a store that cannot be read: %v, want the listing error", err)
	}
}

// gatedRuntime is a runtime whose Deploy of one function name blocks
// (after deploying) until gate is closed, as a deploy of a set does while
// it compiles and pre-warms the next function.
type gatedRuntime struct {
	*luavm.Runtime
	name    string
	entered chan struct{}
	gate    chan struct{}
}

func (r *gatedRuntime) Deploy(ctx context.Context, spec luavm.Spec) error {
	err := r.Runtime.Deploy(ctx, spec)
	if spec.Name == r.name && spec.Version == 2 {
		close(r.entered)
		<-r.gate
	}
	return err
}

// An event that runs while a redeploy of the set is still under way runs
// the new version's code (the runtime switched to it) and its outputs go
// where the new version's manifest says: its record is in the new stream,
// not the old one.
func TestRedeployOutputsFollowVersionRun(t *testing.T) {
	ctx := context.Background()
	st := quietStore(t, store.Options{})
	rt := &gatedRuntime{Runtime: luavm.NewRuntime(luavm.Options{Logger: slog.New(slog.DiscardHandler)}), name: "slow",
		entered: make(chan struct{}), gate: make(chan struct{})}
	fn := func(name string, v int64, stream string, topic string) *Function {
		return &Function{Name: name, Version: v, Fingerprint: fmt.Sprint(name, v), Stream: stream,
			Patterns: []*trigger.Pattern{trigger.MustParsePattern(topic)},
			Spec:     luavm.Spec{Source: []byte(fmt.Sprintf(`function handle(e, ctx) return {v = %d} end`, v))}}
	}
	g := runGateway(t, Options{Store: st, Runtime: rt}, fn("a", 1, "s1", "t/{device}"), fn("slow", 1, "x", "u/{device}"))
	deployed := make(chan error, 1)
	go func() {
		deployed <- g.SetFunctions(ctx, []*Function{fn("a", 2, "s2", "t/{device}"), fn("slow", 2, "x", "u/{device}")})
	}()
	<-rt.entered // a runs version 2; the table still routes version 1
	if err := g.handle(ctx, &mqtt.Message{Topic: "t/d1", Payload: []byte(`1`), QoS: 1, ClientID: "d1", PacketID: 1}); err != nil {
		t.Fatal(err)
	}
	var got []store.Record
	waitFor(t, 10*time.Second, "a's record", func() bool {
		got = nil
		for _, s := range []string{"s1", "s2"} {
			recs, _, err := st.QueryRecords(ctx, store.Query{Stream: s, Limit: 10})
			if err != nil {
				t.Fatal(err)
			}
			got = append(got, recs...)
		}
		return len(got) == 1
	})
	close(rt.gate)
	if err := <-deployed; err != nil {
		t.Fatal(err)
	}
	if r := got[0]; r.Stream != "s2" || string(r.Data) != `{"v":2}` {
		t.Fatalf("record %s in stream %q, want version 2's in s2", r.Data, r.Stream)
	}
}

// A daemon that starts while its functions directory cannot be read (not
// mounted yet, being replaced) runs the versions stored from it until the
// watcher can load it: the events queued for it at the broker while it was
// down are run, not acknowledged as unmatched and dropped.
func TestUnreadableFunctionsDirAtStartRunsStored(t *testing.T) {
	m := mqtttest.StartMosquitto(t)
	dataDir, base := t.TempDir(), t.TempDir()
	fnDir := filepath.Join(base, "functions")
	if err := os.MkdirAll(fnDir, 0o755); err != nil {
		t.Fatal(err)
	}
	writeFunction(t, fnDir, "count", countLua, referenceManifest)
	cfg := testConfig(dataDir, fnDir, externalMQTT(m.URL(), "moongate-dir"))
	p := startInProcess(t, cfg) // subscribes (persistent session), stores the function
	p.stop(t)

	// Down: the device publishes; the broker queues for moongate.
	dev := connect(t, m.URL(), "dev01", false)
	const n = 10
	for i := range n {
		publish(t, dev, "devices/dev01/telemetry", 1, []byte(fmt.Sprintf(`{"n":%d}`, i)))
	}
	if err := os.Rename(fnDir, fnDir+".away"); err != nil {
		t.Fatal(err)
	}
	logs := &lockedBuffer{}
	p = startInProcessLog(t, cfg, logs)
	st := p.d.Store()
	waitFor(t, 20*time.Second, "every queued event run by the stored version", func() bool { return len(allRecords(t, st, "count")) == n })
	if !strings.Contains(logs.String(), "running the stored versions") {
		t.Errorf("no log of the fallback:\n%s", logs.String())
	}
	// The directory back: the watcher loads it (same files: same version).
	if err := os.Rename(fnDir+".away", fnDir); err != nil {
		t.Fatal(err)
	}
	writeFunction(t, fnDir, "count", countLua+"\n-- v2\n", referenceManifest)
	waitFor(t, 20*time.Second, "the directory loaded again", func() bool {
		f := p.d.Gateway().Lookup("count")
		return f != nil && f.Version == 2
	})
}

// TestNotReadyWhileStoreRefuses: /readyz (and the ready gauge) say not
// ready, with the reason, while the store refuses writes: a disk below its
// reserve here (an impossible reserve). It answered 200 while every
// publish was refused.
func TestNotReadyWhileStoreRefuses(t *testing.T) {
	cfg := fmt.Sprintf("gateway_id: test\ndata_dir: %q\nlog: {level: error}\nmqtt:\n  embedded: {listen: \"127.0.0.1:0\"}\napi: {listen: \"127.0.0.1:0\"}\nstore: {durability: always, disk_reserve: 1000TiB}\n", t.TempDir())
	p := startInProcess(t, cfg)
	base := "http://" + p.d.HTTPAddr().String()
	code, body := httpGet(t, base+"/readyz")
	if code != http.StatusServiceUnavailable || !strings.Contains(body, "disk space below reserve") {
		t.Fatalf("/readyz: %d %q, want 503 naming the full disk", code, body)
	}
	if code, _ := httpGet(t, base+"/healthz"); code != http.StatusOK {
		t.Fatalf("/healthz: %d, want 200 (the process is alive)", code)
	}
	_, m := httpGet(t, base+"/metrics")
	if !strings.Contains(m, "\nmoongate_ready 0\n") {
		t.Errorf("metrics do not say not ready:\n%s", m)
	}
}

// TestUploadTriggerUnknownBucketWarned: a function whose upload trigger
// names a bucket that is not configured deploys (the bucket may come with
// the next configuration) but says so in the log; it deployed silently.
func TestUploadTriggerUnknownBucketWarned(t *testing.T) {
	dataDir, fnDir := t.TempDir(), t.TempDir()
	writeFunction(t, fnDir, "onphoto", `function handle(e) return nil end`, "triggers:\n  - upload: {bucket: fotos, name: \"*.jpg\"}\n")
	logs := &lockedBuffer{}
	startInProcessLog(t, testConfig(dataDir, fnDir, ""), logs)
	if !logsMention(logs.String(), "upload trigger on a bucket that is not configured", "bucket=fotos") {
		t.Fatalf("no warning of the unknown bucket:\n%s", logs.String())
	}
}
