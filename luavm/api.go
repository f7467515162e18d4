package luavm

// This file pins the API that the rest of moongate (gateway, API, CLI) is
// written against. Its shape may grow; it must not break.

import (
	"context"
	"log/slog"
	"time"
)

// Limits are the enforced per-invocation limits of one function. The zero
// value of a field means "use the default" (see DefaultLimits).
type Limits struct {
	Timeout        time.Duration // wall clock per invocation (default 1s)
	MaxSteps       int64         // execution budget in VM steps (default 10,000,000)
	MaxMemory      int64         // accounted bytes (default 16 MiB)
	MaxCallDepth   int           // Lua call depth (default 200)
	MaxResultBytes int           // encoded return value (default 256 KiB)
	MaxEffects     int           // effects per invocation (default 100)
	MaxEffectBytes int           // payload bytes of one effect (default 256 KiB)
	MaxLogLines    int           // captured log lines (default 100)
	MaxStateOps    int           // state.set/delete/incr calls (default 100)
}

// HTTPRequest is the request part of an event from an HTTP trigger.
type HTTPRequest struct {
	Method  string
	Path    string
	Query   map[string][]string
	Headers map[string]string
	Body    []byte
}

// Event is the input of one invocation. The gateway fills it from a trigger.
type Event struct {
	ID       string            // stable id of the event (unique per gateway)
	Topic    string            // MQTT topic, or "" for non-MQTT triggers
	Payload  []byte            // raw payload
	Captures map[string]string // named segments of the trigger pattern, e.g. "device"
	TS       int64             // receive time, ms since the epoch
	QoS      byte
	Trigger  string // "mqtt", "http", "timer", "invoke"
	HTTP     *HTTPRequest
}

// Spec describes one deployable function version.
type Spec struct {
	Name           string
	Version        int64
	Source         []byte
	Limits         Limits
	Config         map[string]any // exposed read-only as ctx.config
	MinInstances   int            // kept warm (default 0)
	MaxConcurrency int            // concurrent invocations (default 4)
	IdleTimeout    time.Duration  // idle instances reclaimed after (default 60s)
	QueueTimeout   time.Duration  // wait for a free instance before ErrBusy (default 5s)
	MaxWaiting     int            // callers allowed to wait for an instance (default 4*MaxConcurrency)
	// Tag is the caller's own, given back in the Result of every
	// invocation of this version (Result.Tag): the gateway keeps the
	// version's Function there, to route its outputs by the manifest of
	// the version that ran, whatever was deployed since.
	Tag any
}

// StateReader is how a function reads its state. Writes are not made through
// it: they are returned in Result.State and committed atomically with the
// invocation's other outputs.
type StateReader interface {
	GetState(ctx context.Context, function, key string) (value []byte, ok bool, err error)
}

// BlobReader is how a function reads blobs (blob.read). It is optional:
// when the StateReader given to Invoke also implements it, functions can
// read blobs; otherwise blob.read raises an error. ReadBlob returns up to n
// bytes from offset off (fewer at the end, none past it) and the blob's
// size. The returned slice becomes the caller's: the Lua string shares its
// memory, so the implementation must not keep, reuse or modify it.
type BlobReader interface {
	ReadBlob(ctx context.Context, bucket, name string, off int64, n int) (data []byte, size int64, err error)
}

// BlobVersionReader, when the StateReader given to Invoke also implements
// it, makes every blob.read of one invocation read the same version of a
// blob: the version current at its first read, even if the blob is
// replaced or deleted meanwhile (a function reading a blob in chunks never
// mixes two versions). Versions are closed when the invocation ends.
type BlobVersionReader interface {
	OpenBlobVersion(ctx context.Context, bucket, name string) (BlobVersion, error)
}

// BlobVersion is one version of a blob, open for reading.
type BlobVersion interface {
	ReadAt(p []byte, off int64) (int, error)
	Size() int64
	Close() error
}

// ResultKind says what a function returned.
type ResultKind int

// Result kinds.
const (
	ResultNone   ResultKind = iota // nil
	ResultJSON                     // a table, JSON-encoded into Value
	ResultString                   // a string, raw in Value
)

// EffectKind says what an effect asks for.
type EffectKind int

// Effect kinds.
const (
	EffectPublish    EffectKind = iota + 1 // mqtt.publish
	EffectEmit                             // emit(stream, record)
	EffectBlobWrite                        // blob.write(bucket, name, data[, content_type])
	EffectBlobDelete                       // blob.delete(bucket, name)
)

// Effect is an output requested by a function, carried out by the pipeline
// only after the invocation's commit.
type Effect struct {
	Kind    EffectKind
	Topic   string // EffectPublish
	Payload []byte // EffectPublish
	QoS     byte   // EffectPublish
	Retain  bool   // EffectPublish
	Stream  string // EffectEmit
	Record  []byte // EffectEmit: JSON
	// EffectBlobWrite and EffectBlobDelete: the blob; EffectBlobWrite
	// carries its content in Payload.
	Bucket      string
	Name        string
	ContentType string // EffectBlobWrite
}

// StateOpKind is a buffered state change.
type StateOpKind int

// State operation kinds.
const (
	StateSet StateOpKind = iota + 1
	StateDelete
	StateIncr
)

// StateOp is one state change made by an invocation, in call order. Values
// are JSON. StateIncr carries Delta and is applied as a delta at commit.
type StateOp struct {
	Op    StateOpKind
	Key   string
	Value []byte
	Delta float64
}

// LogEntry is one log line written by a function.
type LogEntry struct {
	Level  slog.Level
	Msg    string
	Fields []byte // JSON object or nil
	TimeMS int64
}

// Cost is the metering of one invocation.
type Cost struct {
	Wall       time.Duration
	Steps      int64
	PeakMemory int64 // accounted bytes
	BytesIn    int64
	BytesOut   int64
	Effects    int
	Outcome    string // "ok", "error", "timeout", "budget", "memory", ...
}

// Result is the outcome of one invocation. Invoke returns a non-nil Result
// (with Logs and Cost filled) even when it also returns an error.
type Result struct {
	Function     string
	Version      int64
	Tag          any    // the Spec.Tag of the version that ran
	InvocationID string // the id the function saw as ctx.invocation_id
	Kind         ResultKind
	Value        []byte
	// Body is set when Value is a JSON object whose "body" field came
	// from a Lua string that is not valid UTF-8: its bytes as they were
	// (JSON carries them with U+FFFD in place of the bad bytes). An HTTP
	// trigger sends it as the response body.
	Body    []byte
	Effects []Effect
	State   []StateOp
	Logs    []LogEntry
	Cost    Cost
}
