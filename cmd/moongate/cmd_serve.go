package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"runtime/debug"
	"strings"
	"time"

	"github.com/moongate-edge/moongate/gateway"
	"github.com/moongate-edge/moongate/gateway/config"
)

func init() {
	register(&command{name: "serve", summary: "run the gateway daemon", run: runServe})
}

// The GC watch of serve: one look every gcWatchInterval, at most one
// warning every gcWarnQuiet.
const (
	gcWatchInterval = 30 * time.Second
	gcWarnQuiet     = 10 * time.Minute
)

func runServe(ctx context.Context, args []string, _, stderr io.Writer) int {
	fs := flag.NewFlagSet("serve", flag.ContinueOnError)
	fs.SetOutput(stderr)
	cfgPath := fs.String("config", "", "configuration file (YAML); defaults apply when empty")
	functions := fs.String("functions", "", "directory of function manifests (NAME.lua + NAME.yaml); overrides functions_dir")
	dataDir := fs.String("data-dir", "", "data directory; overrides data_dir")
	debugListen := fs.String("debug-listen", "", "serve Go's /debug/pprof on this loopback address (profiling; off when empty)")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return exitOK // as every other command's --help
		}
		return exitUsage
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "serve: unexpected arguments: %s\n", strings.Join(fs.Args(), " "))
		return exitUsage
	}
	cfg, err := loadConfig(*cfgPath)
	if err != nil {
		fmt.Fprintln(stderr, err)
		return exitFailure
	}
	if *functions != "" {
		cfg.FunctionsDir = *functions
	}
	if *dataDir != "" {
		cfg.DataDir = *dataDir
	}
	f, _ := stderr.(*os.File)
	log := newLogger(cfg.Log, stderr, toJournal(os.Getenv("JOURNAL_STREAM"), f))
	limit := applyMemoryLimit(cfg, os.LookupEnv, log)
	go watchGC(ctx, limit, log, gcWatchInterval, gcWarnQuiet, readGCSample)
	go followLiveHeap(ctx, limit, log, autoLimitInterval, autoLimitWindow, gcCycles(ctx), readGCSample, debug.SetMemoryLimit, time.Now)
	if *debugListen != "" {
		stop, err := serveDebug(*debugListen, log)
		if err != nil {
			fmt.Fprintf(stderr, "serve: --debug-listen: %v\n", err)
			return exitUsage
		}
		defer stop()
	}
	gateway.Version = version
	d, err := gateway.NewDaemon(ctx, cfg, log)
	if err != nil {
		if ctx.Err() != nil && (errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded)) {
			log.Info("stopped while starting")
			return exitOK
		}
		log.Error("start failed", "err", err)
		return exitFailure
	}
	// A stop that hangs (Badger retrying a memtable flush on a failing or
	// full disk, forever) is cut short: what was acknowledged is durable
	// already (its write-ahead log), and the supervisor would kill the
	// process anyway (TimeoutStopSec). That holds for a stop the daemon
	// begins by itself too (its store broke): nobody would kill it then.
	done := make(chan struct{})
	defer close(done)
	go func() {
		select {
		case <-done:
			return
		case <-ctx.Done():
		case <-d.Stopping():
		}
		select {
		case <-done:
		case <-time.After(stopTimeout):
			log.Error("stop did not finish in time: exiting (acknowledged events are durable)", "timeout", stopTimeout)
			os.Exit(exitFailure)
		}
	}()
	if err := d.Run(ctx); err != nil {
		log.Error("stopped with error", "err", err)
		return exitFailure
	}
	return exitOK
}

// stopTimeout bounds the stop of the daemon, below the unit's
// TimeoutStopSec (60 s).
const stopTimeout = 45 * time.Second

// loadConfig reads path, or returns the defaults (with environment
// overrides) when path is empty.
func loadConfig(path string) (*config.Config, error) {
	return config.Load(path) // "" : the defaults, with the environment overrides
}

// newLogger is the daemon's logger on w, in the configured format and
// level; when journal is true (w is the systemd journal's stream), each line
// starts with its syslog priority ("<3>" error ... "<7>" debug).
func newLogger(c config.Log, w io.Writer, journal bool) *slog.Logger {
	var level slog.Level
	_ = level.UnmarshalText([]byte(c.Level))
	opts := &slog.HandlerOptions{Level: level}
	inner := func(w io.Writer) slog.Handler {
		if c.Format == "json" {
			return slog.NewJSONHandler(w, opts)
		}
		return slog.NewTextHandler(w, opts)
	}
	if journal {
		return slog.New(newJournalHandler(w, inner))
	}
	return slog.New(inner(w))
}
