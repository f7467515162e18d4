package mqtt

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	mochi "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/moongate-edge/moongate/mqtt/topics"
)

// Defaults for EmbeddedConfig fields left at their zero value.
const (
	DefaultListen             = "127.0.0.1:1883"
	DefaultMaxPayload         = 256 << 10
	DefaultMaxSessionExpiry   = time.Hour
	DefaultMaxInflight        = 64
	DefaultMaxQueuedPerClient = 1000
	DefaultMaxClients         = 1000
	DefaultMaxRetained        = 10000
	DefaultMaxRetainedBytes   = 32 << 20
	// DefaultMaxSubscriptionsPerClient is EmbeddedConfig.MaxSubscriptionsPerClient's default.
	DefaultMaxSubscriptionsPerClient = 256
	DefaultMaxUnauthenticated        = 64
	// DefaultMaxUnauthenticatedPerAddress is the default of
	// EmbeddedConfig.MaxUnauthenticatedPerAddress: a quarter of the
	// default MaxUnauthenticated.
	DefaultMaxUnauthenticatedPerAddress = 16
)

// EmbeddedConfig configures the embedded broker. The zero value (after
// defaults) listens on 127.0.0.1:1883 and refuses every device, because
// AllowAnonymous is false and there are no users.
type EmbeddedConfig struct {
	// Listen is the TCP address of the MQTT listener; default
	// "127.0.0.1:1883". Port 0 picks a free port (see Embedded.Addr).
	Listen string
	// WebSocketListen is an optional address for MQTT over WebSocket.
	WebSocketListen string
	// TLSCert and TLSKey are optional PEM files; when set, both listeners
	// use TLS.
	TLSCert, TLSKey string
	// AllowAnonymous lets clients without a username connect, but only
	// through a loopback listener. Anonymous clients may publish and
	// subscribe to any topic.
	AllowAnonymous bool
	// Users are the device accounts. A non-loopback listener requires at
	// least one user (NewEmbedded fails with ErrInsecureListener otherwise).
	Users []User
	// MaxPayload is the largest accepted publish payload in bytes; default
	// 256 KiB. Larger publishes are refused (and counted); packets over
	// 4*MaxPayload+64 KiB close the connection without being read.
	MaxPayload int
	// MaxSessionExpiry caps how long a disconnected persistent session (and
	// the messages queued for it) is kept; default 1h.
	MaxSessionExpiry time.Duration
	// MaxInflight is the receive maximum advertised to MQTT v5 clients
	// (unacknowledged QoS>0 publishes in flight per client); default 64.
	MaxInflight int
	// MaxQueuedPerClient bounds the QoS>0 messages stored per client for
	// delivery, online or offline (mochi-mqtt/server#340); default 1000.
	// Messages beyond it are dropped for that client.
	MaxQueuedPerClient int
	// MaxQueuedBytesPerClient bounds the payload and topic bytes held for
	// one client, in flight (QoS 1/2) and waiting to be written (any QoS):
	// past it a message to that client is dropped, as past
	// MaxQueuedPerClient. It keeps a client that stops reading (or a
	// hostile one that publishes large messages to its own subscription)
	// from pinning MaxQueuedPerClient x MaxPayload bytes. Default
	// 4*MaxPayload, at least MaxPayload+64 KiB, which is also the minimum
	// (any accepted message fits).
	MaxQueuedBytesPerClient int64
	// MaxClients bounds concurrently connected clients (about 35 KB each);
	// default 1000. Further connections get CONNACK "server unavailable"
	// (MQTT 5: "server busy").
	MaxClients int
	// MaxUnauthenticated bounds, per listener, the connections that have
	// not authenticated yet (TLS handshake, CONNECT, password check);
	// default 64. A connection beyond it is closed at once, unread, and
	// counted in Stats.ConnectionsShed. Each may hold up to the CONNECT
	// bound (MaxPayload+16 KiB) while its CONNECT is read.
	MaxUnauthenticated int
	// MaxUnauthenticatedPerAddress bounds how many of a listener's
	// MaxUnauthenticated slots connections from one address (an IPv4
	// address, an IPv6 /64) may hold at once, so that one host flooding
	// the listener cannot keep every other device out; default
	// DefaultMaxUnauthenticatedPerAddress, at most MaxUnauthenticated. A
	// connection beyond it is closed at once, unread, and counted in
	// Stats.ConnectionsShed. Behind a reverse proxy (WebSocket) every
	// connection comes from the proxy's address.
	MaxUnauthenticatedPerAddress int
	// MaxRetained bounds the topics holding a retained message; default
	// 10000. A retained publish to a new topic beyond it is delivered but
	// not retained (Stats.RetainedRefused); replacing or clearing the
	// retained message of a topic always works.
	MaxRetained int
	// MaxRetainedBytes bounds the payload bytes of all retained messages
	// together (they are held in memory and kept in the store); default
	// DefaultMaxRetainedBytes. A retained publish that would take the total
	// over it is delivered but not retained (Stats.RetainedRefused), as for
	// MaxRetained; a smaller replacement or a clear always works.
	MaxRetainedBytes int64
	// MaxSubscriptionsPerClient bounds the subscriptions one client may
	// hold (about 1.4 KB of memory each, and kept in the store for a
	// persistent session); a SUBSCRIBE to a new filter beyond it gets
	// reason 0x97 (quota exceeded; 0x80 for MQTT 3.1.1). Default 256.
	MaxSubscriptionsPerClient int
	// MaxSessions bounds the clients the broker holds, connected or not: a
	// persistent session is kept for an offline device until it expires
	// (MaxSessionExpiry), and one device could otherwise make the broker
	// keep any number of them (a new client id per connection). A
	// connection under a new client id that would go past it first expires
	// the session of the device offline the longest (Stats.SessionsEvicted);
	// connected clients are never evicted. Default (0): MaxClients, so
	// that the broker's worst case memory is what MaxClients sets; at least
	// MaxClients.
	MaxSessions int
	// Sessions, when set, keeps persistent sessions (their subscriptions
	// and queued messages) and retained messages across restarts; nil keeps
	// them in memory only.
	Sessions SessionStore
}

func (c *EmbeddedConfig) applyDefaults() {
	if c.Listen == "" {
		c.Listen = DefaultListen
	}
	if c.MaxPayload == 0 {
		c.MaxPayload = DefaultMaxPayload
	}
	if c.MaxSessionExpiry == 0 {
		c.MaxSessionExpiry = DefaultMaxSessionExpiry
	}
	if c.MaxInflight == 0 {
		c.MaxInflight = DefaultMaxInflight
	}
	if c.MaxQueuedPerClient == 0 {
		c.MaxQueuedPerClient = DefaultMaxQueuedPerClient
	}
	if c.MaxQueuedBytesPerClient == 0 {
		c.MaxQueuedBytesPerClient = max(4*int64(c.MaxPayload), int64(c.MaxPayload)+64<<10)
	}
	if c.MaxClients == 0 {
		c.MaxClients = DefaultMaxClients
	}
	if c.MaxRetainedBytes == 0 {
		c.MaxRetainedBytes = DefaultMaxRetainedBytes
	}
	if c.MaxRetained == 0 {
		c.MaxRetained = DefaultMaxRetained
	}
	if c.MaxSessions == 0 {
		c.MaxSessions = c.MaxClients
	}
	if c.MaxSubscriptionsPerClient == 0 {
		c.MaxSubscriptionsPerClient = DefaultMaxSubscriptionsPerClient
	}
	if c.MaxUnauthenticated == 0 {
		c.MaxUnauthenticated = DefaultMaxUnauthenticated
	}
	if c.MaxUnauthenticatedPerAddress == 0 {
		c.MaxUnauthenticatedPerAddress = min(DefaultMaxUnauthenticatedPerAddress, c.MaxUnauthenticated)
	}
}

// packetLimit is the largest packet read from a client at all.
func (c *EmbeddedConfig) packetLimit() uint32 {
	n := int64(c.MaxPayload)*4 + 64<<10
	if n > 256<<20 {
		n = 256 << 20
	}
	return uint32(n)
}

// connectLimit is the largest CONNECT packet read: room for the client id,
// credentials, properties and will topic (16 KiB), and a will payload of
// up to MaxPayload (a will is a publish). It is read before the client has
// authenticated, so it gets a bound of its own, below packetLimit.
func (c *EmbeddedConfig) connectLimit() uint32 {
	return min(uint32(min(int64(c.MaxPayload)+16<<10, math.MaxUint32)), c.packetLimit())
}

// MaxTopicLen bounds the topic names and filters the embedded broker
// takes, in bytes (MQTT allows 65,535): the broker's topic tree walks a
// topic level by level from its start again at each level, so a
// 30,000-level topic cost seconds of processor time per publish, and each
// subscription kept its whole filter (256 filters of 60 KB per session).
// A longer publish topic or filter closes the client's connection, a
// longer will topic refuses it, and a function's publish to a longer
// topic is an invalid topic (its dead letter).
const MaxTopicLen = 1024

// Embedded is an embedded MQTT broker that passes matching publishes to a
// Handler before acknowledging them. It implements Ingest. Create it with
// NewEmbedded; the zero value is not usable. Methods are safe for concurrent
// use.
type Embedded struct {
	cfg      EmbeddedConfig
	log      *slog.Logger
	auth     *authenticator
	tlsCfg   *tls.Config
	srv      *mochi.Server
	loopback map[string]bool // listener id -> loopback
	filters  *filters
	gate     *gate
	stats    counters
	marked   sync.Map // *mochi.Client -> struct{}: a handler call awaits OnPacketProcessed
	// connectTimeout bounds the wait for CONNECT on the TCP listener; zero
	// means the package default. Tests shorten it.
	connectTimeout time.Duration
	// authWait bounds the wait for a bcrypt slot; zero means
	// connectTimeout (the package default). Tests shorten it.
	authWait time.Duration
	preauth  map[string]*preauth // listener id -> its unauthenticated connections

	shedWarnNs atomic.Int64 // when connections shed were last logged (unix ns)
	retained   retainedBytes

	hctx    context.Context
	hcancel context.CancelFunc

	mu        sync.Mutex
	started   bool
	closed    bool
	h         Handler
	addr      net.Addr
	wsAddr    net.Addr
	listeners []string
	waiters   []interface{ wait() } // listeners whose connection goroutines Close waits for
	ready     atomic.Bool
	// sessions mirrors the broker's sessions into the store (nil without
	// one).
	sessions *sessionHook
}

var _ Ingest = (*Embedded)(nil)

// NewEmbedded validates cfg and builds the broker; Start opens the
// listeners. A non-loopback listener without users fails with
// ErrInsecureListener; other configuration errors wrap ErrConfig.
func NewEmbedded(cfg EmbeddedConfig, log *slog.Logger) (*Embedded, error) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	cfg.applyDefaults()
	switch {
	case cfg.MaxPayload < 0:
		return nil, fmt.Errorf("%w: max payload %d is negative", ErrConfig, cfg.MaxPayload)
	case cfg.MaxSessionExpiry < 0:
		return nil, fmt.Errorf("%w: max session expiry %v is negative", ErrConfig, cfg.MaxSessionExpiry)
	case cfg.MaxInflight < 0 || cfg.MaxInflight > math.MaxUint16:
		return nil, fmt.Errorf("%w: max inflight %d not in 1..65535", ErrConfig, cfg.MaxInflight)
	case cfg.MaxQueuedPerClient < 0 || cfg.MaxQueuedPerClient > math.MaxUint16:
		return nil, fmt.Errorf("%w: max queued per client %d not in 1..65535", ErrConfig, cfg.MaxQueuedPerClient)
	case cfg.MaxQueuedBytesPerClient < int64(cfg.MaxPayload)+64<<10:
		return nil, fmt.Errorf("%w: max queued bytes per client %d below max payload + 64 KiB (%d)", ErrConfig, cfg.MaxQueuedBytesPerClient, int64(cfg.MaxPayload)+64<<10)
	case cfg.MaxClients < 0:
		return nil, fmt.Errorf("%w: max clients %d is negative", ErrConfig, cfg.MaxClients)
	case cfg.MaxSessions < cfg.MaxClients:
		return nil, fmt.Errorf("%w: max sessions %d below max clients %d", ErrConfig, cfg.MaxSessions, cfg.MaxClients)
	case cfg.MaxSubscriptionsPerClient < 0:
		return nil, fmt.Errorf("%w: max subscriptions per client %d is negative", ErrConfig, cfg.MaxSubscriptionsPerClient)
	case cfg.MaxRetained < 0:
		return nil, fmt.Errorf("%w: max retained %d is negative", ErrConfig, cfg.MaxRetained)
	case cfg.MaxRetainedBytes < 0:
		return nil, fmt.Errorf("%w: max retained bytes %d is negative", ErrConfig, cfg.MaxRetainedBytes)
	case cfg.MaxUnauthenticated < 0:
		return nil, fmt.Errorf("%w: max unauthenticated %d is negative", ErrConfig, cfg.MaxUnauthenticated)
	case cfg.MaxUnauthenticatedPerAddress < 0 || cfg.MaxUnauthenticatedPerAddress > cfg.MaxUnauthenticated:
		return nil, fmt.Errorf("%w: max unauthenticated per address %d not in 1..max unauthenticated (%d)", ErrConfig, cfg.MaxUnauthenticatedPerAddress, cfg.MaxUnauthenticated)
	case (cfg.TLSCert == "") != (cfg.TLSKey == ""):
		return nil, fmt.Errorf("%w: tls cert and key must be set together", ErrConfig)
	}
	e := &Embedded{cfg: cfg, log: log, loopback: map[string]bool{}, filters: newFilters(), gate: newGate(),
		preauth: map[string]*preauth{}}
	for id, addr := range map[string]string{"tcp": cfg.Listen, "ws": cfg.WebSocketListen} {
		if addr == "" {
			continue
		}
		if _, _, err := net.SplitHostPort(addr); err != nil {
			return nil, fmt.Errorf("%w: listen address %q: %w", ErrConfig, addr, err)
		}
		e.loopback[id] = isLoopback(addr)
		e.preauth[id] = newPreauth(cfg.MaxUnauthenticated, cfg.MaxUnauthenticatedPerAddress, func(why string) { e.shed(why, id) })
		if !e.loopback[id] && len(cfg.Users) == 0 {
			return nil, fmt.Errorf("%w: listener %s", ErrInsecureListener, addr)
		}
	}
	if len(cfg.Users) == 0 && !cfg.AllowAnonymous {
		log.Warn("embedded MQTT broker has no users and anonymous access is off: no device can connect")
	}
	var err error
	if e.auth, err = newAuthenticator(cfg.Users); err != nil {
		return nil, err
	}
	if cfg.TLSCert != "" {
		cert, err := tls.LoadX509KeyPair(cfg.TLSCert, cfg.TLSKey)
		if err != nil {
			return nil, fmt.Errorf("%w: tls: %w", ErrConfig, err)
		}
		e.tlsCfg = &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}
	}

	caps := mochi.NewDefaultServerCapabilities()
	caps.MaximumSessionExpiryInterval = uint32(min(cfg.MaxSessionExpiry/time.Second, math.MaxUint32))
	caps.MaximumPacketSize = cfg.packetLimit()
	caps.MaximumConnectPacketSize = cfg.connectLimit()
	caps.ReceiveMaximum = uint16(cfg.MaxInflight)
	caps.MaximumInflight = uint16(cfg.MaxQueuedPerClient)
	caps.MaximumClientWritesPending = int32(cfg.MaxQueuedPerClient)
	caps.MaximumClientQueuedBytes = cfg.MaxQueuedBytesPerClient
	caps.MaximumClients = int64(cfg.MaxClients)
	caps.MaximumSubscriptionsPerClient = cfg.MaxSubscriptionsPerClient
	caps.MaximumSessions = int64(cfg.MaxSessions)
	// An MQTT 5 acknowledgement does not repeat the user properties of the
	// PUBLISH it answers: a QoS 2 PUBREC kept until its PUBREL pinned the
	// whole received packet (up to max_payload + 64 KiB of properties)
	// for each of the 64 a device may leave waiting.
	caps.Compatibilities.NoInheritedPropertiesOnAck = true
	// No MQTT 5 topic aliases from clients: mochi's CONNACK does not
	// advertise a Topic Alias Maximum, which tells clients to use none
	// [MQTT-3.2.2-17], yet it accepted up to 65,535 per connection, each
	// holding a topic; a hostile device could make the broker keep them
	// all. An alias is now refused as the protocol error it is.
	caps.TopicAliasMaximum = 0
	e.srv = mochi.New(&mochi.Options{
		Capabilities:           caps,
		InlineClient:           true,
		SysTopicResendInterval: 30,
		// mochi logs a warning per misbehaving client; keep only errors.
		Logger:         slog.New(minLevel{h: log.Handler(), min: slog.LevelError}),
		MayTakeOver:    e.mayTakeOver,
		SessionEvicted: e.sessionEvicted,
	})
	if err := e.srv.AddHook(&hook{e: e}, nil); err != nil {
		return nil, fmt.Errorf("mqtt: add hook: %w", err)
	}
	if cfg.Sessions != nil {
		sh := &sessionHook{st: cfg.Sessions, log: log.With("component", "mqtt-sessions"), retained: e.srv.Topics.Retained.Get,
			connected: func(id string) bool {
				cl, ok := e.srv.Clients.Get(id)
				return ok && !cl.Closed()
			}}
		if err := e.srv.AddHook(sh, nil); err != nil {
			return nil, fmt.Errorf("mqtt: add session hook: %w", err)
		}
		e.srv.Options.BeforeAck = sh.beforeAck
		e.sessions = sh
	}
	e.hctx, e.hcancel = context.WithCancel(context.Background())
	return e, nil
}

func isLoopback(addr string) bool {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return false
	}
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// Start opens the listeners and begins intake. It returns once the
// listeners accept connections.
func (e *Embedded) Start(ctx context.Context, h Handler) error {
	if h == nil {
		return fmt.Errorf("%w: nil handler", ErrConfig)
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	switch {
	case e.closed:
		return ErrClosed
	case e.started:
		return ErrAlreadyStarted
	}
	e.h = h
	tcp := &tcpListener{boundListener: boundListener{id: "tcp", address: e.cfg.Listen, tlsCfg: e.tlsCfg}, connectTimeout: e.connectTimeout, pre: e.preauth["tcp"]}
	if err := e.srv.AddListener(tcp); err != nil {
		return fmt.Errorf("mqtt: listen %s: %w", e.cfg.Listen, err)
	}
	e.listeners = append(e.listeners, "tcp")
	e.waiters = append(e.waiters, tcp)
	var err error
	if e.addr, err = net.ResolveTCPAddr("tcp", tcp.Address()); err != nil {
		return fmt.Errorf("mqtt: listener address: %w", err)
	}
	if e.cfg.WebSocketListen != "" {
		ws := &wsListener{boundListener: boundListener{id: "ws", address: e.cfg.WebSocketListen, tlsCfg: e.tlsCfg}, readLimit: int64(e.cfg.packetLimit()), pre: e.preauth["ws"]}
		if err := e.srv.AddListener(ws); err != nil {
			e.srv.Listeners.Close("tcp", func(string) {})
			return fmt.Errorf("mqtt: listen websocket %s: %w", e.cfg.WebSocketListen, err)
		}
		e.listeners = append(e.listeners, "ws")
		e.waiters = append(e.waiters, ws)
		e.wsAddr = ws.ln.Addr()
	}
	if err := e.srv.Serve(); err != nil {
		// The listeners are bound (AddListener): release them.
		e.srv.Listeners.CloseAll(func(string) {})
		return fmt.Errorf("mqtt: serve: %w", err)
	}
	e.started = true
	e.ready.Store(true)
	e.log.Info("embedded MQTT broker listening", "addr", e.addr.String(), "websocket", e.cfg.WebSocketListen,
		"tls", e.tlsCfg != nil, "users", len(e.cfg.Users), "anonymous_on_loopback", e.cfg.AllowAnonymous)
	return nil
}

// Addr returns the address of the TCP listener, or nil before Start.
func (e *Embedded) Addr() net.Addr {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.addr
}

// WebSocketAddr returns the address of the WebSocket listener, or nil if
// there is none or before Start.
func (e *Embedded) WebSocketAddr() net.Addr {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.wsAddr
}

// SetFilters replaces the filters whose messages go to the Handler; other
// messages are only routed to subscribers. It may be called before Start.
func (e *Embedded) SetFilters(ctx context.Context, filters []string) error {
	list, err := validateFilters(filters)
	if err != nil {
		return err
	}
	e.filters.set(list)
	return nil
}

// Publish publishes a message from the gateway itself through the broker's
// inline client, bypassing ACLs. It returns once the message has been
// handed to every matching subscriber's queue. Messages published here are
// not passed to the Handler.
func (e *Embedded) Publish(ctx context.Context, topic string, payload []byte, qos byte, retain bool) error {
	if err := topics.ValidName(topic); err != nil {
		return err
	}
	if len(topic) > MaxTopicLen {
		return fmt.Errorf("%w: %d bytes, over the embedded broker's limit of %d", topics.ErrInvalidTopic, len(topic), MaxTopicLen)
	}
	if qos > 2 {
		return fmt.Errorf("%w: %d", ErrInvalidQoS, qos)
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	e.mu.Lock()
	started, closed := e.started, e.closed
	e.mu.Unlock()
	switch {
	case closed:
		return ErrClosed
	case !started:
		return ErrNotStarted
	}
	if retain && !e.mayRetain(topic, retainedSize(topic, payload, nil)) {
		retain = false
	}
	if err := e.srv.Publish(topic, payload, retain, qos); err != nil {
		return fmt.Errorf("mqtt: publish %s: %w", topic, err)
	}
	e.stats.published.Add(1)
	return nil
}

// Ready reports whether the broker is listening and not closing.
func (e *Embedded) Ready() bool { return e.ready.Load() }

// Stats returns a snapshot of the counters and of the broker's state
// (clients, sessions, retained topics, messages in flight); its cost grows
// with the number of sessions.
func (e *Embedded) Stats() Stats {
	s := e.stats.snapshot()
	s.ClientsConnected = atomic.LoadInt64(&e.srv.Info.ClientsConnected)
	for id, cl := range e.srv.Clients.GetAll() {
		if id == mochi.InlineClientId && cl.Net.Inline {
			continue
		}
		s.Sessions++
		// (Counted here: mochi's own counter misses restored sessions.)
		s.Inflight += int64(cl.State.Inflight.Len())
	}
	s.Retained = int64(e.srv.Topics.Retained.Len())
	s.MessagesDropped = atomic.LoadInt64(&e.srv.Info.MessagesDropped) + atomic.LoadInt64(&e.srv.Info.InflightDropped)
	return s
}

// Close stops accepting connections and publishes, waits for in-flight
// handlers (their acknowledgements are still sent), then disconnects every
// client and stops the broker. If ctx ends first, the handlers' context is
// cancelled and Close returns ctx's error once the broker has stopped.
func (e *Embedded) Close(ctx context.Context) error {
	e.mu.Lock()
	if e.closed {
		e.mu.Unlock()
		return nil
	}
	e.closed = true
	started := e.started
	ids := e.listeners
	e.mu.Unlock()
	e.ready.Store(false)
	idle := e.gate.close()
	defer e.hcancel()
	if !started {
		return nil
	}
	for _, id := range ids {
		e.srv.Listeners.Close(id, func(string) {}) // stop accepting, keep clients for now
	}
	var ctxErr error
	select {
	case <-idle:
	case <-ctx.Done():
		ctxErr = fmt.Errorf("mqtt: close: handlers still running: %w", ctx.Err())
		e.hcancel()
		<-idle
	}
	// Disconnect every client, close every connection that has not
	// authenticated (it would hold the wait until its CONNECT deadline),
	// and wait for all connection goroutines; repeat for a connection that
	// was mid-CONNECT on the first pass.
	conns := make(chan struct{})
	go func() {
		for _, w := range e.waiters {
			w.wait()
		}
		close(conns)
	}()
	for done := false; !done; {
		// In parallel: a DISCONNECT to a client stuck in a write waits up
		// to a second for it.
		var wg sync.WaitGroup
		for _, cl := range e.srv.Clients.GetAll() {
			if !cl.Net.Inline {
				wg.Go(func() { e.disconnect(cl, packets.ErrServerShuttingDown) })
			}
		}
		for _, p := range e.preauth {
			p.closeAll()
		}
		wg.Wait()
		select {
		case <-conns:
			done = true
		case <-time.After(100 * time.Millisecond):
		}
	}
	_ = e.srv.Close()
	e.log.Info("embedded MQTT broker stopped")
	return ctxErr
}

// disconnect closes a client's connection; MQTT v5 clients first get a
// DISCONNECT with the reason code (v3.1.1 has no server DISCONNECT).
func (e *Embedded) disconnect(cl *mochi.Client, code packets.Code) {
	if cl.Properties.ProtocolVersion == 5 {
		_ = e.srv.DisconnectClient(cl, code)
		return
	}
	cl.Stop(code)
}

// refuse answers a publish that is refused for good: QoS 0 is dropped; QoS
// 1 and 2 are acknowledged (with the reason code for MQTT v5, whose clients
// see the failure; v3.1.1 has no negative acknowledgement) and dropped.
func (e *Embedded) refuse(cl *mochi.Client, pk packets.Packet, code packets.Code) (packets.Packet, error) {
	if pk.FixedHeader.Qos > 0 {
		ack := packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Puback}, PacketID: pk.PacketID}
		if pk.FixedHeader.Qos == 2 {
			ack.FixedHeader.Type = packets.Pubrec
		}
		if cl.Properties.ProtocolVersion == 5 {
			ack.ReasonCode = code.Code
			ack.Properties.ReasonString = code.Reason
		}
		_ = cl.WritePacket(ack)
	}
	return pk, packets.ErrRejectPacket
}

// handle runs the Handler for one device publish and decides its fate.
func (e *Embedded) handle(cl *mochi.Client, pk packets.Packet) (packets.Packet, error) {
	username := string(cl.Properties.Username)
	topic := pk.TopicName
	if topics.ValidName(topic) != nil || topic[0] == '$' {
		e.stats.invalidTopic.Add(1)
		return e.refuse(cl, pk, packets.ErrTopicNameInvalid)
	}
	if username != "" && !e.auth.mayPublish(username, cl.ID, topic) {
		e.stats.unauthorized.Add(1)
		e.log.Debug("mqtt publish refused by ACL", "client", cl.ID, "username", username, "topic", topic)
		return e.refuse(cl, pk, packets.ErrNotAuthorized)
	}
	if len(pk.Payload) > e.cfg.MaxPayload {
		e.stats.oversize.Add(1)
		e.log.Debug("mqtt publish too large", "client", cl.ID, "topic", topic, "bytes", len(pk.Payload))
		return e.refuse(cl, pk, packets.ErrPacketTooLarge)
	}
	list, ok := e.filters.wait(e.hctx, e.gate.closingC)
	if !ok {
		e.disconnect(cl, packets.ErrServerShuttingDown)
		return pk, packets.ErrRejectPacket
	}
	if !topics.MatchAny(list, topic) {
		e.stats.ignored.Add(1)
		return pk, nil
	}
	if !e.gate.enter() {
		e.disconnect(cl, packets.ErrServerShuttingDown)
		return pk, packets.ErrRejectPacket
	}
	e.marked.Store(cl, struct{}{}) // left in OnPacketProcessed, after the ack is written
	m := &Message{
		Topic: topic, Payload: pk.Payload, QoS: pk.FixedHeader.Qos, Retain: pk.FixedHeader.Retain,
		ClientID: cl.ID, Username: username, Duplicate: pk.FixedHeader.Dup, PacketID: pk.PacketID, Received: time.Now(),
	}
	err := callHandler(e.hctx, e.h, m, e.log)
	// The read deadline was set before this packet was read; a long
	// (backpressure) wait may have used it up. Renew it as mochi does per
	// packet. (The ack's write sets its own deadline.)
	if cl.Net.Conn != nil {
		var deadline time.Time
		if ka := cl.State.Keepalive; ka > 0 {
			deadline = time.Now().Add(time.Duration(ka+ka/2) * time.Second)
		}
		_ = cl.Net.Conn.SetReadDeadline(deadline)
	}
	switch {
	case err == nil:
		e.stats.accepted.Add(1)
		return pk, nil
	case errors.Is(err, ErrReject):
		e.stats.handlerRejections.Add(1)
		e.log.Debug("mqtt message rejected by handler", "client", cl.ID, "topic", topic, "error", err)
		return e.refuse(cl, pk, packets.ErrImplementationSpecificError)
	default:
		e.stats.handlerRejections.Add(1)
		e.log.Debug("mqtt message not accepted; disconnecting client so it resends", "client", cl.ID, "topic", topic, "error", err)
		if pk.FixedHeader.Qos == 0 {
			return pk, packets.ErrRejectPacket // QoS 0 cannot be retried
		}
		code := packets.ErrUnspecifiedError
		if e.hctx.Err() != nil || e.gate.isClosing() {
			code = packets.ErrServerShuttingDown
		}
		e.disconnect(cl, code)
		return pk, packets.ErrRejectPacket
	}
}

// hook connects the broker to the Embedded.
type hook struct {
	mochi.HookBase
	e *Embedded

	dropped    atomic.Int64 // messages to clients dropped since the last warning
	lastWarnNs atomic.Int64 // when the last warning was logged (unix ns)
}

// dropWarnEvery bounds the warnings about messages dropped for slow
// clients: one per interval, with the count since the previous one.
const dropWarnEvery = 10 * time.Second

func (h *hook) ID() string { return "moongate-ingest" }

func (h *hook) Provides(b byte) bool {
	switch b {
	case mochi.OnConnect, mochi.OnConnectAuthenticate, mochi.OnACLCheck, mochi.OnPacketRead, mochi.OnPublish,
		mochi.OnPacketProcessed, mochi.OnDisconnect, mochi.OnPublishDropped, mochi.OnWill,
		mochi.OnRetainMessage, mochi.OnRetainedExpired:
		return true
	}
	return false
}

// OnConnect refuses connections once Close has begun (no CONNACK; the
// connection is closed).
func (h *hook) OnConnect(cl *mochi.Client, pk packets.Packet) error {
	if h.e.gate.isClosing() {
		return packets.ErrServerShuttingDown
	}
	return nil
}

// OnConnectAuthenticate checks the credentials (and the last will against
// the publish ACL). A client accepted here no longer counts against its
// listener's MaxUnauthenticated.
func (h *hook) OnConnectAuthenticate(cl *mochi.Client, pk packets.Packet) bool {
	ok := h.authenticate(cl, pk)
	if ok {
		if p := h.e.preauth[cl.Net.Listener]; p != nil && cl.Net.Conn != nil {
			p.authenticated(cl.Net.Conn)
		}
	}
	return ok
}

func (h *hook) authenticate(cl *mochi.Client, pk packets.Packet) bool {
	username := string(pk.Connect.Username)
	if username == "" && len(pk.Connect.Password) == 0 {
		if h.e.cfg.AllowAnonymous && h.e.loopback[cl.Net.Listener] {
			return true
		}
		h.e.stats.authFailures.Add(1)
		return false
	}
	// mochi has replaced the CONNECT deadline by the keep-alive (none for
	// keep-alive 0) by now, and nothing reads the connection while it
	// waits here: the wait for a bcrypt slot has a bound of its own.
	wait := h.e.authWait
	if wait <= 0 {
		wait = connectTimeout
	}
	ctx, cancel := context.WithTimeout(h.e.hctx, wait)
	ok, err := h.e.auth.check(ctx, username, pk.Connect.Password)
	cancel()
	if err != nil {
		// Not a verdict on the credentials: "server unavailable" (MQTT 5:
		// "server busy"), which devices take as a reason to retry later.
		if cl.Properties.ProtocolVersion < 5 {
			cl.RefuseConnect(packets.ErrServerUnavailable)
		} else {
			cl.RefuseConnect(packets.ErrServerBusy)
		}
		h.e.shed("password checks busy: connection refused (server unavailable)", cl.Net.Listener)
		return false
	}
	if !ok {
		h.e.stats.authFailures.Add(1)
		h.e.log.Debug("mqtt connection refused: bad credentials", "client", cl.ID, "username", username, "remote", cl.Net.Remote)
		return false
	}
	// The broker publishes a last will on the client's behalf, with no ACL
	// check of its own: a will is a publish, so it must be one the user may
	// make (otherwise device a could make its will a command to device b).
	if pk.Connect.WillFlag {
		t := pk.Connect.WillTopic
		if topics.ValidName(t) != nil || t[0] == '$' || len(t) > MaxTopicLen || !h.e.auth.mayPublish(username, cl.ID, t) {
			h.e.stats.unauthorized.Add(1)
			h.e.log.Debug("mqtt connection refused: last will outside the publish ACL", "client", cl.ID, "username", username, "will_topic", t)
			return false
		}
	}
	return true
}

// mayTakeOver is mochi's Options.MayTakeOver: a connection may take over
// the session registered under its client id (connected or not, restored
// after a restart too) only if it authenticated as the same user; clients
// that connected anonymously count as one user, "". Otherwise a device with
// valid credentials of its own could use another device's client id to
// disconnect it, receive and acknowledge the commands queued for it (mochi
// resends them without an ACL check), or wipe its session with a clean
// start. The inline client's id is never taken over. A refused connection
// gets CONNACK "not authorized" and is counted in RejectedUnauthorized.
func (e *Embedded) mayTakeOver(existing, cl *mochi.Client) bool {
	if !existing.Net.Inline && bytes.Equal(existing.Properties.Username, cl.Properties.Username) {
		return true
	}
	e.stats.unauthorized.Add(1)
	e.log.Debug("mqtt connection refused: client id held by another user", "client", cl.ID,
		"username", string(cl.Properties.Username), "remote", cl.Net.Remote)
	return false
}

// shed counts a connection turned away before it authenticated and logs
// it, at most once per dropWarnEvery.
func (e *Embedded) shed(why, listener string) {
	n := e.stats.connectionsShed.Add(1)
	now := time.Now().UnixNano()
	last := e.shedWarnNs.Load()
	if now-last < int64(dropWarnEvery) || !e.shedWarnNs.CompareAndSwap(last, now) {
		return
	}
	e.log.Warn("mqtt: "+why, "listener", listener, "max_unauthenticated", e.cfg.MaxUnauthenticated,
		"max_unauthenticated_per_address", e.cfg.MaxUnauthenticatedPerAddress, "shed_total", n)
}

// OnACLCheck allows every publish here (publishes are checked in OnPublish,
// after topic aliases are resolved, so refusals are answered uniformly) and
// checks subscriptions and deliveries against the user's subscribe ACL.
func (h *hook) OnACLCheck(cl *mochi.Client, topic string, write bool) bool {
	if write || cl.Net.Inline {
		return true
	}
	username := string(cl.Properties.Username)
	if username == "" {
		return true // only anonymous clients on loopback listeners get here
	}
	return h.e.auth.mayRead(username, cl.ID, topic)
}

// OnPacketRead counts inbound publishes and closes the connection of a
// client publishing to an invalid or '$' topic (a protocol error), or
// sending a topic or filter longer than MaxTopicLen.
func (h *hook) OnPacketRead(cl *mochi.Client, pk packets.Packet) (packets.Packet, error) {
	if cl.Net.Inline {
		return pk, nil
	}
	switch pk.FixedHeader.Type {
	case packets.Subscribe, packets.Unsubscribe:
		for _, f := range pk.Filters {
			if len(f.Filter) > MaxTopicLen {
				h.e.stats.invalidTopic.Add(1)
				h.e.log.Debug("mqtt filter too long; closing connection", "client", cl.ID, "bytes", len(f.Filter))
				return pk, packets.ErrRejectPacket
			}
		}
		return pk, nil
	case packets.Publish:
	default:
		return pk, nil
	}
	h.e.stats.received.Add(1)
	t := pk.TopicName
	if t == "" && pk.Properties.TopicAlias > 0 {
		return pk, nil // MQTT v5 topic alias; checked after resolution
	}
	if topics.ValidName(t) != nil || t[0] == '$' || len(t) > MaxTopicLen {
		h.e.stats.invalidTopic.Add(1)
		h.e.log.Debug("mqtt publish to invalid topic; closing connection", "client", cl.ID, "topic", t)
		return pk, packets.ErrRejectPacket
	}
	return pk, nil
}

func (h *hook) OnPublish(cl *mochi.Client, pk packets.Packet) (packets.Packet, error) {
	if cl.Net.Inline {
		return pk, nil
	}
	if pk.FixedHeader.Retain && !h.e.mayRetain(pk.TopicName, retainedSize(pk.TopicName, pk.Payload, &pk.Properties)) {
		pk.FixedHeader.Retain = false // delivered, not kept
	}
	return h.e.handle(cl, pk)
}

// OnWill applies MaxRetained to a retained will as to a retained
// publish: a device that disconnects abruptly again and again with wills
// on new topics would otherwise grow the retained set (memory and store)
// without bound. The will is still delivered.
func (h *hook) OnWill(cl *mochi.Client, will mochi.Will) (mochi.Will, error) {
	if will.Retain && !h.e.mayRetain(will.TopicName, retainedSize(will.TopicName, will.Payload, &packets.Properties{User: will.User})) {
		will.Retain = false
	}
	return will, nil
}

// sessionEvicted counts (and logs, the first time) a persistent session
// expired early to make room for a new client (MaxSessions).
func (e *Embedded) sessionEvicted(cl *mochi.Client) {
	if e.stats.sessionsEvicted.Add(1) == 1 {
		e.log.Warn("mqtt sessions at their limit: the session of the device offline the longest was discarded for a new client id",
			"max_sessions", e.cfg.MaxSessions, "client", cl.ID)
		return
	}
	e.log.Debug("mqtt session discarded for a new client id", "client", cl.ID)
}

// mayRetain reports whether a retained publish to topic may be kept: it
// clears or replaces a retained message, or there is room for one more
// (MaxRetained; concurrent publishes may overshoot it by a few). A refusal
// is counted and logged.
func (e *Embedded) mayRetain(topic string, size int64) bool {
	ok := size == 0 || e.srv.Topics.Retained.Len() < e.cfg.MaxRetained
	if !ok {
		_, ok = e.srv.Topics.Retained.Get(topic)
	}
	if ok && !e.retained.fits(e, topic, size) {
		ok = false
	}
	if !ok && e.stats.retainedRefused.Add(1) == 1 {
		e.log.Warn("mqtt retained messages at their limit: further retained publishes are delivered but not retained",
			"max_retained", e.cfg.MaxRetained, "max_retained_bytes", e.cfg.MaxRetainedBytes, "topic", topic)
	}
	return ok
}

// retainedBytes keeps the payload bytes of the retained messages, by
// topic, as the broker holds them (MaxRetainedBytes): its retain hooks
// (OnRetainMessage, OnRetainedExpired) set a topic's size from the
// message the broker holds now, so publishes refused after mayRetain and
// clears racing with publishes cannot make it drift; retained messages
// restored from the store at start are counted at first use.
// Concurrent retained publishes to new topics may overshoot the bound by
// a few messages, as for MaxRetained.
type retainedBytes struct {
	mu    sync.Mutex
	known bool
	total int64
	size  map[string]int64
}

// retainedSize is what a retained message counts against
// MaxRetainedBytes: its payload, its topic twice (the broker's copy and
// the key here) and its MQTT 5 properties; 0 for a clear (no payload).
func retainedSize(topic string, payload []byte, props *packets.Properties) int64 {
	if len(payload) == 0 {
		return 0
	}
	n := int64(len(payload) + 2*len(topic))
	if props != nil {
		n += mochi.PropertiesBytes(props)
	}
	return n
}

// fits reports whether a retained message of n bytes on topic (0: a
// clear) keeps the total within the bound. It records nothing.
func (r *retainedBytes) fits(e *Embedded, topic string, n int64) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.ensure(e)
	old := r.size[topic]
	return n == 0 || n <= old || r.total-old+n <= e.cfg.MaxRetainedBytes
}

// update sets topic's size from the retained message the broker holds now.
func (r *retainedBytes) update(e *Embedded, topic string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.ensure(e)
	var n int64
	if pk, ok := e.srv.Topics.Retained.Get(topic); ok {
		n = retainedSize(pk.TopicName, pk.Payload, &pk.Properties)
	}
	old, had := r.size[topic]
	switch {
	case n == 0:
		delete(r.size, topic)
	case had:
		r.size[topic] = n
	default:
		r.size[strings.Clone(topic)] = n // it may point into a received packet
	}
	r.total += n - old
}

// ensure counts the broker's retained messages once.
func (r *retainedBytes) ensure(e *Embedded) {
	if r.known {
		return
	}
	all := e.srv.Topics.Retained.GetAll()
	r.size, r.total = make(map[string]int64, len(all)), 0
	for topic, pk := range all {
		n := retainedSize(topic, pk.Payload, &pk.Properties)
		r.size[topic] = n
		r.total += n
	}
	r.known = true
}

// OnRetainMessage implements mochi.Hook: the broker kept, replaced or
// cleared topic's retained message.
func (h *hook) OnRetainMessage(_ *mochi.Client, pk packets.Packet, _ int64) {
	h.e.retained.update(h.e, pk.TopicName)
}

// OnRetainedExpired implements mochi.Hook.
func (h *hook) OnRetainedExpired(topic string) { h.e.retained.update(h.e, topic) }

func (h *hook) OnPacketProcessed(cl *mochi.Client, pk packets.Packet, err error) {
	if _, ok := h.e.marked.LoadAndDelete(cl); ok {
		h.e.gate.leave()
	}
}

// OnPublishDropped logs, at most once per dropWarnEvery, that messages to
// a client were dropped: it holds max_queued_per_client QoS 1/2 messages
// not yet acknowledged, or its send queue is full. Each drop is counted in
// Stats.MessagesDropped either way.
func (h *hook) OnPublishDropped(cl *mochi.Client, pk packets.Packet) {
	n := h.dropped.Add(1)
	now := time.Now().UnixNano()
	last := h.lastWarnNs.Load()
	if now-last < int64(dropWarnEvery) || !h.lastWarnNs.CompareAndSwap(last, now) {
		return
	}
	h.dropped.Add(-n)
	h.e.log.Warn("mqtt: messages to a slow client dropped (max_queued_per_client or max_queued_bytes_per_client reached, or send queue full)",
		"client", cl.ID, "topic", pk.TopicName, "dropped", n)
}

// OnDisconnect counts publishes that were refused while being read: too
// large to read, or a topic that is not valid UTF-8.
func (h *hook) OnDisconnect(cl *mochi.Client, err error, expire bool) {
	switch {
	case errors.Is(err, packets.ErrPacketTooLarge):
		h.e.stats.received.Add(1)
		h.e.stats.oversize.Add(1)
	case errors.Is(err, packets.ErrMalformedTopic):
		h.e.stats.received.Add(1)
		h.e.stats.invalidTopic.Add(1)
	}
	if _, ok := h.e.marked.LoadAndDelete(cl); ok {
		h.e.gate.leave()
	}
}

// minLevel is a slog.Handler that drops records below min.
type minLevel struct {
	h   slog.Handler
	min slog.Level
}

func (m minLevel) Enabled(ctx context.Context, l slog.Level) bool {
	return l >= m.min && m.h.Enabled(ctx, l)
}
func (m minLevel) Handle(ctx context.Context, r slog.Record) error { return m.h.Handle(ctx, r) }
func (m minLevel) WithAttrs(a []slog.Attr) slog.Handler {
	return minLevel{h: m.h.WithAttrs(a), min: m.min}
}
func (m minLevel) WithGroup(n string) slog.Handler { return minLevel{h: m.h.WithGroup(n), min: m.min} }
