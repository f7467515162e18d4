// Package bench is the end-to-end benchmark of moongate (issue 9), run by
// cmd/moongate-bench: in one invocation on loopback it measures the raw MQTT
// round trip through the broker (the limit), moongate end to end with the
// embedded broker and with an external mosquitto, moongate with records
// synced to an HTTP and an MQTT upstream, cold starts, and the footprint of
// the moongate process, and prints one table.
//
// Every load phase checks for loss: each event a device saw acknowledged
// (QoS 1 PUBACK) must reach every sink of the scenario (the subscriber of
// the results, or the upstreams), counted by device and sequence number,
// and, for moongate scenarios, its record must be in the store after
// moongate stopped. Run returns ErrLoss when one did not.
//
// Nothing here is safe for concurrent use: Run drives one benchmark at a
// time.
package bench

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"time"

	"github.com/moongate-edge/moongate/firmware-examples/devsim"
	"github.com/moongate-edge/moongate/store"
)

// ErrLoss is returned by Run when a scenario lost an acknowledged event.
var ErrLoss = errors.New("bench: acknowledged events lost")

// Options configure Run. The zero value (plus Binary) is the full benchmark.
type Options struct {
	// Binary is the moongate executable (`moongate serve` is run as a
	// child process). Required.
	Binary string
	// Short runs every scenario for a few seconds (CI).
	Short bool
	// Devices is the number of simulated devices per phase (default 64).
	Devices int
	// Inflight is each device's QoS 1 window (default 16).
	Inflight int
	// Phase is the duration of each load phase (default 10s, short 1.5s).
	Phase time.Duration
	// Only, when not empty, runs the scenarios whose name contains one of
	// these substrings.
	Only []string
	// ExtraConfig is YAML appended to every moongate configuration (for
	// example "pipeline: {workers: 32}\n" to compare settings).
	ExtraConfig string
	// Dir is the working directory (default a new temp dir, removed after).
	Dir string
	// Log receives progress lines (default discard).
	Log *slog.Logger
	// Latencies, when not nil, receives every complete event of every load
	// phase: scenario, offered rate, send time and latency, one
	// tab-separated line each (see writeLatencies). Not written to
	// concurrently.
	Latencies io.Writer
}

// BenchFunction is the function moongate runs: the reference transform of
// docs/examples/functions/reference.lua, except that every result is
// published back to its device (the reference publishes only above 80 °C,
// which the simulator never reaches) and carries the event's seq and ts so
// that the benchmark can match it. The publish uses the event's QoS.
const BenchFunction = `-- The reference transform, publishing every result (benchmark variant).
function handle(event, ctx)
  local r = json.decode(event.payload)
  if r.temp == nil then return nil end
  r.temp_f = r.temp * 1.8 + 32
  mqtt.publish("devices/" .. event.device .. "/cmd", json.encode({fan = "on", seq = r.seq, ts = r.ts}), {qos = event.qos})
  return r
end
`

const benchManifest = `description: reference transform, every result published back (benchmark)
triggers:
  - mqtt: devices/{device}/telemetry
limits:
  timeout: 500ms
  max_memory: 4MiB
`

// Row is one line of the table. Durations are milliseconds, sizes bytes.
type Row struct {
	Scenario string `json:"scenario"`
	Broker   string `json:"broker"`
	QoS      int    `json:"qos"`
	// Throughput is the sustained events/s with zero loss; RatioThroughput
	// the same over the raw broker's figure (same broker, same QoS).
	Throughput      float64 `json:"throughput_eps,omitempty"`
	RatioThroughput float64 `json:"throughput_ratio,omitempty"`
	// LatencyRate is the offered rate (events/s) of the latency phase, half
	// of Throughput; P50/P99/Max the latency from the device's send to the
	// end (the subscriber, or the last upstream).
	LatencyRate float64 `json:"latency_rate_eps,omitempty"`
	P50         float64 `json:"p50_ms"`
	P99         float64 `json:"p99_ms"`
	Max         float64 `json:"max_ms"`
	RatioP50    float64 `json:"p50_ratio,omitempty"`
	RatioP99    float64 `json:"p99_ratio,omitempty"`
	// ExactLatency is false when some send times came from the payload's
	// millisecond timestamp instead of the device's send time.
	ExactLatency bool `json:"exact_latency"`
	Samples      int  `json:"samples"`
	// Events counts events checked over all phases, Lost the acknowledged
	// ones missing at a sink or in the store, Dups duplicates received.
	Events int `json:"events"`
	Lost   int `json:"lost"`
	Dups   int `json:"duplicates"`
	// Footprint of the server process (moongate, or mosquitto for raw
	// mosquitto rows) over the throughput phase.
	CPUPer1k     float64 `json:"cpu_ms_per_1k_events,omitempty"`
	DiskPerEvent float64 `json:"disk_bytes_per_event,omitempty"`
	RSSIdle      int64   `json:"rss_idle_bytes,omitempty"`
	RSSPeak      int64   `json:"rss_peak_bytes,omitempty"`
	Note         string  `json:"note,omitempty"`
	Error        string  `json:"error,omitempty"`

	fixed *Row // the latency phase at FixedRate, when run
}

// FixedRate is the offered rate (events/s) of the extra latency phase of the
// embedded QoS 1 scenarios (the "added latency at 5,000 events/s").
const FixedRate = 5000

// Result is the outcome of Run.
type Result struct {
	Date     string  `json:"date"`
	CPU      string  `json:"cpu"`
	Cores    int     `json:"cores"`
	LoadFrom string  `json:"loadavg_start"`
	LoadTo   string  `json:"loadavg_end"`
	Short    bool    `json:"short"`
	Devices  int     `json:"devices"`
	Inflight int     `json:"inflight"`
	PhaseSec float64 `json:"phase_s"`
	Rows     []Row   `json:"rows"`
}

type runner struct {
	opts Options
	dir  string
	log  *slog.Logger
	res  *Result
	n    int // scenario counter, for directories
}

// Run runs the benchmark. It returns the result even when it also returns
// an error (ErrLoss, or the first scenario that could not run).
func Run(ctx context.Context, opts Options) (*Result, error) {
	if opts.Binary == "" {
		return nil, errors.New("bench: Binary is required")
	}
	if opts.Devices == 0 {
		opts.Devices = 64
	}
	if opts.Devices < 1 || opts.Devices > 900 {
		return nil, fmt.Errorf("bench: devices %d: must be 1..900", opts.Devices)
	}
	if opts.Inflight == 0 {
		opts.Inflight = devsim.DefaultMaxInflight
	}
	if opts.Phase == 0 {
		opts.Phase = 10 * time.Second
		if opts.Short {
			opts.Phase = 1500 * time.Millisecond
		}
	}
	if opts.Log == nil {
		opts.Log = slog.New(slog.DiscardHandler)
	}
	r := &runner{opts: opts, log: opts.Log}
	r.dir = opts.Dir
	if r.dir == "" {
		d, err := os.MkdirTemp("", "moongate-bench-")
		if err != nil {
			return nil, err
		}
		defer os.RemoveAll(d)
		r.dir = d
	}
	r.res = &Result{Date: time.Now().UTC().Format(time.RFC3339), CPU: cpuModel(), Cores: runtime.NumCPU(),
		LoadFrom: loadavg(), Short: opts.Short, Devices: opts.Devices, Inflight: opts.Inflight, PhaseSec: opts.Phase.Seconds()}
	var firstErr error
	note := func(err error) {
		if err != nil && firstErr == nil {
			firstErr = err
		}
	}
	raw := map[string]*Row{}
	for _, sc := range scenarios() {
		if !r.selected(sc.name) {
			continue
		}
		if err := ctx.Err(); err != nil {
			return r.res, err
		}
		r.log.Info("scenario", "name", sc.name)
		row, err := r.throughput(ctx, sc)
		if err != nil {
			row.Error = err.Error()
			note(fmt.Errorf("%s: %w", sc.name, err))
		}
		key := sc.broker + fmt.Sprint(sc.qos)
		if sc.kind == kindRaw {
			raw[key] = row
		} else if base := raw[key]; base != nil {
			row.RatioThroughput = ratio(row.Throughput, base.Throughput)
			row.RatioP50 = ratio(row.P50, base.P50)
			row.RatioP99 = ratio(row.P99, base.P99)
			if row.fixed != nil && base.fixed != nil {
				row.fixed.RatioP50 = ratio(row.fixed.P50, base.fixed.P50)
				row.fixed.RatioP99 = ratio(row.fixed.P99, base.fixed.P99)
			}
		}
		if row.Lost > 0 {
			note(fmt.Errorf("%w: %s lost %d", ErrLoss, sc.name, row.Lost))
		}
		r.res.Rows = append(r.res.Rows, *row)
		if row.fixed != nil {
			if row.fixed.Lost > 0 {
				note(fmt.Errorf("%w: %s lost %d", ErrLoss, row.fixed.Scenario, row.fixed.Lost))
			}
			r.res.Rows = append(r.res.Rows, *row.fixed)
		}
	}
	if r.selected("cold") {
		rows, err := r.cold(ctx)
		note(err)
		r.res.Rows = append(r.res.Rows, rows...)
	}
	r.res.LoadTo = loadavg()
	return r.res, firstErr
}

func (r *runner) selected(name string) bool {
	if len(r.opts.Only) == 0 {
		return true
	}
	for _, s := range r.opts.Only {
		if strings.Contains(name, s) {
			return true
		}
	}
	return false
}

func ratio(a, b float64) float64 {
	if a == 0 || b == 0 {
		return 0
	}
	return a / b
}

func (r *runner) scenarioDir() string {
	r.n++
	d := filepath.Join(r.dir, fmt.Sprintf("s%02d", r.n))
	_ = os.MkdirAll(d, 0o755)
	return d
}

// scenario kinds.
const (
	kindRaw      = "raw"
	kindMoongate = "moongate"
	kindSync     = "moongate+sync"
)

type scenario struct {
	name, kind, broker string
	qos                byte
}

func scenarios() []scenario {
	var out []scenario
	for _, b := range []string{"embedded", "mosquitto"} {
		for _, q := range []byte{1, 0} {
			out = append(out, scenario{name: fmt.Sprintf("raw %s qos%d", b, q), kind: kindRaw, broker: b, qos: q})
			out = append(out, scenario{name: fmt.Sprintf("moongate %s qos%d", b, q), kind: kindMoongate, broker: b, qos: q})
		}
	}
	out = append(out, scenario{name: "moongate+sync embedded qos1", kind: kindSync, broker: "embedded", qos: 1})
	return out
}

// setup is what a throughput scenario runs against.
type setup struct {
	name   string // the scenario's
	broker string // host:port the devices publish to
	server *proc  // the process whose footprint is reported
	mg     *moongate
	sinks  int
	attach func(*tracker)
	close  func()
}

func writeFunction(dir, extra string) error {
	if err := os.WriteFile(filepath.Join(dir, "bench.lua"), []byte(BenchFunction), 0o644); err != nil {
		return err
	}
	tmp := filepath.Join(dir, ".bench.yaml.tmp")
	if err := os.WriteFile(tmp, []byte(benchManifest+extra), 0o644); err != nil {
		return err
	}
	return os.Rename(tmp, filepath.Join(dir, "bench.yaml"))
}

// embeddedSettings are the broker settings of every embedded broker here:
// room for one subscriber receiving the whole load at QoS 1 (65535
// messages of a few hundred bytes).
const embeddedSettings = "max_queued_per_client: 65535, max_queued_bytes_per_client: 64MiB"

func (r *runner) setup(ctx context.Context, sc scenario, dir string) (*setup, error) {
	s := &setup{name: sc.name}
	var closers []func()
	s.close = func() {
		for i := len(closers) - 1; i >= 0; i-- {
			closers[i]()
		}
	}
	fail := func(err error) (*setup, error) { s.close(); return nil, err }
	var mosq *mosquitto
	if sc.broker == "mosquitto" {
		m, err := startMosquitto(ctx, filepath.Join(dir, "mosquitto"), 1000)
		if err != nil {
			return fail(err)
		}
		mosq = m
		closers = append(closers, m.kill)
		s.broker = m.addr
		s.server = m.proc
	}
	if sc.kind == kindRaw && mosq != nil {
		sub, err := newSubscriber(ctx, s.broker, "bench-sub", "devices/+/telemetry", sc.qos, 0, false)
		if err != nil {
			return fail(err)
		}
		closers = append(closers, sub.close)
		s.sinks, s.attach = 1, func(t *tracker) { sub.cur.Store(t) }
		return s, nil
	}
	mqttSection := ""
	if mosq != nil {
		mqttSection = fmt.Sprintf("mqtt:\n  mode: external\n  external: {broker: %q, client_id: moongate-bench}\n", "tcp://"+mosq.addr)
	} else {
		p, err := freePort()
		if err != nil {
			return fail(err)
		}
		s.broker = fmt.Sprintf("127.0.0.1:%d", p)
		mqttSection = fmt.Sprintf("mqtt:\n  embedded: {listen: %q, allow_anonymous: true, %s}\n", s.broker, embeddedSettings)
	}
	extraCfg, extraManifest := "", ""
	var up *httpUpstream
	var upMosq *mosquitto
	if sc.kind == kindSync {
		var err error
		if up, err = newHTTPUpstream(0); err != nil {
			return fail(err)
		}
		closers = append(closers, up.close)
		if upMosq, err = startMosquitto(ctx, filepath.Join(dir, "upstream-mosquitto"), 1000); err != nil {
			return fail(err)
		}
		closers = append(closers, upMosq.kill)
		extraCfg = fmt.Sprintf("sync:\n  targets:\n    - {name: up-http, type: http, http: {url: %q, compression: none}}\n"+
			"    - {name: up-mqtt, type: mqtt, mqtt: {broker: %q, topic: \"up/{device}\"}}\n", up.url, "tcp://"+upMosq.addr)
		extraManifest = "sync: [up-http, up-mqtt]\n"
	}
	mg, err := startMoongate(ctx, r.opts.Binary, dir, mqttSection, extraCfg+r.opts.ExtraConfig)
	if err != nil {
		return fail(err)
	}
	if sc.kind != kindRaw {
		if err := writeFunction(mg.fnDir, extraManifest); err != nil {
			return fail(err)
		}
	}
	if err := mg.run(ctx, r.opts.Binary); err != nil {
		return fail(err)
	}
	closers = append(closers, mg.kill)
	s.mg = mg
	if mosq == nil || sc.kind != kindRaw {
		s.server = mg.proc
	}
	switch sc.kind {
	case kindRaw:
		sub, err := newSubscriber(ctx, s.broker, "bench-sub", "devices/+/telemetry", sc.qos, 0, false)
		if err != nil {
			return fail(err)
		}
		closers = append(closers, sub.close)
		s.sinks, s.attach = 1, func(t *tracker) { sub.cur.Store(t) }
	case kindMoongate:
		sub, err := newSubscriber(ctx, s.broker, "bench-sub", "devices/+/cmd", sc.qos, 0, false)
		if err != nil {
			return fail(err)
		}
		closers = append(closers, sub.close)
		s.sinks, s.attach = 1, func(t *tracker) { sub.cur.Store(t) }
	case kindSync:
		sub, err := newSubscriber(ctx, upMosq.addr, "bench-upstream-sub", "up/#", 1, 1, true)
		if err != nil {
			return fail(err)
		}
		closers = append(closers, sub.close)
		s.sinks, s.attach = 2, func(t *tracker) { up.cur.Store(t); sub.cur.Store(t) }
	}
	return s, nil
}

// phase is one load run of a fleet against a setup.
type phase struct {
	t      *tracker
	report *devsim.Report
	o      outcome
	start  time.Time
}

// load runs devices first..first+Devices-1 at rate events/s in total
// (0: as fast as the QoS 1 windows allow) for the phase duration, then
// waits for every event to reach the sinks.
func (r *runner) load(ctx context.Context, s *setup, qos byte, first int, rate float64) (*phase, error) {
	n := r.opts.Devices
	t := newTracker("sim-", first, n, s.sinks)
	t.keepSamples = r.opts.Latencies != nil
	s.attach(t)
	perDevice := devsim.MaxRate
	if rate > 0 {
		perDevice = min(rate/float64(n), devsim.MaxRate)
	}
	cfg := devsim.Config{
		Broker: "tcp://" + s.broker, Devices: n, FirstDevice: first, Rate: perDevice, Jitter: 0.5, QoS: qos,
		Duration: r.opts.Phase, NoStatus: true, NoCommands: true, ConnectRate: 100000,
		MaxInflight: r.opts.Inflight, AckTimeout: 60 * time.Second,
		OnAck:  func(a devsim.Ack) { t.ack(a.Device, a.Seq, a.Sent) },
		OnSend: t.send,
	}
	if rate == 0 {
		cfg.Jitter = 0
	}
	p := &phase{t: t, start: time.Now()}
	rep, err := devsim.Run(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("devsim: %w", err)
	}
	p.report = rep
	// Wait until every event is at every sink, or nothing arrives for a
	// while. An acknowledged event that has not arrived is a loss, which
	// fails the run: wait long enough that a stall of a loaded machine is
	// not taken for one. QoS 0 events may be lost by design.
	idle := 20 * time.Second
	if qos == 0 {
		idle = 10 * time.Second
		if r.opts.Short {
			idle = 3 * time.Second
		}
	}
	lastProgress, lastPending := time.Now(), -1
	for {
		pending := t.pending(qos == 1, rep.Sent)
		if pending <= 0 {
			break
		}
		if pending != lastPending {
			lastPending, lastProgress = pending, time.Now()
		}
		if time.Since(lastProgress) > idle {
			break
		}
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(20 * time.Millisecond):
		}
	}
	p.o = t.outcome(qos == 1)
	if r.opts.Latencies != nil {
		if err := writeLatencies(r.opts.Latencies, s.name, rate, p.o.samples); err != nil {
			return nil, fmt.Errorf("writing latencies: %w", err)
		}
	}
	return p, nil
}

// throughput runs one throughput scenario: saturation (QoS 1) or a rate
// search (QoS 0), then the latency phase at half the sustained rate.
func (r *runner) throughput(ctx context.Context, sc scenario) (*Row, error) {
	row := &Row{Scenario: sc.name, Broker: sc.broker, QoS: int(sc.qos)}
	dir := r.scenarioDir()
	s, err := r.setup(ctx, sc, dir)
	if err != nil {
		return row, err
	}
	defer s.close()
	idle, _ := readProcStats(s.server.pid())
	row.RSSIdle = idle.RSS
	var phases []*phase
	base := 0
	next := func() int { base += 1000; return base - 1000 }
	before, _ := readProcStats(s.server.pid())
	var best *phase
	if sc.qos == 1 && (sc.kind == kindRaw || sc.broker == "embedded") {
		// Closed loop: each device keeps its window of unacknowledged
		// messages full; the embedded broker acknowledges only what
		// moongate committed to its inbox, whose backlog is bounded.
		p, err := r.load(ctx, s, 1, next(), 0)
		if err != nil {
			return row, err
		}
		phases = append(phases, p)
		best = p
		row.Throughput = rate(p.o.complete, p.o.firstSent, p.o.lastRecv)
	} else {
		// QoS 0 has no flow control, and an external broker acknowledges
		// before moongate sees the message: search the offered rate at
		// which everything arrives and the completion rate keeps up.
		offered := r.searchStart(sc)
		up, tries := true, 5
		if r.opts.Short {
			tries = 3
		}
		for i := 0; i < tries; i++ {
			p, err := r.load(ctx, s, sc.qos, next(), offered)
			if err != nil {
				return row, err
			}
			phases = append(phases, p)
			// First send to last receipt: a backlog drained after the
			// phase counts against the rate.
			got := rate(p.o.complete, p.o.firstSent, p.o.lastRecv)
			all := uint64(p.o.complete) == p.report.Sent
			if sc.qos == 1 {
				all = p.o.missing == 0 && uint64(p.o.acked) == p.report.Sent
			}
			ok := all && got >= 0.9*offered
			r.log.Info("rate search", "scenario", sc.name, "offered", offered, "sent", p.report.Sent, "received", p.o.complete, "rate", got, "ok", ok)
			switch {
			case ok:
				best, row.Throughput = p, max(row.Throughput, got)
				if !up {
					i = tries
					break
				}
				offered *= 1.5
			default:
				if best != nil {
					i = tries
					break
				}
				up = false
				offered *= 0.5
			}
		}
		if best == nil {
			row.Note = fmt.Sprintf("no offered rate without loss down to %.0f/s", offered*2)
		}
	}
	after, _ := readProcStats(s.server.pid())
	if best != nil && best.o.complete > 0 {
		// Footprint over all load phases so far.
		events := 0
		for _, p := range phases {
			events += p.o.complete
		}
		row.CPUPer1k = float64(after.CPU-before.CPU) / float64(time.Millisecond) / float64(events) * 1000
		row.DiskPerEvent = float64(after.WriteBytes-before.WriteBytes) / float64(events)
	}
	if row.Throughput > 0 {
		row.LatencyRate = row.Throughput / 2
		p, err := r.load(ctx, s, sc.qos, next(), row.LatencyRate)
		if err != nil {
			return row, err
		}
		phases = append(phases, p)
		row.ExactLatency = p.o.exactLat
		row.Samples = len(p.o.lat)
		row.P50 = ms(quantile(p.o.lat, 0.50))
		row.P99 = ms(quantile(p.o.lat, 0.99))
		row.Max = ms(quantile(p.o.lat, 1))
	}
	if sc.kind != kindSync && sc.broker == "embedded" && sc.qos == 1 {
		p, err := r.load(ctx, s, sc.qos, next(), FixedRate)
		if err != nil {
			return row, err
		}
		phases = append(phases, p)
		f := &Row{Scenario: fmt.Sprintf("%s at %d/s", sc.name, FixedRate), Broker: sc.broker, QoS: int(sc.qos),
			LatencyRate: FixedRate, ExactLatency: p.o.exactLat, Samples: len(p.o.lat), Events: p.o.complete, Lost: p.o.missing,
			P50: ms(quantile(p.o.lat, 0.50)), P99: ms(quantile(p.o.lat, 0.99)), Max: ms(quantile(p.o.lat, 1))}
		if got := float64(p.o.complete) / r.opts.Phase.Seconds(); got < 0.9*FixedRate {
			f.Note = fmt.Sprintf("rate not kept up: %.0f/s", got)
		}
		row.fixed = f
	}
	peak, _ := readProcStats(s.server.pid())
	row.RSSPeak = peak.HWM
	for _, p := range phases {
		row.Events += p.o.complete
		row.Dups += int(p.t.dups.Load())
		if sc.qos == 1 {
			row.Lost += p.o.missing
			if p.o.missing > 0 {
				row.Note = strings.TrimSpace(row.Note + " missing e.g. " + strings.Join(p.o.missingEx, " "))
			}
		}
	}
	if s.mg != nil && sc.kind != kindRaw {
		if err := s.mg.stop(); err != nil {
			return row, err
		}
		missing, err := checkRecords(ctx, s.mg.dataDir, phases)
		if err != nil {
			return row, err
		}
		if missing > 0 {
			row.Lost += missing
			row.Note = strings.TrimSpace(fmt.Sprintf("%s %d acknowledged events without a record", row.Note, missing))
		}
	}
	return row, nil
}

// searchStart is the first offered rate of a rate search: the QoS 1
// throughput of the same kind on the same broker, else on the embedded
// broker, else 5,000/s.
func (r *runner) searchStart(sc scenario) float64 {
	for _, broker := range []string{sc.broker, "embedded"} {
		for _, row := range r.res.Rows {
			if row.Broker == broker && row.QoS == 1 && strings.HasPrefix(row.Scenario, sc.kind+" ") && row.Throughput > 0 {
				return row.Throughput
			}
		}
	}
	return 5000
}

func rate(n int, from, to int64) float64 {
	if n == 0 || to <= from {
		return 0
	}
	return float64(n) / (float64(to-from) / 1e9)
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

// checkRecords opens moongate's store (moongate stopped) and counts the
// acknowledged events (QoS 1), or the events received (QoS 0), of the phases
// that have no record of the bench function.
func checkRecords(ctx context.Context, dataDir string, phases []*phase) (int, error) {
	st, err := store.Open(ctx, store.Options{Dir: dataDir, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		return 0, fmt.Errorf("open store: %w", err)
	}
	defer st.Close()
	have := map[string]map[uint64]bool{}
	q := store.Query{Function: "bench", Limit: store.MaxQueryLimit}
	for {
		recs, next, err := st.QueryRecords(ctx, q)
		if err != nil {
			return 0, fmt.Errorf("query records: %w", err)
		}
		for _, rec := range recs {
			seq, _, ok := seqTS(rec.Data)
			if !ok {
				continue
			}
			m := have[rec.Device]
			if m == nil {
				m = map[uint64]bool{}
				have[rec.Device] = m
			}
			m[seq] = true
		}
		if next == "" || len(recs) == 0 {
			break
		}
		q.Cursor = next
	}
	missing := 0
	for _, p := range phases {
		t := p.t
		for di := range t.devs {
			d := &t.devs[di]
			name := fmt.Sprintf("%s%05d", t.prefix, t.first+di)
			d.mu.Lock()
			for k, sent := range d.acked {
				if sent != 0 && !have[name][uint64(k+1)] {
					missing++
				}
			}
			d.mu.Unlock()
		}
	}
	return missing, nil
}

func cpuModel() string {
	b, err := os.ReadFile("/proc/cpuinfo")
	if err != nil {
		return "unknown"
	}
	for line := range strings.SplitSeq(string(b), "\n") {
		if k, v, ok := strings.Cut(line, ":"); ok && strings.TrimSpace(k) == "model name" {
			return strings.TrimSpace(v)
		}
	}
	return "unknown"
}

func loadavg() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return ""
	}
	f := strings.Fields(string(b))
	if len(f) < 3 {
		return ""
	}
	return strings.Join(f[:3], " ")
}
