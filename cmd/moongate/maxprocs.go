package main

import (
	"log/slog"
	"runtime"
	"strconv"

	"github.com/moongate-edge/moongate/gateway/config"
)

// envMaxProcs is the Go runtime's own variable for the number of
// goroutines that may run Go code at once. The runtime reads it before
// main runs; when it is set, it wins over the configuration's max_procs.
const envMaxProcs = "GOMAXPROCS"

// applyMaxProcs sets runtime.GOMAXPROCS from cfg.MaxProcs, unless
// GOMAXPROCS is set (non-empty) in the environment: the runtime applied
// that one at start, and it stays. set is runtime.GOMAXPROCS (a parameter
// for tests). It logs what applies and returns it.
func applyMaxProcs(cfg *config.Config, lookupEnv func(string) (string, bool), set func(int) int, log *slog.Logger) int {
	cur := set(0)
	if v, ok := lookupEnv(envMaxProcs); ok && v != "" {
		log.Info("processors", "max_procs", cur, "source", envMaxProcs, "cpus", runtime.NumCPU(),
			"config", cfg.MaxProcs.String()+" (not applied: "+envMaxProcs+" is set)")
		return cur
	}
	n := cfg.MaxProcs.Resolve(cur)
	set(n)
	attrs := []any{"max_procs", n, "source", "max_procs", "cpus", runtime.NumCPU()}
	if cfg.MaxProcs == config.MaxProcsAuto {
		attrs = append(attrs, "config", "auto (2 x the runtime's default of "+strconv.Itoa(cur)+")")
	}
	log.Info("processors", attrs...)
	return n
}
