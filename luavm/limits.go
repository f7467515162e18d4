package luavm

import "time"

// Default limits (see Limits).
const (
	DefaultTimeout        = time.Second
	DefaultMaxSteps       = 10_000_000
	DefaultMaxMemory      = 16 << 20
	DefaultMaxCallDepth   = 200
	DefaultMaxResultBytes = 256 << 10
	DefaultMaxEffects     = 100
	DefaultMaxEffectBytes = 256 << 10
	DefaultMaxLogLines    = 100
	DefaultMaxStateOps    = 100
	// DefaultMaxSourceBytes is the default source size limit of Compile.
	DefaultMaxSourceBytes = 256 << 10
)

// DefaultLimits returns the built-in default limits.
func DefaultLimits() Limits {
	return Limits{
		Timeout:        DefaultTimeout,
		MaxSteps:       DefaultMaxSteps,
		MaxMemory:      DefaultMaxMemory,
		MaxCallDepth:   DefaultMaxCallDepth,
		MaxResultBytes: DefaultMaxResultBytes,
		MaxEffects:     DefaultMaxEffects,
		MaxEffectBytes: DefaultMaxEffectBytes,
		MaxLogLines:    DefaultMaxLogLines,
		MaxStateOps:    DefaultMaxStateOps,
	}
}

// WithDefaults returns l with every zero (or negative) field replaced by the
// built-in default.
func (l Limits) WithDefaults() Limits {
	return l.withBase(DefaultLimits())
}

// withBase fills the zero fields of l from base.
func (l Limits) withBase(base Limits) Limits {
	if l.Timeout <= 0 {
		l.Timeout = base.Timeout
	}
	if l.MaxSteps <= 0 {
		l.MaxSteps = base.MaxSteps
	}
	if l.MaxMemory <= 0 {
		l.MaxMemory = base.MaxMemory
	}
	if l.MaxCallDepth <= 0 {
		l.MaxCallDepth = base.MaxCallDepth
	}
	if l.MaxResultBytes <= 0 {
		l.MaxResultBytes = base.MaxResultBytes
	}
	if l.MaxEffects <= 0 {
		l.MaxEffects = base.MaxEffects
	}
	if l.MaxEffectBytes <= 0 {
		l.MaxEffectBytes = base.MaxEffectBytes
	}
	if l.MaxLogLines <= 0 {
		l.MaxLogLines = base.MaxLogLines
	}
	if l.MaxStateOps <= 0 {
		l.MaxStateOps = base.MaxStateOps
	}
	return l
}

// MaxStreamNameBytes is the longest stream name emit accepts: the store's
// limit on names.
const MaxStreamNameBytes = 1024
