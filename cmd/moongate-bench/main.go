// Command moongate-bench is moongate's end-to-end benchmark (docs/performance.md):
// it starts the brokers, moongate (as `moongate serve` child processes) and
// the simulated devices on loopback, measures the raw broker round trip,
// moongate end to end, with sync, cold starts and the footprint, and prints
// one table. It exits 1 when a scenario lost an acknowledged event or could
// not run.
//
//	go run ./cmd/moongate-bench [--short] [--json] [--binary bin/moongate]
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"

	"github.com/moongate-edge/moongate/cmd/moongate-bench/internal/bench"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("moongate-bench", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var o bench.Options
	fs.BoolVar(&o.Short, "short", false, "a few seconds per scenario (CI)")
	asJSON := fs.Bool("json", false, "print the result as JSON instead of the table")
	fs.StringVar(&o.Binary, "binary", "", "moongate binary (default: built from ./cmd/moongate with go build)")
	fs.IntVar(&o.Devices, "devices", 0, "simulated devices per load phase (default 64)")
	fs.IntVar(&o.Inflight, "inflight", 0, "QoS 1 messages in flight per device (default 16)")
	fs.DurationVar(&o.Phase, "phase", 0, "duration of each load phase (default 10s, 1.5s with --short)")
	only := fs.String("only", "", "comma-separated substrings: run only the matching scenarios (e.g. \"embedded qos1,cold\")")
	fs.StringVar(&o.ExtraConfig, "config-extra", "", "YAML appended to moongate's configuration (top-level sections it does not set: pipeline, functions, ...)")
	fs.StringVar(&o.Dir, "dir", "", "working directory, kept afterwards (default: a temp dir, removed)")
	verbose := fs.Bool("v", false, "progress on stderr")
	latencies := fs.String("latencies", "", "write every event's send time and latency to this file (tab-separated: scenario, offered rate, send time in Unix ns, latency in ns)")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if fs.NArg() > 0 {
		fmt.Fprintln(stderr, "moongate-bench: unexpected arguments:", strings.Join(fs.Args(), " "))
		return 2
	}
	if *only != "" {
		o.Only = strings.Split(*only, ",")
	}
	if *latencies != "" {
		f, err := os.Create(*latencies)
		if err != nil {
			fmt.Fprintln(stderr, "moongate-bench:", err)
			return 2
		}
		defer func() {
			if err := f.Close(); err != nil {
				fmt.Fprintln(stderr, "moongate-bench: --latencies:", err)
			}
		}()
		o.Latencies = f
	}
	if *verbose {
		o.Log = slog.New(slog.NewTextHandler(stderr, nil))
	}
	if o.Binary == "" {
		dir, err := os.MkdirTemp("", "moongate-bench-bin-")
		if err != nil {
			fmt.Fprintln(stderr, "moongate-bench:", err)
			return 1
		}
		defer os.RemoveAll(dir)
		o.Binary = filepath.Join(dir, "moongate")
		cmd := exec.CommandContext(ctx, "go", "build", "-trimpath", "-o", o.Binary, "./cmd/moongate")
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		cmd.Stdout, cmd.Stderr = stderr, stderr
		if err := cmd.Run(); err != nil {
			fmt.Fprintln(stderr, "moongate-bench: building moongate (run from the repository root, or pass --binary):", err)
			return 1
		}
	}
	res, err := bench.Run(ctx, o)
	if res != nil {
		if *asJSON {
			enc := json.NewEncoder(stdout)
			enc.SetIndent("", "  ")
			_ = enc.Encode(res)
		} else {
			_ = res.WriteTable(stdout)
		}
	}
	if err != nil {
		fmt.Fprintln(stderr, "moongate-bench:", err)
		return 1
	}
	return 0
}
