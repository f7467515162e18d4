package sync

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"sort"
	gosync "sync"
	"time"

	"github.com/moongate-edge/moongate/store"
)

// Target delivers batches of outbox entries to one upstream system. The
// manager calls Deliver from a single goroutine per target, never
// concurrently, with entries in ascending outbox order; an implementation
// need not be safe for concurrent use except Close, which may be called
// while Deliver runs (it must make Deliver return soon).
type Target interface {
	// Deliver sends batch upstream and reports how far it got. Result.Done
	// is the length of the prefix of batch that is finished: each entry of
	// it was acknowledged by the upstream, or rejected for good (listed in
	// Result.Rejected). A non-nil error means the entries from Done on must
	// be retried later (the connection is considered down); a *RetryError
	// names the earliest retry time. Done may be short of the batch without
	// an error: the rest is read again for the next call (the http target
	// stops after each blob it sends, so that priority records get their
	// turn between long uploads).
	//
	// An entry with Blob set is a blob send: a target that implements
	// BlobSender sends the blob's content; the others send its metadata
	// record (Record) like any record.
	Deliver(ctx context.Context, batch []store.OutboxEntry) (Result, error)
	// Close releases the connection. Deliver after Close returns ErrClosed.
	Close() error
}

// Connector is implemented by targets that hold a connection: the manager
// calls Connect when the target is idle and not connected, so that the
// status shows connectivity before there is anything to send, and
// Connected to report it.
type Connector interface {
	Connect(ctx context.Context) error
	Connected() bool
}

// BlobSender is implemented by targets that send the content of blob
// sends (http); the manager then counts a blob send's content, not its
// stored entry, against the daily budget. SendsBlobContent reports
// whether the target does.
type BlobSender interface {
	SendsBlobContent() bool
}

// BlobObjects opens the content of a blob send: the object with the given
// SHA-256 (lower-case hex), which the store keeps on disk while the send
// is pending. *store.Store implements it; an error wrapping
// store.ErrNotFound means the object is gone.
type BlobObjects interface {
	OpenBlobObject(sha256 string) (*os.File, error)
}

// Preparer is implemented by targets that can do per-batch work (such as
// encoding) ahead of Deliver: while a batch is delivered, the manager reads
// the next one and passes it to Prepare from another goroutine. Deliver may
// use the result only for exactly that batch. Prepare must be safe to call
// concurrently with Deliver.
type Preparer interface {
	Prepare(batch []store.OutboxEntry)
}

// batchKey tells a prepared batch apart for Preparer implementations: the
// entries' sequences alone do not, since a target's priority outbox
// numbers its entries from 1 as its normal outbox does (a priority batch
// was once sent with a normal batch's encoding, and its records
// acknowledged unsent); record ids are unique across outboxes.
type batchKey struct {
	first, last     uint64
	n               int
	firstID, lastID string
}

func keyOf(batch []store.OutboxEntry) batchKey {
	if len(batch) == 0 {
		return batchKey{}
	}
	a, z := &batch[0], &batch[len(batch)-1]
	return batchKey{first: a.Seq, last: z.Seq, n: len(batch), firstID: a.Record.ID, lastID: z.Record.ID}
}

// Result is the outcome of one Deliver call.
type Result struct {
	Done     int         // length of the finished prefix of the batch
	Rejected []Rejection // entries of that prefix the upstream refused for good
}

// Rejection is an entry the upstream refused permanently, whatever the
// retries (an HTTP 4xx that concerns the records, such as 400, 413 or 422;
// a message larger than a NATS server, JetStream stream or mqtt target
// accepts): it goes to the store's dead letters with Reason, and the
// queue moves on.
type Rejection struct {
	Index  int    // index in the batch
	Reason string // e.g. the status and the response body
}

// Env is what a target constructor gets besides its configuration.
type Env struct {
	GatewayID string
	Logger    *slog.Logger
	// Objects opens the content of blob sends: the manager's store when it
	// implements BlobObjects, else nil.
	Objects BlobObjects
}

// Module registers a target type: ID is namespaced as "sync.target.<type>"
// and New builds a target from its configuration (already checked by
// TargetConfig.check for the common fields).
type Module struct {
	ID  string
	New func(cfg TargetConfig, env Env) (Target, error)
}

// ModulePrefix is the namespace of target modules.
const ModulePrefix = "sync.target."

var (
	modulesMu gosync.RWMutex
	modules   = map[string]Module{}
)

// Register adds a target module. It returns ErrDuplicateTarget when the id
// is taken and ErrInvalidConfig when the id is not in the ModulePrefix
// namespace or New is nil. It is safe for concurrent use.
func Register(m Module) error {
	if len(m.ID) <= len(ModulePrefix) || m.ID[:len(ModulePrefix)] != ModulePrefix || m.New == nil {
		return fmt.Errorf("%w: module id %q must be %s<type> with a constructor", ErrInvalidConfig, m.ID, ModulePrefix)
	}
	modulesMu.Lock()
	defer modulesMu.Unlock()
	if _, dup := modules[m.ID]; dup {
		return fmt.Errorf("%w: module %s registered twice", ErrDuplicateTarget, m.ID)
	}
	modules[m.ID] = m
	return nil
}

func mustRegister(m Module) {
	if err := Register(m); err != nil {
		panic(err)
	}
}

// Modules lists the registered module ids, sorted.
func Modules() []string {
	modulesMu.RLock()
	defer modulesMu.RUnlock()
	out := make([]string, 0, len(modules))
	for id := range modules {
		out = append(out, id)
	}
	sort.Strings(out)
	return out
}

func lookupModule(typ string) (Module, bool) {
	modulesMu.RLock()
	defer modulesMu.RUnlock()
	m, ok := modules[ModulePrefix+typ]
	return m, ok
}

// TargetConfig configures one upstream target. Zero values of the flow
// fields take the defaults named on each field.
type TargetConfig struct {
	Name string // outbox name, used in function manifests' sync lists
	Type string // mqtt | http | nats (module sync.target.<Type>)

	MaxRecords int           // per batch (default 500 for http, 2000 for mqtt and nats)
	MaxBytes   int           // of stored record values per batch (default 1 MiB)
	MaxDelay   time.Duration // a partial batch waits at most this long for more records (default 100ms; < 0: no wait)
	// Inflight is the window of messages awaiting an upstream
	// acknowledgement at once (mqtt, nats; default 256).
	Inflight int
	// BandwidthLimit caps the upload in record bytes per second (0: none);
	// the http target also paces the content of blobs to it.
	BandwidthLimit int64
	// DailyBudget caps the record bytes sent per UTC day (0: none),
	// counting the content of the blobs an http target sends; the priority
	// streams are exempt.
	DailyBudget int64
	// PriorityStreams are delivered before the backlog of other streams:
	// their records go to a separate outbox of the target (PriorityOutbox).
	PriorityStreams []string
	// InitialBackoff bounds the (jittered) wait after the first failure,
	// and after a failure of an attempt that still delivered part of its
	// batch (default 500ms); the bound doubles with each further failure
	// that delivers nothing.
	InitialBackoff time.Duration
	MaxBackoff     time.Duration // cap of the exponential backoff (default 60s)
	// AckTimeout bounds each upstream acknowledgement or HTTP request
	// (default 30s); a blob upload, whose length depends on its size,
	// is bounded instead by its progress: it fails when no byte of it
	// could be sent, or no answer came after it, for AckTimeout.
	AckTimeout time.Duration

	MQTT MQTTConfig
	HTTP HTTPConfig
	NATS NATSConfig
}

// TLSConfig names PEM files for a TLS client: CA (trusted instead of the
// system roots when set), and a client certificate and key (both or none).
type TLSConfig struct {
	CA                 string
	Cert               string
	Key                string
	InsecureSkipVerify bool
}

func (c *TargetConfig) withDefaults() {
	if c.MaxRecords <= 0 {
		// An HTTP batch is one request; for the message targets a batch is
		// only the unit of the pipeline, which drains at its end.
		c.MaxRecords = 500
		if c.Type != "http" {
			c.MaxRecords = 2000
		}
	}
	if c.MaxBytes <= 0 {
		c.MaxBytes = 1 << 20
	}
	if c.MaxDelay == 0 {
		c.MaxDelay = 100 * time.Millisecond
	}
	if c.Inflight <= 0 {
		c.Inflight = 256
	}
	if c.InitialBackoff <= 0 {
		c.InitialBackoff = 500 * time.Millisecond
	}
	if c.MaxBackoff <= 0 {
		c.MaxBackoff = 60 * time.Second
	}
	if c.MaxBackoff < c.InitialBackoff {
		c.MaxBackoff = c.InitialBackoff
	}
	if c.AckTimeout <= 0 {
		c.AckTimeout = 30 * time.Second
	}
}

// PrioritySuffix is appended to a target's name to form the name of its
// priority outbox. Target names in manifests cannot contain '!', so the
// two cannot collide.
const PrioritySuffix = "!priority"

// PriorityOutbox is the outbox that holds the priority streams of target.
func PriorityOutbox(target string) string { return target + PrioritySuffix }
