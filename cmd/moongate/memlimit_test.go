package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"math"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/moongate-edge/moongate/gateway/config"
)

// logLines is a concurrency-safe buffer of JSON log lines.
type logLines struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (l *logLines) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.Write(p)
}

// records returns the log records whose msg starts with prefix.
func (l *logLines) records(t *testing.T, prefix string) []map[string]any {
	t.Helper()
	l.mu.Lock()
	defer l.mu.Unlock()
	var out []map[string]any
	for _, line := range strings.Split(strings.TrimSpace(l.buf.String()), "\n") {
		if line == "" {
			continue
		}
		var m map[string]any
		if err := json.Unmarshal([]byte(line), &m); err != nil {
			t.Fatalf("log line %q: %v", line, err)
		}
		if msg, _ := m["msg"].(string); strings.HasPrefix(msg, prefix) {
			out = append(out, m)
		}
	}
	return out
}

func jsonLogger(w io.Writer) *slog.Logger { return slog.New(slog.NewJSONHandler(w, nil)) }

func parseCfg(t *testing.T, src string) *config.Config {
	t.Helper()
	c, err := config.Parse("m.yaml", []byte(src))
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func TestApplyMemoryLimit(t *testing.T) {
	saved := debug.SetMemoryLimit(-1)
	t.Cleanup(func() { debug.SetMemoryLimit(saved) })
	noEnv := func(string) (string, bool) { return "", false }
	cases := []struct {
		name      string
		cfg       string
		env       func(string) (string, bool)
		runtime   int64 // the limit before the call (what GOMEMLIMIT gave the runtime)
		want      int64 // the runtime's limit after the call, MaxInt64 = none
		source    string
		logLimit  string
		logConfig string // the memory_limit attribute of the log, "" = absent
	}{
		{"default: auto with low-memory", "", noEnv, math.MaxInt64, 24 << 20, "memory_limit", "24MiB", "auto (store profile low-memory)"},
		{"auto with large: none", "store: {profile: large}\n", noEnv, 64 << 20, math.MaxInt64, "memory_limit", "off", "auto (store profile large)"},
		{"a size", "memory_limit: 40MiB\n", noEnv, math.MaxInt64, 40 << 20, "memory_limit", "40MiB", ""},
		{"off clears a limit", "memory_limit: off\n", noEnv, 32 << 20, math.MaxInt64, "memory_limit", "off", ""},
		{"an empty GOMEMLIMIT does not count", "memory_limit: 48MiB\n", func(k string) (string, bool) { return "", k == envMemoryLimit }, math.MaxInt64, 48 << 20, "memory_limit", "48MiB", ""},
		{"GOMEMLIMIT wins", "memory_limit: 48MiB\n", func(k string) (string, bool) { return "40MiB", k == envMemoryLimit }, 40 << 20, 40 << 20, "GOMEMLIMIT", "40MiB", "48MiB (not applied: GOMEMLIMIT is set)"},
		{"GOMEMLIMIT=off wins over auto", "", func(k string) (string, bool) { return "off", k == envMemoryLimit }, math.MaxInt64, math.MaxInt64, "GOMEMLIMIT", "off", "auto (not applied: GOMEMLIMIT is set)"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			debug.SetMemoryLimit(tc.runtime)
			var logs logLines
			l := applyMemoryLimit(parseCfg(t, tc.cfg), tc.env, jsonLogger(&logs))
			if got := debug.SetMemoryLimit(-1); got != tc.want {
				t.Errorf("runtime limit %d, want %d", got, tc.want)
			}
			wantBytes := tc.want
			if wantBytes == math.MaxInt64 {
				wantBytes = 0
			}
			if l.bytes != wantBytes || l.source != tc.source {
				t.Errorf("applyMemoryLimit = %+v, want %d from %s", l, wantBytes, tc.source)
			}
			recs := logs.records(t, "memory limit")
			if len(recs) != 1 {
				t.Fatalf("%d memory limit log lines:\n%s", len(recs), logs.buf.String())
			}
			r := recs[0]
			if r["limit"] != tc.logLimit || r["source"] != tc.source {
				t.Errorf("log %v: want limit %s source %s", r, tc.logLimit, tc.source)
			}
			if got, _ := r["memory_limit"].(string); got != tc.logConfig {
				t.Errorf("log memory_limit %q, want %q", got, tc.logConfig)
			}
		})
	}
}

func TestGCPressure(t *testing.T) {
	base := gcSample{gc: 10, user: 100}
	cases := []struct {
		name     string
		gc, user float64 // deltas over 30 s
		share    float64
		warn     bool
	}{
		{"the default limit at 1,000 events/s", 0.8, 7.2, 0.1, false},
		{"a tight limit", 3, 7, 0.3, true},
		{"exactly the threshold", 2.5, 7.5, 0.25, true},
		{"thrashing", 27, 11.57, 0.7, true},
		{"idle: a large share of almost nothing", 0.3, 0.1, 0.75, false},
		{"no collection", 0, 5, 0, false},
		{"counters went back (never happens)", -1, 5, 0, false},
	}
	for _, tc := range cases {
		cur := gcSample{gc: base.gc + tc.gc, user: base.user + tc.user}
		share, warn := gcPressure(base, cur, 30*time.Second)
		if math.Abs(share-tc.share) > 0.005 || warn != tc.warn {
			t.Errorf("%s: share %.3f warn %v, want %.2f %v", tc.name, share, warn, tc.share, tc.warn)
		}
	}
}

// fakeGC feeds watchGC samples in which collection takes gcPerTick of
// every tick's userPerTick+gcPerTick seconds, and signals each read.
type fakeGC struct {
	mu                  sync.Mutex
	cur                 gcSample
	gcPerTick, userTick float64
	reads               chan struct{}
}

func (f *fakeGC) read() (gcSample, bool) {
	f.mu.Lock()
	s := f.cur
	f.cur.gc += f.gcPerTick
	f.cur.user += f.userTick
	f.cur.live = 21 << 20
	f.mu.Unlock()
	select {
	case f.reads <- struct{}{}:
	default:
	}
	return s, true
}

func runWatch(t *testing.T, l memoryLimit, f *fakeGC, quiet time.Duration, reads int) []map[string]any {
	t.Helper()
	var logs logLines
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		watchGC(ctx, l, jsonLogger(&logs), time.Millisecond, quiet, f.read)
	}()
	if l.bytes > 0 {
		for range reads {
			select {
			case <-f.reads:
			case <-time.After(10 * time.Second):
				t.Fatal("watchGC stopped reading")
			}
		}
	}
	cancel()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("watchGC did not return when its context ended")
	}
	return logs.records(t, "garbage collection")
}

func TestWatchGC(t *testing.T) {
	limit := memoryLimit{bytes: 24 << 20, source: "memory_limit"}
	// Heavy collection on every tick: one warning, then quiet.
	heavy := func() *fakeGC { return &fakeGC{gcPerTick: 0.004, userTick: 0.006, reads: make(chan struct{})} }
	recs := runWatch(t, limit, heavy(), time.Hour, 20)
	if len(recs) != 1 {
		t.Fatalf("%d warnings in 20 heavy ticks with a quiet period of 1h, want 1: %v", len(recs), recs)
	}
	r := recs[0]
	if !strings.HasSuffix(r["msg"].(string), "raise memory_limit") || r["gc_share"] != 0.4 || r["limit"] != "24MiB" || r["live_heap"] != "21.0MiB" || r["level"] != "WARN" {
		t.Errorf("warning %v", r)
	}
	// Without a quiet period every heavy tick warns; the knob named is the
	// one in effect.
	recs = runWatch(t, memoryLimit{bytes: 40 << 20, source: envMemoryLimit}, heavy(), 0, 5)
	if len(recs) < 3 || !strings.HasSuffix(recs[0]["msg"].(string), "raise GOMEMLIMIT") {
		t.Fatalf("%d warnings in 5 heavy ticks without a quiet period: %v", len(recs), recs)
	}
	// With auto, the advice is a fixed size or off (raising "auto" means
	// nothing).
	recs = runWatch(t, memoryLimit{bytes: 24 << 20, source: "memory_limit", auto: true}, heavy(), time.Hour, 3)
	if len(recs) != 1 || !strings.HasSuffix(recs[0]["msg"].(string), "set memory_limit to a size of about twice the live heap, or off") {
		t.Fatalf("auto: warnings %v", recs)
	}
	// Light collection: nothing.
	if recs := runWatch(t, limit, &fakeGC{gcPerTick: 0.001, userTick: 0.01, reads: make(chan struct{})}, 0, 20); len(recs) != 0 {
		t.Fatalf("warnings for a 9%% share: %v", recs)
	}
	// No limit: the watch does not run (the collector then is not what
	// the limit forces).
	f := heavy()
	if recs := runWatch(t, memoryLimit{source: "memory_limit"}, f, 0, 0); len(recs) != 0 {
		t.Fatalf("warnings without a limit: %v", recs)
	}
	if f.cur.gc != 0 {
		t.Fatal("watchGC read samples without a limit")
	}
}

// The runtime has the metrics the watch and /metrics read.
func TestGCSampleMetricsExist(t *testing.T) {
	runtime.GC() // the processor-time and live-heap metrics are updated by collections
	s, ok := readGCSample()
	if !ok {
		t.Fatalf("runtime metrics %v missing", gcMetrics)
	}
	if s.user <= 0 || s.live == 0 || s.overhead == 0 || s.overhead > 1<<30 {
		t.Fatalf("implausible sample %+v", s)
	}
}

// serveMemoryLimit starts the built binary with a plain-HTTP API on
// loopback and returns the "memory limit" log record and the value of
// moongate_go_memory_limit_bytes from /metrics.
func serveMemoryLimit(t *testing.T, bin, dir, cfgExtra string, env ...string) (map[string]any, float64) {
	t.Helper()
	cfgPath := filepath.Join(dir, "config.yaml")
	writeFile(t, cfgPath, fmt.Sprintf("data_dir: %q\nlog: {format: json}\nmqtt: {embedded: {listen: \"127.0.0.1:0\"}}\napi: {listen: \"127.0.0.1:0\"}\n%s",
		filepath.Join(dir, "data"), cfgExtra))
	cmd := exec.Command(bin, "serve", "--config", cfgPath)
	cmd.Env = append([]string{"PATH=" + os.Getenv("PATH")}, env...)
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	var logs logLines
	api := make(chan string, 1)
	scanned := make(chan struct{})
	go func() {
		defer close(scanned)
		sc := bufio.NewScanner(stderr)
		for sc.Scan() {
			_, _ = logs.Write(append(sc.Bytes(), '\n'))
			var l struct{ Msg, Addr string }
			if json.Unmarshal(sc.Bytes(), &l) == nil && l.Msg == "api listening" {
				api <- l.Addr
			}
		}
	}()
	defer func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		<-scanned
		if err := cmd.Wait(); err != nil {
			t.Errorf("serve exited with %v\n%s", err, logs.buf.String())
		}
	}()
	var addr string
	select {
	case addr = <-api:
	case <-scanned:
		t.Fatalf("serve exited before listening\n%s", logs.buf.String())
	case <-time.After(30 * time.Second):
		t.Fatalf("serve did not listen\n%s", logs.buf.String())
	}
	// Stopped only once ready, so that the daemon is the one measured.
	for deadline := time.Now().Add(30 * time.Second); ; {
		resp, err := http.Get("http://" + addr + "/readyz")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				break
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("serve not ready: %v\n%s", err, logs.buf.String())
		}
		time.Sleep(5 * time.Millisecond)
	}
	resp, err := http.Get("http://" + addr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	body, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil {
		t.Fatal(err)
	}
	value := math.NaN()
	for _, line := range strings.Split(string(body), "\n") {
		if v, ok := strings.CutPrefix(line, "moongate_go_memory_limit_bytes "); ok {
			if value, err = strconv.ParseFloat(v, 64); err != nil {
				t.Fatalf("metrics line %q: %v", line, err)
			}
		}
	}
	recs := logs.records(t, "memory limit")
	if len(recs) != 1 {
		t.Fatalf("%d memory limit log lines\n%s", len(recs), logs.buf.String())
	}
	return recs[0], value
}

// The daemon applies memory_limit, GOMEMLIMIT wins, and /metrics shows the
// limit in effect.
func TestServeMemoryLimit(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the binary and starts daemons")
	}
	tmp := t.TempDir()
	bin := buildBinary(t, tmp)
	cases := []struct {
		name, cfg string
		env       []string
		limit     float64
		source    string
	}{
		{"default", "", nil, 24 << 20, "memory_limit"},
		{"a size", "memory_limit: 48MiB\n", nil, 48 << 20, "memory_limit"},
		{"off", "memory_limit: off\n", nil, 0, "memory_limit"},
		{"GOMEMLIMIT wins", "memory_limit: 48MiB\n", []string{"GOMEMLIMIT=40MiB"}, 40 << 20, "GOMEMLIMIT"},
	}
	for i, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			rec, got := serveMemoryLimit(t, bin, filepath.Join(tmp, strconv.Itoa(i)), tc.cfg, tc.env...)
			if got != tc.limit || rec["source"] != tc.source {
				t.Fatalf("/metrics limit %v, log %v; want %v from %s", got, rec, tc.limit, tc.source)
			}
		})
	}
	// A bad value: serve refuses to start and names the key.
	dir := filepath.Join(tmp, "bad")
	writeFile(t, filepath.Join(dir, "config.yaml"), "memory_limit: 4MiB\n")
	out, err := exec.Command(bin, "serve", "--config", filepath.Join(dir, "config.yaml")).CombinedOutput()
	if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != exitFailure ||
		!strings.Contains(string(out), "config.yaml:1: memory_limit: 4MiB is below the minimum of 16MiB") {
		t.Fatalf("serve with memory_limit 4MiB: %v\n%s", err, out)
	}
}

func TestMemProfileRate(t *testing.T) {
	def := runtime.MemProfileRate
	if def == 0 {
		t.Fatal("the test binary runs without heap profiling")
	}
	cases := []struct {
		args []string
		want int
	}{
		{nil, 0},
		{[]string{"serve"}, 0},
		{[]string{"serve", "--config", "c.yaml"}, 0},
		{[]string{"serve", "--debug-listen", "127.0.0.1:6060"}, def},
		{[]string{"serve", "--config", "c.yaml", "-debug-listen=127.0.0.1:6060"}, def},
		{[]string{"serve", "--", "--debug-listen"}, 0},
		{[]string{"serve", "--debug-listener", "x"}, 0},
		{[]string{"fn", "list", "--debug-listen", "x"}, 0},
		{[]string{"version"}, 0},
	}
	for _, tc := range cases {
		if got := memProfileRate(tc.args); got != tc.want {
			t.Errorf("memProfileRate(%q) = %d, want %d", tc.args, got, tc.want)
		}
	}
}

func TestAutoLimit(t *testing.T) {
	const mib = 1 << 20
	for _, c := range []struct {
		live, overhead uint64
		want           int64
	}{
		{0, 0, 24 * mib},
		{10 * mib, 3 * mib, 24 * mib},
		{16 * mib, 0, 24 * mib},          // 1.5 x 16 = the floor
		{14 * mib, 4 * mib, 25 * mib},    // the runtime's overhead counts too
		{20 * mib, 0, 30 * mib},          // above the floor: 1.5 x live
		{20*mib + 1, 0, 31 * mib},        // rounded up to a whole MiB
		{200 * mib, 10 * mib, 310 * mib}, // no ceiling: MemoryMax is the hard bound
	} {
		if got := autoLimit(24*mib, c.live, c.overhead); got != c.want {
			t.Errorf("autoLimit(24MiB, %d, %d) = %d, want %d", c.live, c.overhead, got, c.want)
		}
	}
}

// runFollow runs followLiveHeap with interval 1ms until read reports
// false, and returns the limits it set. next is called under a lock.
func runFollow(t *testing.T, l memoryLimit, window int, next func() (gcSample, bool), now func() time.Time) []int64 {
	t.Helper()
	var (
		mu   sync.Mutex
		sets []int64
	)
	read := func() (gcSample, bool) { mu.Lock(); defer mu.Unlock(); return next() }
	set := func(b int64) int64 { mu.Lock(); sets = append(sets, b); mu.Unlock(); return 0 }
	lockedNow := func() time.Time { mu.Lock(); defer mu.Unlock(); return now() }
	done := make(chan struct{})
	go func() {
		defer close(done)
		followLiveHeap(context.Background(), l, jsonLogger(io.Discard), time.Millisecond, window, nil, read, set, lockedNow)
	}()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("followLiveHeap did not return when its reads ended")
	}
	mu.Lock()
	defer mu.Unlock()
	return sets
}

// With auto, the limit follows the live heap up and back down to the
// floor; with an explicit size or GOMEMLIMIT it is never touched.
func TestFollowLiveHeap(t *testing.T) {
	const mib = 1 << 20
	lives := []uint64{10 * mib, 30 * mib, 30*mib + 100, 80 * mib, 12 * mib, 12 * mib}
	run := func(l memoryLimit, window int) []int64 {
		i := 0
		return runFollow(t, l, window, func() (gcSample, bool) {
			if i == len(lives) {
				return gcSample{}, false // ends the loop
			}
			i++
			return gcSample{live: lives[i-1]}, true
		}, time.Now)
	}
	auto := memoryLimit{bytes: 24 * mib, source: "memory_limit", auto: true}
	got := run(auto, 1)
	want := []int64{45 * mib, 120 * mib, 24 * mib}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("window 1: limits set %v, want %v", got, want)
	}
	// With a window of two samples the limit comes down only once both
	// are small; it goes up at once when the live heap reaches it (30 MiB
	// under 24, 80 under 45), and is held until the window has forgotten
	// the smaller samples.
	got = run(auto, 2)
	want = []int64{45 * mib, 120 * mib, 24 * mib}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("window 2: limits set %v, want %v", got, want)
	}
	// Back to the floor even from a MiB above it.
	lives = []uint64{30 * mib, 16*mib + mib/2, 10 * mib}
	got = run(auto, 1)
	want = []int64{45 * mib, 25 * mib, 24 * mib}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("back to the floor: limits set %v, want %v", got, want)
	}
	for _, l := range []memoryLimit{{bytes: 24 * mib, source: "memory_limit"}, {bytes: 40 * mib, source: envMemoryLimit}, {source: "memory_limit", auto: true}} {
		if got := run(l, 1); len(got) != 0 {
			t.Fatalf("%+v: limits set %v, want none", l, got)
		}
	}
}

// While collection takes a large share of the processor the limit is
// raised to twice the live heap, and held autoBoostHold after the share
// last was large; then it follows the window again.
func TestFollowLiveHeapBoost(t *testing.T) {
	const mib = 1 << 20
	t0 := time.Unix(1_000_000, 0)
	i, clock := 0, t0
	const samples = 14
	sets := runFollow(t, memoryLimit{bytes: 24 * mib, source: "memory_limit", auto: true}, 8, func() (gcSample, bool) {
		if i == samples {
			return gcSample{}, false
		}
		i++
		if i > 12 {
			clock = t0.Add(3 * autoBoostHold) // long after the share was last large
		}
		// Collection takes half of the processor time up to sample 8, then
		// none; 20 MiB live all along. Over 4 samples the share is at
		// least 0.25 up to sample 10 (0.2 at 11).
		return gcSample{gc: float64(min(i, 8)) * 0.01, user: float64(i) * 0.01, live: 20 * mib}, true
	}, func() time.Time { return clock })
	// 1.5 x 20 at once; 2 x 20 from sample 5 (the first with 4 samples
	// before it); 1.5 x 20 again once the hold is over.
	want := []int64{30 * mib, 40 * mib, 30 * mib}
	if fmt.Sprint(sets) != fmt.Sprint(want) {
		t.Fatalf("limits set %v, want %v", sets, want)
	}
}

// After a collection, a live heap that has (nearly) reached the limit raises
// it at once, without waiting for the window's samples.
func TestFollowLiveHeapPress(t *testing.T) {
	const mib = 1 << 20
	lives := []uint64{10 * mib, 21 * mib, 22 * mib, 30 * mib}
	var (
		mu   sync.Mutex
		sets []int64
		i    int
	)
	read := func() (gcSample, bool) {
		mu.Lock()
		defer mu.Unlock()
		if i == len(lives) {
			return gcSample{}, false
		}
		i++
		return gcSample{live: lives[i-1]}, true
	}
	set := func(b int64) int64 { mu.Lock(); sets = append(sets, b); mu.Unlock(); return 0 }
	wake := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		// No tick within the test: only the collections wake it.
		followLiveHeap(context.Background(), memoryLimit{bytes: 24 * mib, source: "memory_limit", auto: true}, jsonLogger(io.Discard),
			time.Hour, 8, wake, read, set, time.Now)
	}()
	for range len(lives) + 1 { // the last read ends the loop
		select {
		case wake <- struct{}{}:
		case <-done:
			t.Fatal("followLiveHeap returned early")
		}
	}
	<-done
	// 10: room enough. 21 x 1.2 reaches 24: 1.5 x 21. 22 x 1.2 is under
	// 32. 30 x 1.2 reaches 32: 1.5 x 30.
	if want := []int64{32 * mib, 45 * mib}; fmt.Sprint(sets) != fmt.Sprint(want) {
		t.Fatalf("limits set %v, want %v", sets, want)
	}
}

// gcCycles signals the end of collections.
func TestGCCycles(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	ch := gcCycles(ctx)
	for n := 0; n < 3; n++ {
		runtime.GC()
		select {
		case <-ch:
		case <-time.After(10 * time.Second):
			t.Fatalf("no signal after collection %d", n+1)
		}
	}
}

// TestMemoryCeiling: the ceiling is 80 % of the tightest of the cgroup's
// memory.high and memory.max and the machine's RAM; "max" and missing
// files do not count.
func TestMemoryCeiling(t *testing.T) {
	const mib = 1 << 20
	files := map[string]string{
		"/proc/self/cgroup": "0::/system.slice/moongate.service\n",
		"/sys/fs/cgroup/system.slice/moongate.service/memory.high": "134217728\n",
		"/sys/fs/cgroup/system.slice/moongate.service/memory.max":  "167772160\n",
		"/proc/meminfo": "MemTotal:         437368 kB\nMemFree:  1000 kB\n",
	}
	read := func(p string) ([]byte, error) {
		if v, ok := files[p]; ok {
			return []byte(v), nil
		}
		return nil, os.ErrNotExist
	}
	share := ceilingShare // a variable: the constant product is not an integer
	if got, want := memoryCeiling(read), int64(float64(128*mib)*share)/mib*mib; got != want {
		t.Errorf("unit limits (MemoryHigh=128M MemoryMax=160M): ceiling %d, want %d", got, want)
	}
	files["/sys/fs/cgroup/system.slice/moongate.service/memory.high"] = "max\n"
	files["/sys/fs/cgroup/system.slice/moongate.service/memory.max"] = "max\n"
	if got, want := memoryCeiling(read), int64(float64(437368<<10)*share)/mib*mib; got != want {
		t.Errorf("no cgroup limit: ceiling %d, want 80%% of MemTotal %d", got, want)
	}
	if got := memoryCeiling(func(string) ([]byte, error) { return nil, os.ErrNotExist }); got != 0 {
		t.Errorf("nothing readable: ceiling %d, want 0", got)
	}
	if got := memoryCeiling(os.ReadFile); got <= 0 {
		t.Errorf("this machine: ceiling %d, want its RAM's share at least", got)
	}
}

// TestFollowLiveHeapCeiling: the limit follows the live heap up to the
// ceiling and no further (a soft limit above the unit's MemoryHigh would
// only let the heap grow into throttling and the OOM killer).
func TestFollowLiveHeapCeiling(t *testing.T) {
	const mib = 1 << 20
	lives := []uint64{10 * mib, 30 * mib, 80 * mib, 12 * mib}
	i := 0
	got := runFollow(t, memoryLimit{bytes: 24 * mib, source: "memory_limit", auto: true, ceiling: 100 * mib}, 1, func() (gcSample, bool) {
		if i == len(lives) {
			return gcSample{}, false
		}
		i++
		return gcSample{live: lives[i-1]}, true
	}, time.Now)
	if want := []int64{45 * mib, 100 * mib, 24 * mib}; fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("limits set %v, want %v (120 MiB capped at the 100 MiB ceiling)", got, want)
	}
}
