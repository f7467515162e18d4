package config

import (
	"fmt"
	"strconv"
	"strings"

	"go.yaml.in/yaml/v3"
)

// MaxProcs is how many goroutines may run Go code at once, the max_procs
// key: what `moongate serve` passes to runtime.GOMAXPROCS unless the
// GOMAXPROCS environment variable is set (which wins). In YAML it is
// "auto" or a number from 1 to [MaxMaxProcs]; [MaxProcsAuto] (the zero
// value) stands for "auto", the default.
//
// "auto" is twice the processors the Go runtime would use by itself (the
// machine's, or fewer under a CPU quota). The daemon's commit path waits
// in file syncs (msync of Badger's write-ahead log, which blocks for the
// device's flush), and a goroutine blocked in a system call keeps its
// processor slot until the runtime's monitor takes it back, tens of
// microseconds to milliseconds later; with as many slots as cores, the
// rest of the pipeline waits behind it. Twice as many slots keep the
// cores busy meanwhile: measured with moongate-bench, 8 % more events/s
// on 2 cores and a lower tail (docs/performance.md).
type MaxProcs int

const (
	// MaxProcsAuto is "auto": twice the runtime's own default.
	MaxProcsAuto MaxProcs = 0
	// MaxMaxProcs is the largest max_procs accepted.
	MaxMaxProcs MaxProcs = 1024
)

// String formats m as written in YAML: "auto" or the number.
func (m MaxProcs) String() string {
	if m == MaxProcsAuto {
		return "auto"
	}
	return strconv.Itoa(int(m))
}

// Resolve is the number of goroutines that may run Go code at once that m
// asks for, given the runtime's default (runtime.GOMAXPROCS(0) before any
// change).
func (m MaxProcs) Resolve(runtimeDefault int) int {
	if m == MaxProcsAuto {
		return 2 * max(runtimeDefault, 1)
	}
	return int(m)
}

// UnmarshalYAMLNode implements [NodeUnmarshaler].
func (m *MaxProcs) UnmarshalYAMLNode(_, _ string, n *yaml.Node) error {
	if n.Kind != yaml.ScalarNode {
		return fmt.Errorf("expected auto or a number of processors, got %s", describe(n))
	}
	switch n.Tag {
	case "!!str":
		if strings.TrimSpace(n.Value) == "auto" {
			*m = MaxProcsAuto
			return nil
		}
		return fmt.Errorf("invalid value %q: want auto or a number from 1 to %d", clip(n.Value), MaxMaxProcs)
	case "!!int":
		v, err := strconv.ParseInt(n.Value, 0, 64)
		if err != nil || v < 1 || v > int64(MaxMaxProcs) {
			return fmt.Errorf("invalid value %s: want auto or a number from 1 to %d", clip(n.Value), MaxMaxProcs)
		}
		*m = MaxProcs(v)
		return nil
	}
	return fmt.Errorf("expected auto or a number of processors, got %s", describe(n))
}

func (v *validator) maxProcs() {
	if m := v.c.MaxProcs; m < 0 || m > MaxMaxProcs {
		v.add("max_procs", "invalid value %d: want auto or a number from 1 to %d", int(m), MaxMaxProcs)
	}
}
