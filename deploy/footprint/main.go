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
// `make footprint` runs both. It prints one Markdown table.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
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
	var env string
	flag.StringVar(&env, "env", "", "one extra environment variable for the daemon, e.g. GOMEMLIMIT=96MiB")
	flag.Parse()
	if o.bin == "" || o.rate < 1 || o.devices < 1 || o.starts < 1 {
		flag.Usage()
		os.Exit(2)
	}
	if env != "" {
		o.env = []string{env}
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
	p, err := gwproc.Start(ctx, opts("load"))
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
	ld, err := load(ctx, p, o)
	if err != nil {
		return err
	}
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
	fmt.Printf("| start-up to ready, new data directory | %v |\n", first.Round(time.Millisecond))
	fmt.Printf("| start-up to ready, existing data directory (median of %d; min, max) | %v (%v, %v) |\n", len(rest),
		rest[len(rest)/2].Round(time.Millisecond), rest[0].Round(time.Millisecond), rest[len(rest)-1].Round(time.Millisecond))
	fmt.Printf("| idle RSS after %v (anon + file) | %s (%s + %s) |\n", o.idle, mib(idle.RSS), mib(idle.Anon), mib(idle.File))
	fmt.Printf("| RSS under load: max sample (anon + file at that sample) | %s (%s + %s) |\n", mib(ld.max.RSS), mib(ld.max.Anon), mib(ld.max.File))
	fmt.Printf("| RSS under load: median sample | %s |\n", mib(ld.median))
	fmt.Printf("| peak RSS of the process (VmHWM) | %s |\n", mib(ld.max.HWM))
	fmt.Printf("| events acknowledged (durable) / sent, achieved rate | %d / %d, %.0f events/s |\n", ld.acked, ld.sent, ld.rate)
	fmt.Printf("| records committed by the function (after stop) | %d |\n", records)
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
