package mqtt

import (
	"context"
	"fmt"
	"log/slog"
	"runtime/debug"
	"sync"
	"sync/atomic"
	"time"

	"github.com/moongate-edge/moongate/mqtt/topics"
)

// Message is one inbound MQTT publish. The Handler may keep it and its
// Payload after returning; nothing else modifies them.
type Message struct {
	Topic    string
	Payload  []byte
	QoS      byte
	Retain   bool
	ClientID string // embedded mode: the publishing device's client id; external mode: the broker session (ExternalConfig.SessionFile), "" without one
	Username string // embedded mode: the publishing device's username; external mode: ""
	// Duplicate is set when the sender marked the publish as a possible
	// redelivery (MQTT DUP flag).
	Duplicate bool
	// PacketID is the MQTT packet identifier (QoS > 0). A redelivery keeps
	// it; messages in flight together have different ones.
	PacketID uint16
	Received time.Time
	// Clipped, in external mode, is the real length of a payload longer
	// than ExternalConfig.MaxPayload: Payload then holds only its first
	// MaxPayload+1 bytes (the rest was never held). Embedded mode refuses
	// such payloads before the Handler.
	Clipped int
}

// Handler is called for every inbound message on an accepted topic. It must
// return nil only once the message is durable; only then is the message
// acknowledged to its sender. A non-nil error means "not accepted" (see the
// package documentation for what the sender sees); an error wrapping
// ErrReject refuses the message for good. The Handler may block for
// backpressure: that stalls intake from that connection instead of dropping
// messages or growing memory. It should return promptly once ctx is done.
// Handlers are called concurrently for different clients and messages, but
// never twice for the same message within one connection.
type Handler func(ctx context.Context, m *Message) error

// Ingest is the one interface the gateway sees; Embedded and External
// implement it. Implementations are safe for concurrent use.
type Ingest interface {
	// Start begins intake and returns once it is ready (listening, or
	// connected and subscribed) or ctx is done. ctx bounds only the start-up;
	// intake runs until Close.
	Start(ctx context.Context, h Handler) error
	// SetFilters replaces the set of topic filters (MQTT syntax with + and #)
	// whose messages go to the Handler. Until the first call, inbound
	// messages wait (flow control) rather than being dropped, so call it
	// before or right after Start.
	SetFilters(ctx context.Context, filters []string) error
	// Publish sends a message and returns when it was sent (QoS 0) or
	// acknowledged (QoS 1 and 2).
	Publish(ctx context.Context, topic string, payload []byte, qos byte, retain bool) error
	// Ready reports whether intake is running (listening, or connected and
	// subscribed).
	Ready() bool
	// Close stops intake first, then waits for in-flight handlers (until ctx
	// is done, when it cancels their context), then closes.
	Close(ctx context.Context) error
}

// Stats are cumulative counters since construction. The zero value is all
// zeros.
type Stats struct {
	Received uint64 // inbound publishes seen
	Accepted uint64 // passed to the Handler, which returned nil
	Ignored  uint64 // matched no filter (embedded: only routed to subscribers; external: acknowledged and dropped), or RetainedReplays
	// RetainedReplays counts retained messages an external broker replayed
	// because moongate subscribed (RETAIN flag set), acknowledged and not
	// handled (external mode; also counted in Ignored).
	RetainedReplays uint64
	Rejected        uint64 // sum of the Rejected* counters below
	// RejectedOversize counts payloads over the maximum (embedded mode).
	RejectedOversize uint64
	// RejectedInvalidTopic counts publishes with an invalid topic name.
	RejectedInvalidTopic uint64
	// RejectedUnauthorized counts publishes outside the sender's ACL.
	RejectedUnauthorized uint64
	// RejectedHandler counts messages the Handler returned an error for.
	RejectedHandler uint64
	// AuthFailures counts connections refused for bad credentials
	// (embedded mode).
	AuthFailures uint64
	// Published counts successful Publish calls.
	Published uint64
	// Reconnects counts connections to the broker after the first
	// (external mode).
	Reconnects uint64
	// DroppedQoS0 counts QoS 0 deliveries dropped because too many
	// handlers were already running (external mode; QoS 0 has no flow
	// control).
	DroppedQoS0 uint64
	// RetainedRefused counts retained publishes delivered without being
	// retained because MaxRetained topics already held one (embedded mode).
	RetainedRefused uint64
	// ConnectionsShed counts connections turned away before they
	// authenticated because the broker was busy (embedded mode): closed
	// unread because MaxUnauthenticated connections of their listener had
	// not authenticated yet, or refused with CONNACK "server unavailable"
	// after waiting too long for their password check.
	ConnectionsShed uint64
	// SessionsEvicted counts persistent sessions of offline devices
	// discarded before they expired, to make room for a new client id
	// (EmbeddedConfig.MaxSessions).
	SessionsEvicted uint64
	// Clipped counts inbound payloads cut to ExternalConfig.MaxPayload+1
	// bytes as they were read (external mode).
	Clipped uint64

	// The embedded broker's state at the time of the call (zero in
	// external mode): clients connected; sessions held, connected or not
	// (persistent sessions of offline devices included); topics holding a
	// retained message; QoS 1/2 messages queued or in flight to clients;
	// and messages dropped so far for clients too slow to take them.
	ClientsConnected, Sessions, Retained, Inflight int64
	MessagesDropped                                int64
}

type counters struct {
	received, accepted, ignored                             atomic.Uint64
	oversize, invalidTopic, unauthorized, handlerRejections atomic.Uint64
	authFailures, published, reconnects, droppedQoS0        atomic.Uint64
	retainedRefused, connectionsShed, sessionsEvicted       atomic.Uint64
	clipped, retainedReplays                                atomic.Uint64
}

func (c *counters) snapshot() Stats {
	s := Stats{
		Received:             c.received.Load(),
		Accepted:             c.accepted.Load(),
		Ignored:              c.ignored.Load(),
		RetainedReplays:      c.retainedReplays.Load(),
		RejectedOversize:     c.oversize.Load(),
		RejectedInvalidTopic: c.invalidTopic.Load(),
		RejectedUnauthorized: c.unauthorized.Load(),
		RejectedHandler:      c.handlerRejections.Load(),
		AuthFailures:         c.authFailures.Load(),
		Published:            c.published.Load(),
		Reconnects:           c.reconnects.Load(),
		DroppedQoS0:          c.droppedQoS0.Load(),
		RetainedRefused:      c.retainedRefused.Load(),
		ConnectionsShed:      c.connectionsShed.Load(),
		SessionsEvicted:      c.sessionsEvicted.Load(),
		Clipped:              c.clipped.Load(),
	}
	s.Rejected = s.RejectedOversize + s.RejectedInvalidTopic + s.RejectedUnauthorized + s.RejectedHandler
	return s
}

// validateFilters checks every filter and returns a de-duplicated copy.
func validateFilters(filters []string) ([]string, error) {
	out := make([]string, 0, len(filters))
	seen := make(map[string]bool, len(filters))
	for _, f := range filters {
		if err := topics.ValidFilter(f); err != nil {
			return nil, err
		}
		if !seen[f] {
			seen[f] = true
			out = append(out, f)
		}
	}
	return out, nil
}

// gate tracks in-flight handler calls and lets Close stop new ones and wait
// for the running ones.
type gate struct {
	mu       sync.Mutex
	n        int
	closing  bool
	idle     chan struct{} // closed when closing and n == 0
	closingC chan struct{} // closed when closing starts
}

func newGate() *gate {
	return &gate{idle: make(chan struct{}), closingC: make(chan struct{})}
}

// enter registers one handler call; false once closing.
func (g *gate) enter() bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.closing {
		return false
	}
	g.n++
	return true
}

func (g *gate) leave() {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.n--
	if g.closing && g.n == 0 {
		close(g.idle)
	}
}

func (g *gate) isClosing() bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.closing
}

// close stops new calls; it returns a channel closed once none is in flight.
func (g *gate) close() <-chan struct{} {
	g.mu.Lock()
	defer g.mu.Unlock()
	if !g.closing {
		g.closing = true
		close(g.closingC)
		if g.n == 0 {
			close(g.idle)
		}
	}
	return g.idle
}

// filters holds the current filter set; the channel is closed on the first
// SetFilters so waiting messages proceed.
type filters struct {
	cur  atomic.Pointer[[]string]
	once sync.Once
	setC chan struct{}
}

func newFilters() *filters { return &filters{setC: make(chan struct{})} }

func (f *filters) set(list []string) {
	f.cur.Store(&list)
	f.once.Do(func() { close(f.setC) })
}

// wait returns the current filters once set; ok is false if stop or ctx
// ended first.
func (f *filters) wait(ctx context.Context, stop <-chan struct{}) (list []string, ok bool) {
	if p := f.cur.Load(); p != nil {
		return *p, true
	}
	select {
	case <-f.setC:
		return *f.cur.Load(), true
	case <-stop:
		return nil, false
	case <-ctx.Done():
		return nil, false
	}
}

// errHandlerPanic is the error a Handler call is treated as returning when
// it panicked; the message is then not accepted.
var errHandlerPanic = fmt.Errorf("mqtt: handler panicked")

// callHandler runs h, turning a panic into an error so a faulty Handler
// cannot take down the broker goroutine (and with it the process).
func callHandler(ctx context.Context, h Handler, m *Message, log *slog.Logger) (err error) {
	defer func() {
		if r := recover(); r != nil {
			log.Error("mqtt handler panicked; message not accepted", "topic", m.Topic, "panic", r, "stack", string(debug.Stack()))
			err = fmt.Errorf("%w: %v", errHandlerPanic, r)
		}
	}()
	return h(ctx, m)
}
