package config

import (
	"fmt"
	"strings"

	"go.yaml.in/yaml/v3"
)

// MemoryLimit is the soft memory limit of the Go runtime, the memory_limit
// key: what `moongate serve` passes to runtime/debug.SetMemoryLimit unless
// the GOMEMLIMIT environment variable is set (which wins). In YAML it is
// "auto", "off" (or 0) for no limit, or a [Size] of at least
// [MinMemoryLimit]. [MemoryLimitAuto] stands for "auto", 0 for "off"; the
// default is "auto".
//
// Above the limit the garbage collector runs more often (at most about
// half the processor time), so the heap stays near the limit instead of
// growing to twice what is live; it is soft: a live heap larger than the
// limit goes above it rather than failing.
type MemoryLimit int64

// Memory limit values.
const (
	// MemoryLimitAuto is "auto": [DefaultMemoryLimit] with the low-memory
	// store profile, no limit with the large one.
	MemoryLimitAuto MemoryLimit = -1
	// MemoryLimitOff is "off": no limit.
	MemoryLimitOff MemoryLimit = 0
	// DefaultMemoryLimit is what "auto" gives with the low-memory store
	// profile: sized from measurement (docs/performance.md, "Footprint")
	// so that the default configuration stays under 60 MiB of RSS at 1,000
	// events/s without the collector taking a noticeable share of the
	// processor (20 MiB did, 16 MiB thrashed).
	DefaultMemoryLimit = Size(24 << 20)
	// MinMemoryLimit is the smallest limit accepted: below it the collector
	// would run almost continuously (the daemon's live heap alone is 8-15
	// MiB at 1,000 events/s).
	MinMemoryLimit = Size(16 << 20)
)

// String formats m as written in YAML: "auto", "off" or a size ("24MiB").
func (m MemoryLimit) String() string {
	switch {
	case m == MemoryLimitAuto:
		return "auto"
	case m == MemoryLimitOff:
		return "off"
	case m < 0:
		return fmt.Sprintf("MemoryLimit(%d)", int64(m))
	}
	return Size(m).String()
}

// UnmarshalYAMLNode implements [NodeUnmarshaler].
func (m *MemoryLimit) UnmarshalYAMLNode(file, path string, n *yaml.Node) error {
	if n.Kind == yaml.ScalarNode && n.Tag == "!!str" {
		switch strings.TrimSpace(n.Value) {
		case "auto":
			*m = MemoryLimitAuto
			return nil
		case "off":
			*m = MemoryLimitOff
			return nil
		}
	}
	var s Size
	if err := s.UnmarshalYAMLNode(file, path, n); err != nil {
		return fmt.Errorf("%w (or auto, or off for no limit)", err)
	}
	*m = MemoryLimit(s)
	return nil
}

// MemoryLimitBytes is the limit memory_limit asks for, in bytes, with
// "auto" resolved for the store profile; 0 means no limit.
func (c *Config) MemoryLimitBytes() int64 {
	if c.MemoryLimit == MemoryLimitAuto {
		if c.Store.Profile == ProfileLarge {
			return 0
		}
		return int64(DefaultMemoryLimit)
	}
	return max(int64(c.MemoryLimit), 0)
}

func (v *validator) memoryLimit() {
	m := v.c.MemoryLimit
	switch {
	case m == MemoryLimitAuto || m == MemoryLimitOff:
	case m < 0:
		v.add("memory_limit", "invalid value %d", int64(m))
	case Size(m) < MinMemoryLimit:
		v.add("memory_limit", "%s is below the minimum of %s (the collector would run almost continuously); use off for no limit", Size(m), MinMemoryLimit)
	}
}
