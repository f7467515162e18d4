package store

import (
	"context"
	"fmt"
	"log/slog"
	"math"
	"path/filepath"
	"time"

	badger "github.com/dgraph-io/badger/v4"
	"github.com/dgraph-io/badger/v4/options"
)

// Durability says when a write is synced to disk. The zero value is
// DurabilityAlways, the safe default.
type Durability int

// Durability modes.
const (
	// DurabilityAlways syncs every group-commit batch before any writer of
	// the batch returns: a returned write survives power loss.
	DurabilityAlways Durability = iota
	// DurabilityInterval syncs at most every Options.SyncInterval; writers
	// return once their batch is written (it survives a process crash but
	// the last interval may be lost on power loss).
	DurabilityInterval
	// DurabilityNone never syncs explicitly (tests, RAM disks).
	DurabilityNone
)

// String returns the configuration name of d: "always", "interval", "none".
func (d Durability) String() string {
	switch d {
	case DurabilityAlways:
		return "always"
	case DurabilityInterval:
		return "interval"
	case DurabilityNone:
		return "none"
	}
	return fmt.Sprintf("Durability(%d)", int(d))
}

// ParseDurability parses "always", "interval" or "none".
func ParseDurability(s string) (Durability, error) {
	switch s {
	case "always", "":
		return DurabilityAlways, nil
	case "interval":
		return DurabilityInterval, nil
	case "none":
		return DurabilityNone, nil
	}
	return 0, fmt.Errorf("%w: durability %q (want always, interval or none)", ErrInvalid, s)
}

// Profile selects Badger's memory sizing. The zero value "" means
// ProfileLowMemory.
type Profile string

// Profiles.
const (
	// ProfileLowMemory fits a Pi Zero (512 MiB RAM, 32-bit): 4 MiB
	// memtables x2, 4 MiB block cache, 16 MiB value-log files. The
	// default.
	ProfileLowMemory Profile = "low-memory"
	// ProfileLarge is for 4-8 GiB boards: 32 MiB memtables x3, 64 MiB block
	// cache, 64 MiB value-log files.
	ProfileLarge Profile = "large"
)

// DropPolicy says what happens when a key space reaches its quota. The zero
// value is DropOldest.
type DropPolicy int

// Drop policies.
const (
	// DropOldest deletes the oldest entries to make room and counts them.
	DropOldest DropPolicy = iota
	// RejectNew refuses the new write with ErrQuota.
	RejectNew
)

// String returns "drop_oldest" or "reject_new".
func (p DropPolicy) String() string {
	if p == RejectNew {
		return "reject_new"
	}
	return "drop_oldest"
}

// ParseDropPolicy parses "drop_oldest" (or "") and "reject_new".
func ParseDropPolicy(s string) (DropPolicy, error) {
	switch s {
	case "", "drop_oldest":
		return DropOldest, nil
	case "reject_new":
		return RejectNew, nil
	}
	return 0, fmt.Errorf("%w: drop policy %q (want drop_oldest or reject_new)", ErrInvalid, s)
}

// Quota bounds one key space. Zero MaxBytes or MaxAge means no bound. The
// zero value means unbounded with policy DropOldest.
type Quota struct {
	MaxBytes int64         // bytes of stored values (approximate for values in the value log)
	MaxAge   time.Duration // age by the wall clock at write time
	Policy   DropPolicy
}

// Key space names used in Options.Quotas and Stats.
const (
	SpaceInbox       = "inbox"       // MaxBytes only; always RejectNew, never dropped
	SpaceRecords     = "records"     // local records
	SpaceOutbox      = "outbox"      // applies to each target; "outbox:<target>" overrides one
	SpacePublishes   = "publishes"   // local publish outbox
	SpaceLogs        = "logs"        // invocation logs (default 16 MiB, 24 h)
	SpaceDeadLetters = "deadletters" // dead letters (default 32 MiB)
	SpaceUsage       = "usage"       // per-minute usage meters of functions: MaxAge only (default 90 days)
	// SpaceState is the state of each function: MaxBytes bounds the keys
	// and values of one function (default 64 MiB); always RejectNew
	// (ErrStateQuota), never dropped or aged.
	SpaceState = "state"
)

// DefaultQuotas are the quotas applied to key spaces missing from
// Options.Quotas.
var DefaultQuotas = map[string]Quota{
	SpaceLogs:        {MaxBytes: 16 << 20, MaxAge: 24 * time.Hour},
	SpaceDeadLetters: {MaxBytes: 32 << 20},
	SpaceUsage:       {MaxAge: 90 * 24 * time.Hour},
	SpaceState:       {MaxBytes: 64 << 20, Policy: RejectNew},
}

// Options configures Open. The zero value (plus Dir) gives the safe
// defaults: low-memory profile, DurabilityAlways, 64 MiB disk reserve.
type Options struct {
	Dir          string
	Profile      Profile
	Durability   Durability
	SyncInterval time.Duration // DurabilityInterval; default 100 ms
	GatewayID    string        // first part of record ids (Store.IDPrefix); default "gw"

	// DiskReserve refuses growing writes with ErrStoreFull below this many
	// free bytes in Dir; default 64 MiB, negative disables the guard.
	DiskReserve int64
	// DiskCheckInterval is how often the free space is read while it is
	// above the reserve (below it, every batch re-reads it); default 250 ms.
	DiskCheckInterval time.Duration
	// Quotas per key space (see the Space* constants).
	Quotas map[string]Quota
	// Logger receives the store's and Badger's messages; default slog.Default().
	Logger *slog.Logger
	// FreeSpace reports free bytes of dir; default gopsutil disk.Usage.
	FreeSpace func(dir string) (uint64, error)
	// InMemory keeps everything in RAM (tests only); Dir is ignored.
	InMemory bool

	// RetentionInterval is the period of the age-retention pass; default 30 s.
	RetentionInterval time.Duration
	// GCInterval is the period of the value-log GC loop; default 5 min,
	// negative disables it.
	GCInterval time.Duration
	// MaxValueBytes bounds one event, record data, payload or state value
	// (ErrTooLarge above it); default 1 MiB.
	MaxValueBytes int
	// MaxBatch bounds the number of writers grouped into one commit; default 4096.
	MaxBatch int
	// CompactionShare is the fraction of one processor, from 0.1 to 1,
	// that Badger's compactions may use while they keep up (level 0 two
	// tables short of its write stall): one table is built at a time, with
	// pauses, so that a compaction does not take every processor from the
	// commits for hundreds of milliseconds (docs/store.md). Default 0.5;
	// negative compacts at full speed, in parallel, as Badger does.
	CompactionShare float64
	// DedupeWindow is how many recently accepted inbox entries the
	// redelivery window remembers (see Store.Redelivered); default 16384.
	// Each sender's own slots remember its messages beyond it.
	DedupeWindow int
	// SenderSlotTTL is how long a sender's redelivery slot (see
	// Store.Redelivered) is kept after it was last written; default 7 days.
	// A device that redelivers after a longer absence runs the message
	// again.
	SenderSlotTTL time.Duration

	// plan replaces the release's format version and migrations (tests).
	plan *formatPlan
	// Buckets are the blob buckets by name (see blob.go); a bucket not
	// listed does not exist (ErrNotFound).
	Buckets map[string]Bucket
	// BlobDir holds the blob files; default <Dir>/blobs (required with
	// InMemory and Buckets).
	BlobDir string
}

func (o *Options) withDefaults() error {
	if o.Profile == "" {
		o.Profile = ProfileLowMemory
	}
	if o.Profile != ProfileLowMemory && o.Profile != ProfileLarge {
		return fmt.Errorf("%w: profile %q (want low-memory or large)", ErrInvalid, o.Profile)
	}
	if o.Durability < DurabilityAlways || o.Durability > DurabilityNone {
		return fmt.Errorf("%w: durability %d", ErrInvalid, o.Durability)
	}
	if o.SyncInterval <= 0 {
		o.SyncInterval = 100 * time.Millisecond
	}
	if c := o.CompactionShare; math.IsNaN(c) || c > 1 || (c > 0 && c < 0.1) {
		return fmt.Errorf("%w: compaction share %v (want 0.1 to 1; negative for none)", ErrInvalid, c)
	}
	if o.CompactionShare == 0 {
		o.CompactionShare = 0.5
	}
	if o.GatewayID == "" {
		o.GatewayID = "gw"
	}
	if o.DiskReserve == 0 {
		o.DiskReserve = 64 << 20
	}
	if o.DiskCheckInterval <= 0 {
		o.DiskCheckInterval = 250 * time.Millisecond
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	if o.RetentionInterval <= 0 {
		o.RetentionInterval = 30 * time.Second
	}
	if o.GCInterval == 0 {
		o.GCInterval = 5 * time.Minute
	}
	if o.MaxValueBytes <= 0 {
		o.MaxValueBytes = 1 << 20
	}
	if o.MaxBatch <= 0 {
		o.MaxBatch = 4096
	}
	if o.DedupeWindow <= 0 {
		o.DedupeWindow = 16384
	}
	if o.SenderSlotTTL <= 0 {
		o.SenderSlotTTL = 7 * 24 * time.Hour
	}
	if !o.InMemory && o.Dir == "" {
		return fmt.Errorf("%w: Options.Dir is empty", ErrInvalid)
	}
	if o.BlobDir == "" && !o.InMemory {
		o.BlobDir = filepath.Join(o.Dir, "blobs")
	}
	for k, b := range o.Buckets {
		if !ValidBucket(k) {
			return fmt.Errorf("%w: bucket name %q", ErrInvalid, k)
		}
		if b.MaxSize < 0 || b.MaxBytes < 0 || b.MaxAge < 0 {
			return fmt.Errorf("%w: negative limit for bucket %q", ErrInvalid, k)
		}
		for _, t := range b.Sync {
			if err := validName("bucket "+k+" sync target", t, false); err != nil {
				return err
			}
		}
		if o.BlobDir == "" {
			return fmt.Errorf("%w: Options.BlobDir is empty", ErrInvalid)
		}
	}
	for k, q := range o.Quotas {
		if q.MaxBytes < 0 || q.MaxAge < 0 {
			return fmt.Errorf("%w: negative quota for %q", ErrInvalid, k)
		}
	}
	return nil
}

// quota returns the quota of a key space ("outbox:<target>" falls back to
// "outbox").
func (o *Options) quota(space string) Quota {
	if q, ok := o.Quotas[space]; ok {
		return q
	}
	if len(space) > 7 && space[:7] == "outbox:" {
		return o.quota(SpaceOutbox)
	}
	return DefaultQuotas[space]
}

// badgerOptions translates the profile into Badger options.
// badgerTune, when set (benchmarks only), adjusts the Badger options of
// every store opened afterwards.
var badgerTune func(badger.Options) badger.Options

func (o *Options) badgerOptions() badger.Options {
	bo := badger.DefaultOptions(o.Dir)
	if o.InMemory {
		bo = badger.DefaultOptions("").WithInMemory(true)
	}
	bo = bo.WithLogger(badgerLogger{o.Logger}).
		// Always: Badger syncs each of our transactions (one per batch).
		WithSyncWrites(o.Durability == DurabilityAlways).
		WithDetectConflicts(false).
		WithMetricsEnabled(false).
		WithCompression(options.None).
		WithNumVersionsToKeep(1).
		// No index cache: without encryption Badger reads each table's
		// index from its memory-mapped file and never consults the cache;
		// one would only cost its own structures (about 0.7 MiB of heap).
		WithIndexCacheSize(0).
		// Paced compactions (CompactionShare; Badger's
		// README.moongate.md, section 4); negative: none (0 for Badger).
		WithBuildShare(max(o.CompactionShare, 0))
	switch o.Profile {
	case ProfileLarge:
		bo = bo.WithMemTableSize(32 << 20).
			WithNumMemtables(3).
			WithNumLevelZeroTables(3).
			WithNumLevelZeroTablesStall(8).
			WithBaseTableSize(4 << 20).
			WithBaseLevelSize(32 << 20).
			WithBlockCacheSize(64 << 20).
			WithValueLogFileSize(64 << 20).
			WithValueThreshold(4 << 10).
			WithNumCompactors(2).
			WithNumGoroutines(4)
	default:
		// Level 0 is compacted once it holds 4 flushed memtables (stall at
		// 10) into a base level of 16 MiB of 2 MiB tables. Measured
		// against 2 / 8 MiB / 1 MiB (docs/performance.md, store): a
		// quarter less CPU per sustained processing commit and 14 % fewer
		// bytes written per event (SD-card wear), with the peak RSS at
		// 1,000 events/s still under 60 MiB; 6 tables into 32 MiB saved a
		// little more but peaked at 62 MiB (bigger level-0 compactions keep
		// more old and new tables mapped at once).
		bo = bo.WithMemTableSize(4 << 20).
			WithNumMemtables(2).
			WithNumLevelZeroTables(4).
			WithNumLevelZeroTablesStall(10).
			WithBaseTableSize(2 << 20).
			WithBaseLevelSize(16 << 20).
			WithBlockCacheSize(4 << 20).
			WithValueLogFileSize(16 << 20).
			WithValueThreshold(1 << 10).
			WithNumCompactors(2).
			WithNumGoroutines(2).
			WithBlockSize(4 << 10)
	}
	if badgerTune != nil {
		bo = badgerTune(bo)
	}
	return bo
}

// badgerLogger routes Badger's log lines to slog (Badger's Info is Debug here).
type badgerLogger struct{ l *slog.Logger }

func (b badgerLogger) Errorf(f string, a ...any) {
	b.l.Error("badger: " + trimNL(fmt.Sprintf(f, a...)))
}
func (b badgerLogger) Warningf(f string, a ...any) {
	b.l.Warn("badger: " + trimNL(fmt.Sprintf(f, a...)))
}

// Infof and Debugf are called by Badger on every write: format only when
// debug logging is on.
func (b badgerLogger) Infof(f string, a ...any) { b.Debugf(f, a...) }
func (b badgerLogger) Debugf(f string, a ...any) {
	if b.l.Enabled(context.Background(), slog.LevelDebug) {
		b.l.Debug("badger: " + trimNL(fmt.Sprintf(f, a...)))
	}
}

func trimNL(s string) string {
	for len(s) > 0 && s[len(s)-1] == '\n' {
		s = s[:len(s)-1]
	}
	return s
}
