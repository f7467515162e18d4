package store

// This file pins the types that the rest of moongate (gateway, sync, API) is
// written against. Their shape may grow; it must not break.

// InboxEntry is one accepted unit of work: an event for one function. The
// gateway fans an event out into one entry per matching function when it
// accepts it, so that each (event, function) pair is consumed exactly once.
type InboxEntry struct {
	Seq      uint64 // assigned by Enqueue; strictly increasing
	Function string
	Key      string // ordering key (device, or topic): same key, same order
	Event    []byte // opaque, encoded by the gateway
	// Fingerprint, when set (FingerprintSize bytes), identifies the message
	// the entry came from, for Store.Redelivered. Set it on one entry of a
	// message.
	Fingerprint []byte
	// Sender and PacketID (with Fingerprint) also keep the fingerprint in
	// the sender's own redelivery slots, slot PacketID mod SenderSlots, so
	// that its redelivery is recognised however many messages of others
	// were accepted meanwhile. Sender is the MQTT client id ("" when there
	// is none, e.g. messages from an external broker).
	Sender   string
	PacketID uint16
	// DeadLetter, when not 0, is the sequence of a dead letter this entry
	// replays: Enqueue deletes it in the same atomic write (and fails with
	// ErrNotFound, enqueuing nothing, when it is gone), so a replayed event
	// is either still a dead letter or in the inbox, never both.
	DeadLetter uint64
}

// Record is a function result or an emitted record, stored locally and
// routed to upstream outboxes.
type Record struct {
	Seq         uint64 // assigned at commit
	ID          string // stable id, assigned at commit: Store.IDPrefix + sequence
	Stream      string
	Function    string
	Device      string
	EventID     string
	EventTS     int64 // ms, as received
	ProcessedTS int64 // ms
	ClockSynced bool
	Data        []byte   // JSON
	Targets     []string // upstream outboxes to route to (may be empty)
}

// StateChange is one change to a function's state, applied in order at commit.
type StateChange struct {
	Function string
	Op       StateOp
	Key      string
	Value    []byte  // StateSet
	Delta    float64 // StateIncr: added to the stored JSON number (missing = 0)
}

// StateOp is the kind of a StateChange.
type StateOp int

// State operations.
const (
	StateSet StateOp = iota + 1
	StateDelete
	StateIncr
)

// Publish is a local MQTT publish to perform after commit (the publish outbox).
type Publish struct {
	Seq     uint64 // assigned at commit
	Topic   string
	Payload []byte
	QoS     byte
	Retain  bool
}

// DeadLetter is an event whose function failed for good.
type DeadLetter struct {
	Seq      uint64 // assigned at commit
	Function string
	Key      string
	Event    []byte
	Error    string
	Attempts int
	TS       int64 // ms

	// Fingerprint, Sender and PacketID, when Fingerprint is set
	// (FingerprintSize bytes), name the MQTT message this dead letter
	// refuses at intake, as InboxEntry's do for an accepted one: the
	// message counts as accepted, so that Store.Redelivered recognises its
	// redelivery (the device's resend after a lost PUBACK) instead of
	// letting it be refused, and dead-lettered, a second time. They are not
	// stored with the dead letter.
	Fingerprint []byte
	Sender      string
	PacketID    uint16
}

// LogRecord is one invocation log line kept with short retention.
type LogRecord struct {
	Seq          uint64
	Function     string
	InvocationID string
	Level        string
	Msg          string
	Fields       []byte // JSON or nil
	TS           int64  // ms
}

// Usage is the metering of one invocation, aggregated by the store per
// function and time bucket.
type Usage struct {
	Function    string
	TS          int64 // ms
	Invocations int64
	Errors      int64
	Steps       int64
	WallMicros  int64
	BytesIn     int64
	BytesOut    int64
}

// Commit is everything one processed inbox entry produced. Store.Commit
// applies it all-or-nothing and durably.
type Commit struct {
	InboxSeq   uint64 // consumed inbox entry; 0 when there is none (invoke, timer)
	Records    []Record
	State      []StateChange
	Publishes  []Publish
	DeadLetter *DeadLetter
	Logs       []LogRecord
	Usage      *Usage

	// Chain, when not nil, is called by the committer for every record and
	// every state change of the commit, in order, with their final values
	// (records with Seq and ID assigned; state with the value before and
	// after). The inbox entries it returns are appended to the inbox in the
	// same atomic write: this is how function chaining runs a downstream
	// function exactly once per committed output. It runs inside the group
	// committer, so it must be quick, must not block and must not call the
	// Store; it must not keep the Change.
	Chain func(Change) []InboxEntry

	// Blobs are blob puts and deletes (see BlobOp), applied in order. A
	// put's object must have been staged (StageBlob) and stay held until
	// Commit returns; each put is offered to Chain (Change.Blob).
	Blobs []BlobOp
	// ChainMax bounds the number of entries Chain may return in all (it
	// sizes the write); more is an ErrInvalid and nothing is applied.
	ChainMax int
	// ChainQueued says the caller queues the entries Chain returned
	// itself (from CommitResult.Inbox): they are not handed to the func
	// of SetChained.
	ChainQueued bool

	// chainEst is what Commit reserved in the write for the chained
	// entries: more is refused with ErrTooLarge (see chain).
	chainEst int64

	// AckPublishes are local publishes (Publish.Seq) acknowledged in the
	// same atomic write, as AckPublishes does: e.g. a publish that can
	// never be carried out, taken off the outbox together with its dead
	// letter. Sequences not waiting are skipped; at most 1,024.
	AckPublishes []uint64
}

// Change is one committed output offered to Commit.Chain: exactly one of
// Record, State and Blob is set.
type Change struct {
	Record *Record
	State  *StateUpdate
	Blob   *BlobInfo // a blob put, with its final metadata
}

// StateUpdate is a state change as it is applied: the key's value before
// and after (nil when absent).
type StateUpdate struct {
	Function string
	Key      string
	Old      []byte
	New      []byte
}

// OutboxEntry is a record, or a blob send, waiting for delivery to one
// upstream target.
type OutboxEntry struct {
	Seq    uint64 // per-target sequence
	Record Record // for a blob send, its metadata record (stream BlobStream)
	Size   int    // stored bytes of the entry
	// Blob, when not nil, makes the entry a blob send: the blob's content
	// (Store.OpenBlobObject) is what is to be delivered. Record then is
	// its metadata, for targets that send records only.
	Blob *BlobSend
}
