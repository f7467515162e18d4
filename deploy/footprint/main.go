// Command footprint measures what moongate costs on a gateway with its
// default configuration and the reference function: the start-up time to
// ready (GET /readyz answers 200), the resident memory when idle, and the
// resident memory while devices publish at a fixed rate (1,000 events/s by
// default, QoS 1). It runs a real `moongate serve` process, natively or
// under qemu-user (-qemu qemu-aarch64: figures are then emulated ones:
// slower start, and the RSS of the qemu process, which adds the emulator
// and its translated code to moongate's own memory).
//
//	go run ./deploy/footprint -bin dist/moongate-linux-amd64
//	go run ./deploy/footprint -bin dist/moongate-linux-arm64 -qemu qemu-aarch64
//
// After the load phase it waits (-drain) until the function has committed
// every acknowledged event, so that the table tells whether processing kept
// up, and reports the processor time of the daemon from the load's start
// to the last commit per 1,000 records (of which garbage collection, from
// /metrics), the Go memory limit the daemon logged, and the sizes of
// Badger's files. -env adds environment variables (GOMEMLIMIT=...,
// GODEBUG=gctrace=1 with -log FILE); -config appends YAML to the
// configuration ("memory_limit: off"); -profile DIR starts the daemon with
// --debug-listen on loopback and saves its heap profile at the end of the
// load phase (go tool pprof -sample_index=inuse_space BIN DIR/heap.pb.gz).
//
// `make footprint` runs both binaries, each with the default configuration
// and with memory_limit: off. It prints one Markdown table per run.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"

	"github.com/moongate-edge/moongate/deploy/internal/gwproc"
	"github.com/moongate-edge/moongate/store"
)

type options struct {
	bin, qemu, functions string
	starts               int
	idle, load           time.Duration
	rate, devices        int
	extraConfig, logFile string
	profileDir           string
	drain                time.Duration
	env                  []string
}

func main() {
	var o options
	flag.StringVar(&o.bin, "bin", "", "moongate binary (required), e.g. dist/moongate-linux-amd64")
	flag.StringVar(&o.qemu, "qemu", "", "run the binary under this emulator (qemu-aarch64, qemu-arm)")
	flag.StringVar(&o.functions, "functions", "docs/examples/functions", "directory holding reference.lua and reference.yaml")
	flag.IntVar(&o.starts, "starts", 7, "start-ups measured (median reported)")
	flag.DurationVar(&o.idle, "idle", 10*time.Second, "time idle before the idle sample")
	flag.DurationVar(&o.load, "load", 30*time.Second, "duration of the load phase")
	flag.IntVar(&o.rate, "rate", 1000, "events per second in the load phase")
	flag.IntVar(&o.devices, "devices", 10, "simulated devices sharing the rate")
	flag.StringVar(&o.extraConfig, "config", "", "extra YAML appended to the configuration (e.g. \"store:\\n  profile: large\\n\")")
	flag.StringVar(&o.logFile, "log", "", "write the daemons' output (log, GODEBUG traces) to this file")
	flag.StringVar(&o.profileDir, "profile", "", "start the daemon with --debug-listen on loopback and save its heap profile (and runtime.MemStats) at the end of the load phase in this directory")
	flag.DurationVar(&o.drain, "drain", 2*time.Minute, "longest wait, after the load phase, for the function to commit every acknowledged event")
	flag.Func("env", "an extra environment variable for the daemon, e.g. GOMEMLIMIT=96MiB (repeatable)", func(v string) error {
		if !strings.Contains(v, "=") {
			return errors.New("want NAME=VALUE")
		}
		o.env = append(o.env, v)
		return nil
	})
	flag.Parse()
	if o.bin == "" || o.rate < 1 || o.devices < 1 || o.starts < 1 {
		flag.Usage()
		os.Exit(2)
	}
	if err := measure(o); err != nil {
		fmt.Fprintln(os.Stderr, "footprint:", err)
		os.Exit(1)
	}
}

func mib(b int64) string { return fmt.Sprintf("%.1f MiB", float64(b)/(1<<20)) }

func measure(o options) error {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	cmd := []string{o.bin}
	where := "native " + runtime.GOARCH
	if o.qemu != "" {
		q, err := exec.LookPath(o.qemu)
		if err != nil {
			return err
		}
		cmd = []string{q, o.bin}
		where = "emulated (" + o.qemu + ")"
	}
	version, err := exec.Command(cmd[0], append(cmd[1:], "version")...).Output()
	if err != nil {
		return fmt.Errorf("%s version: %w", o.bin, err)
	}
	work, err := os.MkdirTemp("", "moongate-footprint-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(work)
	fdir := filepath.Join(work, "functions")
	if err := os.Mkdir(fdir, 0o755); err != nil {
		return err
	}
	for _, f := range []string{"reference.lua", "reference.yaml"} {
		b, err := os.ReadFile(filepath.Join(o.functions, f))
		if err != nil {
			return err
		}
		if err := os.WriteFile(filepath.Join(fdir, f), b, 0o644); err != nil {
			return err
		}
	}
	var logw io.Writer
	if o.logFile != "" {
		f, err := os.Create(o.logFile)
		if err != nil {
			return err
		}
		defer f.Close()
		logw = &lockedWriter{w: f}
	}
	opts := func(data string) gwproc.Options {
		return gwproc.Options{Command: cmd, DataDir: filepath.Join(work, data), FunctionsDir: fdir,
			ConfigPath: filepath.Join(work, "config.yaml"), ExtraConfig: o.extraConfig, Env: o.env, Log: logw}
	}
	if o.profileDir != "" {
		if err := os.MkdirAll(o.profileDir, 0o755); err != nil {
			return err
		}
	}

	// Start-up: the first start creates the data directory; the others
	// open it, as every boot of a gateway does.
	var ready []time.Duration
	for i := 0; i < o.starts; i++ {
		p, err := gwproc.Start(ctx, opts("startup"))
		if err != nil {
			return err
		}
		ready = append(ready, p.ReadyAfter())
		if err := p.Stop(ctx); err != nil {
			return err
		}
	}
	first := ready[0]
	rest := slices.Clone(ready[1:])
	slices.Sort(rest)
	if len(rest) == 0 {
		rest = []time.Duration{first}
	}

	// Idle, then load, in one process.
	lo := opts("load")
	if o.profileDir != "" {
		lo.Args = []string{"--debug-listen", "127.0.0.1:0"}
	}
	p, err := gwproc.Start(ctx, lo)
	if err != nil {
		return err
	}
	defer p.Kill()
	select {
	case <-time.After(o.idle):
	case <-ctx.Done():
		return ctx.Err()
	}
	idle, err := p.Memory()
	if err != nil {
		return err
	}
	cpuBefore, err := p.CPU()
	if err != nil {
		return err
	}
	startMetrics, err := metrics(ctx, p)
	if err != nil {
		return err
	}
	ld, err := load(ctx, p, o)
	if err != nil {
		return err
	}
	// The function may lag behind the inbox: wait until it has committed
	// every acknowledged event (or o.drain has passed), and count the
	// processor time of the whole work, intake and function.
	endMetrics, err := metrics(ctx, p)
	if err != nil {
		return err
	}
	committedAtEnd := int64(endMetrics["moongate_invocations_committed_total"])
	files, err := sizesByExt(filepath.Join(work, "load"))
	if err != nil {
		return err
	}
	drainStart := time.Now()
	final := committedAtEnd
	for final < ld.acked && time.Since(drainStart) < o.drain {
		select {
		case <-time.After(100 * time.Millisecond):
		case <-ctx.Done():
			return ctx.Err()
		}
		m, err := metrics(ctx, p)
		if err != nil {
			return err
		}
		final = int64(m["moongate_invocations_committed_total"])
	}
	drained := time.Since(drainStart)
	cpuAfter, err := p.CPU()
	if err != nil {
		return err
	}
	lastMetrics, err := metrics(ctx, p)
	if err != nil {
		return err
	}
	gcSeconds := lastMetrics["moongate_go_gc_cpu_seconds_total"] - startMetrics["moongate_go_gc_cpu_seconds_total"]
	limit := memoryLimit(p.Output())
	if err := p.Stop(ctx); err != nil {
		return err
	}
	records, err := countRecords(ctx, filepath.Join(work, "load"))
	if err != nil {
		return err
	}

	fmt.Printf("moongate footprint: %s, %s", where, version)
	fmt.Printf("machine: %d CPUs, %s; load: %d devices, %d events/s for %v, QoS 1, reference function\n\n",
		runtime.NumCPU(), time.Now().UTC().Format("2006-01-02 15:04 MST"), o.devices, o.rate, o.load)
	fmt.Println("| measure | value |")
	fmt.Println("|---|---|")
	fmt.Printf("| Go memory limit in effect (source) | %s |\n", limit)
	fmt.Printf("| start-up to ready, new data directory | %v |\n", first.Round(time.Millisecond))
	fmt.Printf("| start-up to ready, existing data directory (median of %d; min, max) | %v (%v, %v) |\n", len(rest),
		rest[len(rest)/2].Round(time.Millisecond), rest[0].Round(time.Millisecond), rest[len(rest)-1].Round(time.Millisecond))
	fmt.Printf("| idle RSS after %v (anon + file) | %s (%s + %s) |\n", o.idle, mib(idle.RSS), mib(idle.Anon), mib(idle.File))
	fmt.Printf("| RSS under load: max sample (anon + file at that sample) | %s (%s + %s) |\n", mib(ld.max.RSS), mib(ld.max.Anon), mib(ld.max.File))
	fmt.Printf("| RSS under load: median sample | %s |\n", mib(ld.median))
	fmt.Printf("| peak RSS of the process (VmHWM) | %s |\n", mib(ld.max.HWM))
	fmt.Printf("| events acknowledged (durable) / sent, achieved rate | %d / %d, %.0f events/s |\n", ld.acked, ld.sent, ld.rate)
	fmt.Printf("| data directory at the end of the load phase: tables (.sst), memtable logs (.mem), value log (.vlog) | %s, %s, %s |\n",
		mib(files[".sst"]), mib(files[".mem"]), mib(files[".vlog"]))
	fmt.Printf("| records committed by the function at the end of the load phase | %d |\n", committedAtEnd)
	if final >= ld.acked {
		fmt.Printf("| time after the load phase until every acknowledged event was committed | %v |\n", drained.Round(100*time.Millisecond))
	} else {
		fmt.Printf("| time after the load phase until every acknowledged event was committed | not within %v (%d committed) |\n", o.drain, final)
	}
	fmt.Printf("| records committed by the function (after stop) | %d |\n", records)
	if records > 0 {
		fmt.Printf("| processor time from the load's start to the last commit, per 1,000 records | %.0f ms |\n",
			float64((cpuAfter-cpuBefore).Milliseconds())*1000/float64(records))
		if _, ok := lastMetrics["moongate_go_gc_cpu_seconds_total"]; ok {
			fmt.Printf("| of which garbage collection (the Go runtime's estimate), per 1,000 records | %.0f ms |\n", gcSeconds*1e6/float64(records))
		}
	}
	return nil
}

type loadResult struct {
	sent, acked int64
	rate        float64
	max         gwproc.Memory
	median      int64
}

// load publishes o.rate events per second for o.load from o.devices
// clients (each keeps to its share of the rate and has at most 64
// messages unacknowledged, like a device), sampling the RSS every 250 ms.
func load(ctx context.Context, p *gwproc.Proc, o options) (loadResult, error) {
	var res loadResult
	var sent, acked atomic.Int64
	var firstErr error
	var errOnce sync.Once
	clients := make([]paho.Client, o.devices)
	for i := range clients {
		c := paho.NewClient(paho.NewClientOptions().AddBroker("tcp://" + p.MQTTAddr()).
			SetClientID(fmt.Sprintf("footprint-%d", i)).SetCleanSession(true).SetAutoReconnect(false).
			SetOrderMatters(false).SetKeepAlive(30 * time.Second))
		if tok := c.Connect(); !tok.WaitTimeout(time.Minute) || tok.Error() != nil {
			return res, fmt.Errorf("connect: %v", tok.Error())
		}
		defer c.Disconnect(100)
		clients[i] = c
	}
	lctx, stop := context.WithTimeout(ctx, o.load)
	defer stop()
	var wg sync.WaitGroup
	per := time.Duration(float64(time.Second) * float64(o.devices) / float64(o.rate))
	start := time.Now()
	for i, c := range clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			topic := fmt.Sprintf("devices/pi-%d/telemetry", i)
			inflight := make(chan paho.Token, 64)
			var ackWG sync.WaitGroup
			ackWG.Add(1)
			go func() {
				defer ackWG.Done()
				for tok := range inflight {
					if !tok.WaitTimeout(time.Minute) || tok.Error() != nil {
						errOnce.Do(func() { firstErr = fmt.Errorf("publish: %v", tok.Error()) })
						continue
					}
					acked.Add(1)
				}
			}()
			// Paced by the schedule, not by ticks: a late tick sends what
			// is due, so the rate holds when the scheduler is slow.
			tick := time.NewTicker(per)
			defer tick.Stop()
			n := 0
			for {
				select {
				case <-lctx.Done():
					close(inflight)
					ackWG.Wait()
					return
				case <-tick.C:
				}
				for due := int(time.Since(start) / per); n < due && lctx.Err() == nil; n++ {
					payload := fmt.Sprintf(`{"temp": %d, "hum": %d}`, rand.IntN(100), rand.IntN(100))
					inflight <- c.Publish(topic, 1, false, payload)
					sent.Add(1)
				}
			}
		}()
	}
	var samples []int64
	tick := time.NewTicker(250 * time.Millisecond)
	defer tick.Stop()
sample:
	for {
		select {
		case <-lctx.Done():
			break sample
		case <-tick.C:
			m, err := p.Memory()
			if err != nil {
				return res, err
			}
			samples = append(samples, m.RSS)
			if m.RSS > res.max.RSS {
				res.max = m
			}
		}
	}
	if o.profileDir != "" {
		if err := saveProfiles(ctx, p, o.profileDir); err != nil {
			return res, err
		}
	}
	wg.Wait()
	elapsed := time.Since(start)
	if m, err := p.Memory(); err == nil {
		res.max.HWM = m.HWM
	}
	if firstErr != nil {
		return res, firstErr
	}
	if len(samples) == 0 {
		return res, errors.New("no memory samples")
	}
	slices.Sort(samples)
	res.median = samples[len(samples)/2]
	res.sent, res.acked = sent.Load(), acked.Load()
	res.rate = float64(res.acked) / elapsed.Seconds()
	return res, nil
}

// saveProfiles saves the daemon's heap profile (heap.pb.gz, for go tool
// pprof) and its text form with runtime.MemStats (heap.txt) in dir.
func saveProfiles(ctx context.Context, p *gwproc.Proc, dir string) error {
	addr := p.DebugAddr()
	if addr == "" {
		return errors.New("the daemon did not log its debug listener")
	}
	for file, query := range map[string]string{"heap.pb.gz": "", "heap.txt": "?debug=1"} {
		body, err := get(ctx, "http://"+addr+"/debug/pprof/heap"+query)
		if err != nil {
			return err
		}
		if err := os.WriteFile(filepath.Join(dir, file), body, 0o644); err != nil {
			return err
		}
	}
	return nil
}

// metrics reads the daemon's /metrics: the samples without labels, by
// name. It fails when the counter of committed invocations is missing.
func metrics(ctx context.Context, p *gwproc.Proc) (map[string]float64, error) {
	body, err := get(ctx, "http://"+p.APIAddr()+"/metrics")
	if err != nil {
		return nil, err
	}
	out := map[string]float64{}
	for _, line := range strings.Split(string(body), "\n") {
		name, v, ok := strings.Cut(line, " ")
		if !ok || strings.HasPrefix(line, "#") || strings.Contains(name, "{") {
			continue
		}
		f, err := strconv.ParseFloat(strings.TrimSpace(v), 64)
		if err != nil {
			return nil, fmt.Errorf("/metrics: %q: %w", line, err)
		}
		out[name] = f
	}
	if _, ok := out["moongate_invocations_committed_total"]; !ok {
		return nil, errors.New("/metrics: no moongate_invocations_committed_total")
	}
	return out, nil
}

func get(ctx context.Context, url string) ([]byte, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return nil, err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return nil, err
	}
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("GET %s: %s", url, resp.Status)
	}
	return body, nil
}

// memoryLimit finds the daemon's "memory limit" log line (JSON) in its
// output and describes it: "24MiB (memory_limit)".
func memoryLimit(output string) string {
	for _, line := range strings.Split(output, "\n") {
		var rec struct{ Msg, Limit, Source string }
		if json.Unmarshal([]byte(line), &rec) == nil && rec.Msg == "memory limit" {
			return rec.Limit + " (" + rec.Source + ")"
		}
	}
	return "not logged"
}

// sizesByExt sums the sizes of the files directly in dir by extension
// (Badger's .sst tables, .mem memtable logs, .vlog value-log files).
func sizesByExt(dir string) (map[string]int64, error) {
	ents, err := os.ReadDir(dir)
	if err != nil {
		return nil, err
	}
	out := map[string]int64{}
	for _, e := range ents {
		if !e.Type().IsRegular() {
			continue
		}
		info, err := e.Info()
		if err != nil {
			return nil, err
		}
		out[filepath.Ext(e.Name())] += info.Size()
	}
	return out, nil
}

// countRecords counts the reference stream's records in a stopped
// daemon's data directory.
func countRecords(ctx context.Context, dir string) (int, error) {
	s, err := store.Open(ctx, store.Options{Dir: dir, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		return 0, err
	}
	defer s.Close()
	n := 0
	for cur := ""; ; {
		recs, next, err := s.QueryRecords(ctx, store.Query{Stream: "reference", Limit: store.MaxQueryLimit, Cursor: cur})
		if err != nil {
			return n, err
		}
		n += len(recs)
		if next == "" {
			return n, nil
		}
		cur = next
	}
}

// lockedWriter serialises writes of the daemons' output.
type lockedWriter struct {
	mu sync.Mutex
	w  io.Writer
}

func (l *lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}
