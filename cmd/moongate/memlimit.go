package main

import (
	"context"
	"fmt"
	"log/slog"
	"math"
	"os"
	"runtime"
	"runtime/debug"
	"runtime/metrics"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/moongate-edge/moongate/gateway/config"
)

// envMemoryLimit is the Go runtime's own variable for the soft memory
// limit. The runtime reads it before main runs; when it is set, it wins
// over the configuration's memory_limit.
const envMemoryLimit = "GOMEMLIMIT"

// memoryLimit is the soft memory limit in effect and where it comes from.
type memoryLimit struct {
	bytes  int64  // 0: none; with auto, the floor the limit follows the live heap from
	source string // "memory_limit" or "GOMEMLIMIT": the knob to turn
	auto   bool   // memory_limit: auto applies: followLiveHeap adjusts the limit
	// ceiling (0: none) is the most auto may raise the limit to: below the
	// hard limits of the process (its cgroup's memory.high and memory.max,
	// the machine's RAM), where a larger soft limit would only let the heap
	// grow into throttling or the OOM killer instead of collecting harder.
	ceiling int64
}

// capped is want, but not above the ceiling (nor below the floor).
func (l memoryLimit) capped(want int64) int64 {
	if l.ceiling > 0 && want > l.ceiling {
		return max(l.ceiling, l.bytes)
	}
	return want
}

// ceilingShare is the part of the tightest hard limit the soft limit may
// reach: the rest is for what the runtime does not count (stacks beyond
// its accounting, the binary's mapped pages, Badger's memory maps).
const ceilingShare = 0.8

// memoryCeiling is ceilingShare of the smallest of the process's cgroup v2
// memory.high and memory.max and of the machine's MemTotal, rounded down to
// a MiB, read through read (os.ReadFile outside tests); 0 when none is
// known.
func memoryCeiling(read func(string) ([]byte, error)) int64 {
	var limits []int64
	if b, err := read("/proc/self/cgroup"); err == nil {
		for _, line := range strings.Split(string(b), "\n") {
			if path, ok := strings.CutPrefix(line, "0::"); ok {
				dir := "/sys/fs/cgroup" + strings.TrimSpace(path)
				for _, f := range []string{"memory.high", "memory.max"} {
					if v, err := read(dir + "/" + f); err == nil {
						if n, err := strconv.ParseInt(strings.TrimSpace(string(v)), 10, 64); err == nil && n > 0 {
							limits = append(limits, n)
						}
					}
				}
			}
		}
	}
	if b, err := read("/proc/meminfo"); err == nil {
		for _, line := range strings.Split(string(b), "\n") {
			if rest, ok := strings.CutPrefix(line, "MemTotal:"); ok {
				f := strings.Fields(rest)
				if len(f) == 2 && f[1] == "kB" {
					if n, err := strconv.ParseInt(f[0], 10, 64); err == nil && n > 0 {
						limits = append(limits, n<<10)
					}
				}
			}
		}
	}
	if len(limits) == 0 {
		return 0
	}
	const mib = 1 << 20
	return int64(float64(slices.Min(limits))*ceilingShare) / mib * mib // whole MiB
}

// applyMemoryLimit sets the Go runtime's soft memory limit from
// cfg.MemoryLimit, unless GOMEMLIMIT is set (non-empty) in the environment:
// the runtime applied that one at start, and it stays. It logs which
// applies.
func applyMemoryLimit(cfg *config.Config, lookupEnv func(string) (string, bool), log *slog.Logger) memoryLimit {
	if v, ok := lookupEnv(envMemoryLimit); ok && v != "" {
		l := memoryLimit{bytes: currentMemoryLimit(), source: envMemoryLimit}
		log.Info("memory limit", "limit", formatLimit(l.bytes), "source", envMemoryLimit,
			"memory_limit", cfg.MemoryLimit.String()+" (not applied: "+envMemoryLimit+" is set)")
		return l
	}
	l := memoryLimit{bytes: cfg.MemoryLimitBytes(), source: "memory_limit", auto: cfg.MemoryLimit == config.MemoryLimitAuto}
	if l.auto {
		l.ceiling = memoryCeiling(os.ReadFile)
	}
	if l.bytes > 0 {
		debug.SetMemoryLimit(l.bytes)
	} else {
		debug.SetMemoryLimit(math.MaxInt64) // the runtime's "no limit"
	}
	attrs := []any{"limit", formatLimit(l.bytes), "source", "memory_limit"}
	if cfg.MemoryLimit == config.MemoryLimitAuto {
		attrs = append(attrs, "memory_limit", "auto (store profile "+cfg.Store.Profile+")")
		if l.bytes > 0 {
			attrs = append(attrs, "follows", fmt.Sprintf("%g x live heap when above", autoLimitFactor))
			if l.ceiling > 0 {
				attrs = append(attrs, "at_most", formatLimit(l.ceiling))
			}
		}
	}
	log.Info("memory limit", attrs...)
	return l
}

// currentMemoryLimit is the runtime's soft memory limit, 0 when there is
// none.
func currentMemoryLimit() int64 {
	if l := debug.SetMemoryLimit(-1); l != math.MaxInt64 {
		return l
	}
	return 0
}

func formatLimit(b int64) string {
	if b <= 0 {
		return "off"
	}
	return config.Size(b).String()
}

// gcSample is what the GC watch reads from the runtime: cumulative
// processor time of garbage collection and of the program's own code (both
// the runtime's estimates, comparable with each other), the heap that was
// live at the last collection, and the memory the runtime holds besides the
// heap's spans (goroutine stacks, metadata), which counts towards the soft
// limit.
type gcSample struct {
	gc, user float64 // seconds
	live     uint64  // bytes
	overhead uint64  // bytes
}

var gcMetrics = []string{
	"/cpu/classes/gc/total:cpu-seconds", "/cpu/classes/user:cpu-seconds", "/gc/heap/live:bytes",
	"/memory/classes/total:bytes", "/memory/classes/heap/released:bytes", "/memory/classes/heap/objects:bytes",
	"/memory/classes/heap/unused:bytes", "/memory/classes/heap/free:bytes",
}

// readGCSample reads the runtime's metrics; ok is false when one is
// missing (a runtime without them).
func readGCSample() (gcSample, bool) {
	s := make([]metrics.Sample, len(gcMetrics))
	for i, n := range gcMetrics {
		s[i].Name = n
	}
	metrics.Read(s)
	if s[0].Value.Kind() != metrics.KindFloat64 || s[1].Value.Kind() != metrics.KindFloat64 {
		return gcSample{}, false
	}
	u := make([]uint64, len(s)-2)
	for i := range u {
		if s[i+2].Value.Kind() != metrics.KindUint64 {
			return gcSample{}, false
		}
		u[i] = s[i+2].Value.Uint64()
	}
	g := gcSample{gc: s[0].Value.Float64(), user: s[1].Value.Float64(), live: u[0]}
	if heap := u[2] + u[3] + u[4] + u[5]; u[1] > heap { // total - (released + objects + unused + free)
		g.overhead = u[1] - heap
	}
	return g, true
}

// GC watch thresholds: a warning when, over one interval, garbage
// collection took at least gcShareWarn of the processor time spent on
// collection and the program together, and at least gcBusyWarn of one
// processor (so that an idle daemon, where a few collections are a large
// share of nothing, never warns). Measured at 1,000 events/s with the
// reference function (docs/performance.md): about 0.1 with the default
// 24 MiB limit (no warning), 0.29 with 20 MiB (processor time per event
// 1.7 times that of 24 MiB), 0.52 with 16 MiB (4.2 times).
const (
	gcShareWarn = 0.25
	gcBusyWarn  = 0.02
)

// gcPressure reports the share of processor time garbage collection took
// between two samples interval apart, and whether it deserves a warning.
func gcPressure(prev, cur gcSample, interval time.Duration) (share float64, warn bool) {
	dgc, duser := cur.gc-prev.gc, cur.user-prev.user
	if dgc <= 0 || dgc+duser <= 0 {
		return 0, false
	}
	share = dgc / (dgc + duser)
	return share, share >= gcShareWarn && dgc >= gcBusyWarn*interval.Seconds()
}

// watchGC warns, at most once per quiet period, when garbage collection
// takes a large share of the processor while a memory limit is set: the
// limit is then too low for the live heap (many devices, a backlog of big
// events, functions holding much state), and the collector runs almost
// continuously to stay under it. It returns when ctx ends.
func watchGC(ctx context.Context, l memoryLimit, log *slog.Logger, interval, quiet time.Duration, read func() (gcSample, bool)) {
	if l.bytes <= 0 {
		return
	}
	prev, ok := read()
	if !ok {
		log.Warn("GC watch disabled: runtime metrics missing")
		return
	}
	tick := time.NewTicker(interval)
	defer tick.Stop()
	var lastWarn time.Time
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		cur, ok := read()
		if !ok {
			return
		}
		share, warn := gcPressure(prev, cur, interval)
		prev = cur
		if !warn || (!lastWarn.IsZero() && time.Since(lastWarn) < quiet) {
			continue
		}
		lastWarn = time.Now()
		shown, advice := l.bytes, "raise "+l.source
		if l.auto {
			shown, advice = currentMemoryLimit(), "set memory_limit to a size of about twice the live heap, or off"
		}
		log.Warn("garbage collection is taking a large share of the processor: the memory limit is low for the live heap; "+advice,
			"gc_share", math.Round(share*100)/100, "limit", formatLimit(shown), "live_heap", fmt.Sprintf("%.1fMiB", float64(cur.live)/(1<<20)),
			"window", interval.String())
	}
}

// With memory_limit: auto the limit is not fixed: it is the floor (24MiB
// with the low-memory profile) or autoLimitFactor times the live heap plus
// the runtime's other memory (stacks, metadata), whichever is larger. The
// live heap taken is the smallest of the last autoLimitWindow samples, read
// every autoLimitInterval: the limit follows a live heap that stays large
// (a slow local subscriber's queue in the embedded broker, a backlog of
// events under sustained load), where a fixed 24MiB made garbage collection
// take up to half the processor and halved moongate-bench's embedded QoS 1
// throughput (docs/performance.md); it does not follow the second-long
// spikes of Badger's compactions, which the floor keeps out of the RSS.
// While the live heap is small (8-15 MiB at 1,000 events/s with the
// reference function) the floor applies; above it the collector keeps a
// headroom of up to half the live heap, roughly as GOGC=50 would (the
// runtime also counts the heap's unused spans against the limit).
//
// The window makes the limit slow to come down, and would make it as slow
// to go up: when load resumes after a quiet spell (the window's smallest
// sample is the idle heap) the live heap outgrows the limit within a few
// collections, and the collector then runs back to back, taking up to half
// the processor, until the window has passed. moongate-bench saw its events
// wait 100-350 ms for the first 1-1.5 s of a load phase (docs/performance.md,
// "The phase-start spike"). So the limit also goes up at once: after every
// collection (gcCycles), when the latest live heap times autoPressMargin
// (plus the overhead) reaches the limit in effect, the limit is raised to
// autoLimitFactor times that live heap and held for a window of samples.
//
// When, over the last autoBoostSpan samples, garbage collection still took
// at least autoBoostShare of the processor time (and at least 2 % of one
// processor), the limit is raised for autoBoostHold to autoBoostFactor
// times the smallest live heap of those samples (about GOGC=100's
// headroom): the heap is growing faster than the window lets the limit
// follow. The runtime updates its processor-time estimates when a
// collection ends, and counts in them the marking done on otherwise idle
// processors, so the share is a rough one; the thresholds were chosen by
// measurement (docs/performance.md). At 1,000 events/s
// the collector's share stays near 0.1 and this never happens (VmHWM
// 57-59 MiB, make footprint); at moongate-bench's rates it recovered about
// half of what the limit cost against memory_limit: off.
const (
	autoLimitFactor   = 1.5
	autoLimitInterval = 250 * time.Millisecond
	autoLimitWindow   = 8 // samples: 2 s

	autoPressMargin = 1.2 // live heap x this reaching the limit: raise it at once

	autoBoostShare  = 0.25
	autoBoostBusy   = 0.02 // of one processor
	autoBoostSpan   = 4    // samples: 1 s
	autoBoostFactor = 2.0
	autoBoostHold   = 10 * time.Second
)

// autoLimit is the soft limit for a floor, a live heap of live bytes and
// the runtime's overhead bytes besides the heap.
func autoLimit(floor int64, live, overhead uint64) int64 {
	return limitFor(floor, live, overhead, autoLimitFactor)
}

// limitFor is max(floor, factor x live + overhead), rounded up to a MiB.
func limitFor(floor int64, live, overhead uint64, factor float64) int64 {
	want := int64(float64(live)*factor) + int64(overhead)
	if want < floor {
		return floor
	}
	const mib = 1 << 20
	return (want + mib - 1) / mib * mib // whole MiB: fewer changes
}

// followLiveHeap keeps the runtime's soft memory limit at autoLimit of the
// smallest live heap (and its overhead) of the last window samples, read
// every interval, or at the boost (see autoBoostShare) while one holds,
// while memory_limit: auto applies; it changes the limit only when that
// differs by more than a MiB, and logs changes at debug level. now is the
// clock (time.Now outside tests). wake (gcCycles outside tests; nil for
// none) signals the end of a collection: then only the pressure check
// runs, on a fresh sample that does not enter the window. It returns when
// ctx ends or read fails.
func followLiveHeap(ctx context.Context, l memoryLimit, log *slog.Logger, interval time.Duration, window int, wake <-chan struct{}, read func() (gcSample, bool), set func(int64) int64, now func() time.Time) {
	if !l.auto || l.bytes <= 0 {
		return
	}
	cur := l.bytes
	var (
		boost      int64 // raised limit while boostUntil is ahead
		boostUntil time.Time
		press      int64 // raised limit while pressLeft samples remain
		pressLeft  int
		base       = l.bytes // the window's limit, as of the last sample
	)
	recent := make([]gcSample, 0, max(window, autoBoostSpan+1))
	tick := time.NewTicker(interval)
	defer tick.Stop()
	for {
		ticked := false
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
			ticked = true
		case <-wake:
		}
		s, ok := read()
		if !ok {
			return
		}
		// The live heap has (nearly) caught up with the limit: the
		// collector is about to run back to back. Raise the limit now,
		// on this sample, and hold it while the window forgets the
		// smaller ones.
		if float64(s.live)*autoPressMargin+float64(s.overhead) >= float64(cur) {
			if p := limitFor(l.bytes, s.live, s.overhead, autoLimitFactor); p > press || pressLeft == 0 {
				press = p
			}
			pressLeft = window + 1
		}
		if !ticked {
			if want := l.capped(max(base, press)); want > cur+1<<20 {
				set(want)
				log.Debug("memory limit raised: the live heap reached it", "limit", formatLimit(want), "live_heap", fmt.Sprintf("%.1fMiB", float64(s.live)/(1<<20)))
				cur = want
			}
			continue
		}
		if pressLeft > 0 {
			pressLeft--
		}
		if pressLeft == 0 {
			press = 0
		}
		if len(recent) == cap(recent) {
			recent = append(recent[:0], recent[1:]...)
		}
		recent = append(recent, s)
		low := s // the window's smallest sample
		for _, r := range recent[max(0, len(recent)-window):] {
			if r.live < low.live {
				low = r
			}
		}
		base = autoLimit(l.bytes, low.live, low.overhead)
		want := max(base, press)
		t := now()
		if n := len(recent); n > autoBoostSpan {
			old := recent[n-1-autoBoostSpan]
			dgc, dall := s.gc-old.gc, (s.gc+s.user)-(old.gc+old.user)
			span := interval.Seconds() * autoBoostSpan
			if dall > 0 && dgc/dall >= autoBoostShare && dgc >= autoBoostBusy*span {
				// The smallest live heap of the span: a spike shorter than
				// the span does not raise the limit.
				lowSpan := s
				for _, r := range recent[n-1-autoBoostSpan:] {
					if r.live < lowSpan.live {
						lowSpan = r
					}
				}
				boost = limitFor(l.bytes, lowSpan.live, lowSpan.overhead, autoBoostFactor)
				boostUntil = t.Add(autoBoostHold)
			}
		}
		if t.Before(boostUntil) {
			want = max(want, boost)
		} else {
			boost = 0
		}
		want = l.capped(want)
		// Changes of a MiB or less are not worth making, except back to
		// the floor.
		if d := want - cur; d <= 1<<20 && d >= -(1<<20) && (want != l.bytes || cur == l.bytes) {
			continue
		}
		set(want)
		log.Debug("memory limit follows the live heap", "limit", formatLimit(want), "live_heap", fmt.Sprintf("%.1fMiB", float64(low.live)/(1<<20)),
			"boost", formatLimit(boost), "press", formatLimit(press))
		cur = want
	}
}

// gcCycles returns a channel that receives after each garbage collection
// cycle (dropped while the previous one is unread) until ctx ends. It uses
// a finalizer on a sentinel object, re-armed each time: the runtime queues
// the finalizer once the cycle that found the object unreachable ends.
func gcCycles(ctx context.Context) <-chan struct{} {
	ch := make(chan struct{}, 1)
	var arm func()
	arm = func() {
		// Big enough, and with a pointer, to be a heap object of its own
		// (the tiny allocator may never free a small pointer-free one).
		s := &gcSentinel{}
		runtime.SetFinalizer(s, func(*gcSentinel) {
			if ctx.Err() != nil {
				return
			}
			select {
			case ch <- struct{}{}:
			default:
			}
			arm()
		})
	}
	arm()
	return ch
}

type gcSentinel struct {
	p   *gcSentinel
	pad [16]byte
}
