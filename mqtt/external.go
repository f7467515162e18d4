package mqtt

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"math"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"

	"github.com/moongate-edge/moongate/mqtt/topics"
)

// Defaults for ExternalConfig fields left at their zero value.
const (
	DefaultKeepAlive            = 30 * time.Second
	DefaultConnectTimeout       = 10 * time.Second
	DefaultMaxReconnectInterval = 30 * time.Second
	// maxExternalHandlers bounds concurrent handler calls in external mode
	// (topics handled at once).
	maxExternalHandlers = 256
	// maxExternalQueued bounds deliveries waiting in the topic lanes: QoS 0
	// deliveries beyond it are dropped (Stats.DroppedQoS0). QoS 1/2
	// deliveries are bounded by the broker's in-flight window (mosquitto's
	// max_inflight_messages: keep it finite); they cannot wait for room
	// here: that would stop paho's reader, PINGRESP included, and the
	// keep-alive would end the connection.
	maxExternalQueued = 4096
)

// ExternalConfig configures the connection to an external broker. Broker is
// required; other zero fields take the defaults below.
type ExternalConfig struct {
	// Broker is the broker URL: tcp://, mqtt://, ssl://, tls://, mqtts://,
	// ws:// or wss:// with host and port.
	Broker string
	// ClientID is the fixed client id of the persistent session; default
	// "moongate-HOSTNAME". Two gateways must not share it.
	ClientID string
	// Username and Password are optional credentials.
	Username, Password string
	// CAFile is an optional PEM file of CAs to verify the broker with;
	// CertFile and KeyFile an optional client certificate.
	CAFile, CertFile, KeyFile string
	// InsecureSkipVerify disables broker certificate verification (tests
	// only).
	InsecureSkipVerify bool
	// KeepAlive is the MQTT keep-alive; default 30s.
	KeepAlive time.Duration
	// MaxPayload, when positive, bounds what one inbound message costs: a
	// payload longer than MaxPayload reaches the Handler cut to its first
	// MaxPayload+1 bytes (so that it can refuse it), the rest read and
	// thrown away as it arrives, never held (Message.Clipped). Without it
	// the client allocates whatever the broker sends, up to 256 MiB.
	MaxPayload int
	// ConnectTimeout bounds one connection attempt; default 10s.
	ConnectTimeout time.Duration
	// MaxReconnectInterval caps the reconnect backoff; default 30s.
	MaxReconnectInterval time.Duration
	// SessionFile, when set, keeps the broker session's epoch across
	// restarts: a number bumped, and synced to this file, whenever the
	// broker answers a connection without a session for the client id
	// (CONNACK session present 0: the first connection, or a session the
	// broker lost). Deliveries carry it in Message.ClientID
	// ("broker-session/N"; "" while it is 0), so that a packet id the
	// broker numbers again in a new session is not taken for a redelivery
	// of the old session's message with the same id, topic and payload.
	// Empty: no epoch, Message.ClientID is always "".
	SessionFile string
	// MaxPacketSize, when positive, is the largest PUBLISH packet (fixed
	// header, topic, packet id and payload, as mosquitto's max_packet_size
	// counts) Publish and PublishAll send; a larger one is
	// ErrPublishTooLarge, without touching the connection (the broker's
	// own limit would close it).
	MaxPacketSize int
}

// External consumes from an external MQTT broker with a persistent session
// (clean session off, fixed client id), QoS 1 subscriptions and manual
// acknowledgement after the Handler returned nil. It implements Ingest.
// Create it with NewExternal; the zero value is not usable. Methods are safe
// for concurrent use.
type External struct {
	cfg    ExternalConfig
	log    *slog.Logger
	client paho.Client

	filters *filters
	stats   counters
	sem     chan struct{}

	// gen is the receive generation: the connection a delivery arrived on.
	// It is bumped before every connection attempt (onNotify), when no
	// delivery of the previous connection can arrive any more and none of
	// the next has yet; a delivery whose generation is not the current one
	// is neither handled nor acknowledged (the broker redelivers it).
	gen atomic.Uint64
	// redials counts paho's reconnection attempts. paho calls the handler
	// that bumps it before it dials, hence before it resends the messages
	// still in flight and completes their tokens without an
	// acknowledgement (see ErrUnconfirmed).
	redials atomic.Uint64
	// epoch is the broker session's (ExternalConfig.SessionFile).
	epoch   atomic.Uint64
	acks    ackOrder // QoS 1 acknowledgements, released in arrival order
	lanesMu sync.Mutex
	lanes   map[string][]laneItem // per topic, in arrival order; present = ready or being handled
	ready   []string              // lanes waiting for a worker, in the order they became ready
	workers int                   // lane workers running (at most maxExternalHandlers)
	queued  int

	hctx    context.Context
	hcancel context.CancelFunc
	stopC   chan struct{} // closed when Close starts
	wg      sync.WaitGroup

	mu       sync.Mutex
	h        Handler
	started  bool
	closed   bool
	inflight int
	draining bool // a handler failed: take nothing more until reconnected
	idle     chan struct{}

	subMu      sync.Mutex      // serialises subscription changes
	subscribed map[string]bool // filters subscribed on the current connection
	unsub      map[string]bool // removed filters still to unsubscribe

	// clipped holds the real payload length of QoS 1/2 messages the
	// connection cut (clipConn), by packet id, until onMessage takes it;
	// clipped0 those of QoS 0 messages, in the order they were read (paho
	// hands them to onMessage in that order).
	clipMu   sync.Mutex
	clipped  map[uint16]int
	clipped0 []clipped0

	connected     atomic.Bool
	subscribedOK  atomic.Bool
	everConnected atomic.Bool
	firstReady    chan struct{}
	readyOnce     sync.Once
	reconnectC    chan struct{}

	// testBeforeRedial, when set (tests only), runs in reconnectLoop before
	// a forced reconnection.
	testBeforeRedial func()
}

var _ Ingest = (*External)(nil)

// NewExternal validates cfg and prepares the client; Start connects.
// Configuration errors wrap ErrConfig.
func NewExternal(cfg ExternalConfig, log *slog.Logger) (*External, error) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	u, err := url.Parse(cfg.Broker)
	if err != nil || u.Host == "" {
		return nil, fmt.Errorf("%w: broker URL %q: want scheme://host:port", ErrConfig, cfg.Broker)
	}
	secure := false
	switch strings.ToLower(u.Scheme) {
	case "tcp", "mqtt", "ws":
	case "ssl", "tls", "mqtts", "tcps", "wss":
		secure = true
	default:
		return nil, fmt.Errorf("%w: broker URL %q: unsupported scheme %q", ErrConfig, cfg.Broker, u.Scheme)
	}
	if cfg.ClientID == "" {
		host, _ := os.Hostname()
		cfg.ClientID = "moongate-" + host
	}
	if cfg.KeepAlive == 0 {
		cfg.KeepAlive = DefaultKeepAlive
	}
	if cfg.ConnectTimeout == 0 {
		cfg.ConnectTimeout = DefaultConnectTimeout
	}
	if cfg.MaxReconnectInterval == 0 {
		cfg.MaxReconnectInterval = DefaultMaxReconnectInterval
	}
	if cfg.KeepAlive < time.Second || cfg.ConnectTimeout < 0 || cfg.MaxReconnectInterval < 0 {
		return nil, fmt.Errorf("%w: keep alive must be >= 1s and timeouts positive", ErrConfig)
	}
	if (cfg.CertFile == "") != (cfg.KeyFile == "") {
		return nil, fmt.Errorf("%w: client cert and key must be set together", ErrConfig)
	}
	x := &External{
		cfg: cfg, log: log, filters: newFilters(), sem: make(chan struct{}, maxExternalHandlers),
		lanes: map[string][]laneItem{}, clipped: map[uint16]int{},
		stopC: make(chan struct{}), idle: make(chan struct{}, 1),
		subscribed: map[string]bool{}, unsub: map[string]bool{},
		firstReady: make(chan struct{}), reconnectC: make(chan struct{}, 1),
	}
	x.hctx, x.hcancel = context.WithCancel(context.Background())
	if cfg.SessionFile != "" {
		n, err := readEpoch(cfg.SessionFile)
		if err != nil {
			return nil, fmt.Errorf("%w: session file: %w", ErrConfig, err)
		}
		x.epoch.Store(n)
	}

	o := paho.NewClientOptions().
		AddBroker(cfg.Broker).
		SetClientID(cfg.ClientID).
		SetCleanSession(false).
		SetOrderMatters(true).
		SetAutoAckDisabled(true).
		SetKeepAlive(cfg.KeepAlive).
		SetPingTimeout(cfg.ConnectTimeout).
		SetConnectTimeout(cfg.ConnectTimeout).
		SetWriteTimeout(cfg.ConnectTimeout).
		SetAutoReconnect(true).
		SetMaxReconnectInterval(cfg.MaxReconnectInterval).
		SetConnectRetry(true).
		SetConnectRetryInterval(min(time.Second, cfg.MaxReconnectInterval)).
		SetResumeSubs(false).
		SetDefaultPublishHandler(x.onMessage).
		SetOnConnectHandler(x.onConnect).
		SetConnectionLostHandler(x.onLost).
		SetReconnectingHandler(x.onReconnecting).
		SetConnectionNotificationHandler(x.onNotify).
		SetCustomOpenConnectionFn(x.open)
	if cfg.Username != "" {
		o.SetUsername(cfg.Username)
		o.SetPassword(cfg.Password)
	}
	if !secure && (cfg.CAFile != "" || cfg.CertFile != "" || cfg.InsecureSkipVerify) {
		return nil, fmt.Errorf("%w: TLS settings need a TLS broker URL (ssl://, tls://, mqtts://, wss://), got %q", ErrConfig, cfg.Broker)
	}
	if secure {
		tc := &tls.Config{MinVersion: tls.VersionTLS12, InsecureSkipVerify: cfg.InsecureSkipVerify} //nolint:gosec // opt-in, documented
		if cfg.CAFile != "" {
			pem, err := os.ReadFile(cfg.CAFile)
			if err != nil {
				return nil, fmt.Errorf("%w: ca file: %w", ErrConfig, err)
			}
			pool := x509.NewCertPool()
			if !pool.AppendCertsFromPEM(pem) {
				return nil, fmt.Errorf("%w: ca file %s: no PEM certificates", ErrConfig, cfg.CAFile)
			}
			tc.RootCAs = pool
		}
		if cfg.CertFile != "" {
			cert, err := tls.LoadX509KeyPair(cfg.CertFile, cfg.KeyFile)
			if err != nil {
				return nil, fmt.Errorf("%w: client certificate: %w", ErrConfig, err)
			}
			tc.Certificates = []tls.Certificate{cert}
		}
		o.SetTLSConfig(tc)
	}
	x.client = paho.NewClient(o)
	return x, nil
}

// Start connects to the broker (retrying with backoff) and returns once it
// is connected, subscribed to the filters set so far and done resending
// what paho's session store held, or when ctx is done; in that case it
// returns ctx's error but keeps connecting in the background until Close.
func (x *External) Start(ctx context.Context, h Handler) error {
	if h == nil {
		return fmt.Errorf("%w: nil handler", ErrConfig)
	}
	x.mu.Lock()
	switch {
	case x.closed:
		x.mu.Unlock()
		return ErrClosed
	case x.started:
		x.mu.Unlock()
		return ErrAlreadyStarted
	}
	x.started = true
	x.h = h
	x.mu.Unlock()

	ct := x.client.Connect() // with ConnectRetry the token completes only once connected or closed
	x.wg.Add(1)
	go x.reconnectLoop()
	x.log.Info("connecting to MQTT broker", "broker", x.cfg.Broker, "client_id", x.cfg.ClientID)
	select {
	case <-x.firstReady:
	case <-ctx.Done():
		return fmt.Errorf("mqtt: broker %s not ready: %w", x.cfg.Broker, ctx.Err())
	}
	// The connect token completes after paho has resent what its store
	// held (resume). A message published during that pass is taken for a
	// stored one: resent, and its token completed with no acknowledgement
	// (see ErrUnconfirmed). Publishing starts after it.
	select {
	case <-ct.Done():
		return nil
	case <-ctx.Done():
		return fmt.Errorf("mqtt: broker %s not ready: %w", x.cfg.Broker, ctx.Err())
	}
}

// onConnect (re)subscribes on every connection, so a broker that lost the
// session still sends us our topics.
func (x *External) onConnect(c paho.Client) {
	if x.everConnected.Swap(true) {
		x.stats.reconnects.Add(1)
	}
	x.connected.Store(true)
	x.subscribedOK.Store(false)
	x.subMu.Lock()
	defer x.subMu.Unlock()
	p := x.filters.cur.Load()
	if p == nil {
		x.markReady()
		x.log.Info("connected to MQTT broker", "broker", x.cfg.Broker)
		return
	}
	// Subscribe to everything again: the broker may have lost the session.
	if err := x.syncSubscriptions(*p, true); err != nil {
		x.log.Error("MQTT subscribe after connect failed", "broker", x.cfg.Broker, "error", err)
		if !errors.Is(err, ErrSubscribe) {
			// Nothing is known to be subscribed on this connection: a
			// SetFilters meanwhile subscribes every filter, not only new
			// ones (it would have marked the client ready with the old
			// connection's filters taken for subscribed). No answer in
			// time (a busy broker): try again while this connection
			// lasts. (Nothing did: the client stayed connected, not
			// ready, until the next reconnect.)
			x.retrySubscribe()
		}
		return
	}
	x.log.Info("connected to MQTT broker and subscribed", "broker", x.cfg.Broker, "filters", len(*p))
}

// resubscribe subscribes again, with a growing pause, until it succeeds,
// the broker refuses a filter, or the connection of generation gen ends.
// retrySubscribe forgets what this connection subscribed (a later
// SetFilters subscribes every filter) and starts resubscribe for it. The
// caller holds subMu.
func (x *External) retrySubscribe() {
	clear(x.subscribed)
	x.mu.Lock()
	if !x.closed { // Close waits for x.wg after it set closed
		x.wg.Add(1)
		go x.resubscribe(x.gen.Load())
	}
	x.mu.Unlock()
}

func (x *External) resubscribe(gen uint64) {
	defer x.wg.Done()
	pause := time.Second
	for {
		t := time.NewTimer(pause)
		select {
		case <-x.stopC:
			t.Stop()
			return
		case <-t.C:
		}
		pause = min(2*pause, max(x.cfg.MaxReconnectInterval, time.Second))
		x.subMu.Lock()
		if x.gen.Load() != gen || x.subscribedOK.Load() || !x.client.IsConnectionOpen() {
			x.subMu.Unlock()
			return // a new connection subscribes for itself; SetFilters did it
		}
		p := x.filters.cur.Load()
		if p == nil {
			x.subMu.Unlock()
			return
		}
		err := x.syncSubscriptions(*p, true)
		x.subMu.Unlock()
		switch {
		case err == nil:
			x.log.Info("subscribed after a retry", "broker", x.cfg.Broker, "filters", len(*p))
			return
		case errors.Is(err, ErrSubscribe):
			x.log.Error("MQTT subscribe refused", "broker", x.cfg.Broker, "error", err)
			return
		}
		x.log.Warn("MQTT subscribe retry failed", "broker", x.cfg.Broker, "error", err)
	}
}

func (x *External) markReady() {
	x.subscribedOK.Store(true)
	x.readyOnce.Do(func() { close(x.firstReady) })
}

func (x *External) onReconnecting(paho.Client, *paho.ClientOptions) {
	x.redials.Add(1)
}

// conn identifies the connection a publish goes out on, for ErrUnconfirmed:
// it changes when paho starts to (re)connect (before it dials, hence before
// it resends what was in flight) and when reconnectLoop drops the
// connection.
func (x *External) conn() [2]uint64 {
	return [2]uint64{x.gen.Load(), x.redials.Load()}
}

// onNotify starts a new receive generation before each connection attempt.
// paho sends ConnectionNotificationConnecting synchronously, right before
// it dials (first connection, its retries, and every reconnection), and
// only once the previous connection's workers have stopped: its router has
// delivered its last message to onMessage, and the new connection's first
// one comes after the bump. So every delivery carries the generation of
// the connection it arrived on.
//
// The bump used to be in onLost, but paho starts the reconnection and
// runs onLost in goroutines of their own, at the same time: the new
// connection's first deliveries could be tagged with the old generation
// and then skipped when onLost bumped it, never acknowledged on a live
// connection (they filled the broker's in-flight window and stalled
// intake until the next reconnection).
func (x *External) onNotify(_ paho.Client, n paho.ConnectionNotification) {
	if _, ok := n.(paho.ConnectionNotificationConnecting); ok {
		x.gen.Add(1)
		x.clipMu.Lock()
		clear(x.clipped) // of the connection before
		x.clipped0 = x.clipped0[:0]
		x.clipMu.Unlock()
	}
}

// maxBrokerControlPacket bounds the packets other than PUBLISH the broker
// sends (CONNACK, acknowledgements, SUBACK of at most a few thousand
// filters, PINGRESP).
const maxBrokerControlPacket = 64 << 10

// open dials the broker as paho does, through clipConn.
func (x *External) open(uri *url.URL, o paho.ClientOptions) (net.Conn, error) {
	conn, err := dialBroker(uri, &o)
	if err != nil {
		return nil, err
	}
	keep := math.MaxInt
	if x.cfg.MaxPayload > 0 {
		keep = x.cfg.MaxPayload + 1
	}
	c := newClipConn(conn, keep, maxBrokerControlPacket, x.onClip)
	c.onConnack = x.onConnack
	return c, nil
}

// sessionSender is Message.ClientID for a delivery of the broker session
// with this epoch.
func sessionSender(epoch uint64) string {
	if epoch == 0 {
		return ""
	}
	return "broker-session/" + strconv.FormatUint(epoch, 10)
}

// onConnack learns from the broker's CONNACK whether it kept the session.
// It runs on the connection's reader before paho sees the CONNACK, hence
// before any delivery of the connection: a new session's epoch is synced
// to SessionFile first. An error fails the connection (paho retries).
func (x *External) onConnack(sessionPresent bool) error {
	if sessionPresent || x.cfg.SessionFile == "" {
		return nil
	}
	n := x.epoch.Load() + 1
	if err := writeEpoch(x.cfg.SessionFile, n); err != nil {
		x.log.Error("the broker holds no session for this client id; its new epoch could not be recorded", "err", err)
		return fmt.Errorf("mqtt: record the broker session: %w", err)
	}
	x.epoch.Store(n)
	x.log.Info("the broker holds no session for this client id: a new one starts", "client_id", x.cfg.ClientID, "epoch", n)
	return nil
}

// readEpoch reads the epoch SessionFile holds (0 when there is none).
func readEpoch(path string) (uint64, error) {
	b, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return 0, nil
	}
	if err != nil {
		return 0, err
	}
	n, err := strconv.ParseUint(strings.TrimSpace(string(b)), 10, 64)
	if err != nil {
		return 0, fmt.Errorf("%s: not an epoch: %w", path, err)
	}
	return n, nil
}

// writeEpoch replaces the epoch in path durably: a synced temporary file
// renamed over it, then the directory synced.
func writeEpoch(path string, n uint64) error {
	tmp := path + ".tmp"
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return err
	}
	_, werr := f.WriteString(strconv.FormatUint(n, 10) + "\n")
	serr := f.Sync()
	cerr := f.Close()
	if err := errors.Join(werr, serr, cerr); err != nil {
		_ = os.Remove(tmp)
		return err
	}
	if err := os.Rename(tmp, path); err != nil {
		return err
	}
	d, err := os.Open(filepath.Dir(path))
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}

// onClip records the real length of a payload the connection cut.
func (x *External) onClip(topic string, pid uint16, qos byte, size int) {
	x.stats.clipped.Add(1)
	x.clipMu.Lock()
	defer x.clipMu.Unlock()
	if qos > 0 {
		x.clipped[pid] = size
	} else if len(x.clipped0) < maxClipped0 {
		x.clipped0 = append(x.clipped0, clipped0{topic, size})
	}
}

// takeClipped returns (and forgets) the real payload length of msg if the
// connection cut it, else 0. onMessage calls it for every message, in the
// order paho delivers them, which is the order they were read.
func (x *External) takeClipped(msg paho.Message) int {
	if x.cfg.MaxPayload <= 0 || len(msg.Payload()) != x.cfg.MaxPayload+1 {
		return 0 // not cut (a cut payload is exactly MaxPayload+1 bytes)
	}
	x.clipMu.Lock()
	defer x.clipMu.Unlock()
	if msg.Qos() > 0 {
		size, ok := x.clipped[msg.MessageID()]
		if ok {
			delete(x.clipped, msg.MessageID())
		}
		return size
	}
	if len(x.clipped0) > 0 && x.clipped0[0].topic == msg.Topic() {
		size := x.clipped0[0].size
		x.clipped0 = x.clipped0[1:]
		return size
	}
	return 0
}

// onLost records the loss. It does not touch the receive generation
// (onNotify does): paho may run it after the next connection is up.
// Messages of the lost connection still queued are handled until the
// reconnection starts; their acknowledgements are dropped by paho and the
// broker redelivers them.
func (x *External) onLost(c paho.Client, err error) {
	x.connected.Store(false)
	x.subscribedOK.Store(false)
	x.log.Warn("lost connection to MQTT broker; reconnecting", "broker", x.cfg.Broker, "error", err)
}

// syncSubscriptions makes the broker subscriptions equal to want; with all
// it subscribes to every filter in want, not only the new ones. Filters
// removed while disconnected are unsubscribed on the next connection. subMu
// must be held. Subscriptions are QoS 1.
func (x *External) syncSubscriptions(want []string, all bool) error {
	wantSet := make(map[string]bool, len(want))
	var add []string
	for _, f := range want {
		wantSet[f] = true
		if all || !x.subscribed[f] {
			add = append(add, f)
		}
		delete(x.unsub, f)
	}
	for f := range x.subscribed {
		if !wantSet[f] {
			x.unsub[f] = true
			delete(x.subscribed, f)
		}
	}
	if !x.client.IsConnectionOpen() {
		return ErrNotConnected
	}
	// New filters first, removed ones after: a trigger changed from t/+ to
	// t/+/# must never leave a moment without a subscription covering t/x
	// (the broker acknowledges a device's message there and delivers it to
	// nobody). mosquitto by default sends one copy of a message to a client
	// however many of its subscriptions match; a broker that sends one per
	// matching subscription (MQTT 3.1.1 3.3.5 allows it; mosquitto's
	// allow_duplicate_messages true) delivers a message published during
	// the switch twice, as it does for overlapping filters of different
	// functions at any time (docs/mqtt.md).
	var subErr error
	if len(add) > 0 {
		m := make(map[string]byte, len(add))
		for _, f := range add {
			m[f] = 1
		}
		t := x.client.SubscribeMultiple(m, nil) // nil callback: everything goes to the default handler, once
		if err := x.wait(t); err != nil {
			return fmt.Errorf("mqtt: subscribe %v: %w", add, err)
		}
		var refused []string
		for f, code := range t.(*paho.SubscribeToken).Result() {
			if code >= 0x80 {
				refused = append(refused, f)
				continue
			}
			x.subscribed[f] = true
		}
		if len(refused) > 0 {
			sort.Strings(refused)
			subErr = fmt.Errorf("%w: %v", ErrSubscribe, refused)
		}
	}
	if len(x.unsub) > 0 {
		list := make([]string, 0, len(x.unsub))
		for f := range x.unsub {
			list = append(list, f)
		}
		sort.Strings(list)
		if err := x.wait(x.client.Unsubscribe(list...)); err != nil {
			return fmt.Errorf("mqtt: unsubscribe %v: %w", list, err)
		}
		for _, f := range list {
			delete(x.unsub, f)
		}
	}
	if subErr != nil {
		return subErr
	}
	x.markReady()
	return nil
}

func (x *External) wait(t paho.Token) error {
	timer := time.NewTimer(x.cfg.ConnectTimeout)
	defer timer.Stop()
	select {
	case <-t.Done():
		return t.Error()
	case <-timer.C:
		return fmt.Errorf("%w: broker did not answer within %v", ErrNotConnected, x.cfg.ConnectTimeout)
	}
}

// SetFilters replaces the subscriptions (QoS 1). When connected it
// subscribes and unsubscribes at once and returns the broker's verdict;
// otherwise the change is applied on the next connection. It may be called
// before Start.
func (x *External) SetFilters(ctx context.Context, filters []string) error {
	list, err := validateFilters(filters)
	if err != nil {
		return err
	}
	x.subMu.Lock()
	defer x.subMu.Unlock()
	x.filters.set(list)
	x.subscribedOK.Store(false)
	if err := x.syncSubscriptions(list, false); err != nil {
		if errors.Is(err, ErrNotConnected) {
			if x.client.IsConnectionOpen() {
				// Connected, but the broker did not answer in time: no
				// reconnect comes to apply it (the client stayed not
				// ready, the new filters unrecorded): try again on this
				// connection, as after a connect.
				x.retrySubscribe()
			}
			return nil // applied on reconnect, or by the retry
		}
		return err
	}
	return ctx.Err()
}

// onMessage receives every delivery. paho calls it in arrival order from
// its router (SetOrderMatters(true)), so it must not block: it appends the
// message to the lane of its topic. Each lane is handled by one worker at
// a time, in order, so the messages of one topic are made durable (and
// acknowledged) in the order the broker sent them, while different topics
// are handled in parallel by at most maxExternalHandlers workers (not a
// goroutine per topic). What is queued is bounded by the broker's
// in-flight window for QoS 1 (unacknowledged messages); QoS 0 beyond
// maxExternalQueued is dropped and counted.
func (x *External) onMessage(_ paho.Client, msg paho.Message) {
	x.stats.received.Add(1)
	gen := x.gen.Load()
	item := laneItem{msg: msg, gen: gen, epoch: x.epoch.Load()}
	x.lanesMu.Lock()
	if x.queued >= maxExternalQueued && msg.Qos() == 0 {
		x.takeClipped(msg)
		x.lanesMu.Unlock()
		x.stats.droppedQoS0.Add(1)
		return
	}
	if msg.Qos() > 0 {
		item.ack = x.acks.add(msg, gen)
	}
	item.clipped = x.takeClipped(msg)
	topic := msg.Topic()
	q, present := x.lanes[topic]
	x.lanes[topic] = append(q, item)
	x.queued++
	if !present {
		x.ready = append(x.ready, topic)
		if x.workers < maxExternalHandlers {
			x.workers++
			go x.runLanes()
		}
	}
	x.lanesMu.Unlock()
}

// stopping reports whether Close has started.
func (x *External) stopping() bool {
	select {
	case <-x.stopC:
		return true
	default:
		return false
	}
}

// laneItem is a delivery waiting in its topic's lane, with the connection
// generation it arrived on.
// clipped0 is a QoS 0 message the connection cut.
type clipped0 struct {
	topic string
	size  int
}

// maxClipped0 bounds clipped0 (its entries are taken as the messages are
// delivered; this only guards against a delivery that never comes).
const maxClipped0 = 256

type laneItem struct {
	msg     paho.Message
	gen     uint64
	epoch   uint64   // the broker session's (SessionFile) when it arrived
	ack     *ackSlot // QoS > 0: its place in the acknowledgement order
	clipped int      // the payload's real length when the connection cut it
}

// runLanes is a lane worker: it takes the next ready lane and handles its
// messages in order until the lane is empty, then the next, and ends when
// no lane is ready.
func (x *External) runLanes() {
	x.lanesMu.Lock()
	defer x.lanesMu.Unlock()
	for len(x.ready) > 0 {
		topic := x.ready[0]
		x.ready[0] = ""
		x.ready = x.ready[1:]
		for {
			q := x.lanes[topic]
			if len(q) == 0 {
				delete(x.lanes, topic)
				break
			}
			item := q[0]
			q[0] = laneItem{}
			x.lanes[topic] = q[1:]
			x.queued--
			x.lanesMu.Unlock()
			if item.gen == x.gen.Load() {
				x.handle(item)
			}
			// (Otherwise it arrived on a connection that is gone: the
			// broker redelivers it on the new one; acknowledging it here
			// would be wrong.)
			x.lanesMu.Lock()
		}
	}
	x.workers--
}

// handle runs the handler on one delivery and acknowledges it when accepted.
func (x *External) handle(item laneItem) {
	msg := item.msg
	ack := func(ok bool) {
		if item.ack != nil {
			x.acks.finish(item.ack, ok)
		}
	}
	select {
	case x.sem <- struct{}{}:
	case <-x.stopC:
		ack(false)
		return // not acknowledged: redelivered next session
	}
	defer func() { <-x.sem }()

	list, ok := x.filters.wait(x.hctx, x.stopC)
	if !ok {
		ack(false)
		return
	}
	if !topics.MatchAny(list, msg.Topic()) {
		// A stale subscription of the persistent session: not ours any more.
		x.stats.ignored.Add(1)
		ack(true)
		return
	}
	if msg.Retained() {
		// The broker sets RETAIN only on the retained messages it replays
		// because a SUBSCRIBE was made (MQTT 3.1.1 3.3.1.3; a message
		// forwarded to an established subscription, or queued for this
		// persistent session while it was away, has it clear). Every
		// (re)connection subscribes again, so each replay would run the
		// device's retained status once more; the message was handled
		// when it was published, or was published before moongate
		// subscribed, as the embedded broker would not run it either.
		x.stats.ignored.Add(1)
		x.stats.retainedReplays.Add(1)
		ack(true)
		return
	}
	if !x.enter() {
		ack(false)
		return // draining or closing: not acknowledged, redelivered after reconnect
	}
	m := &Message{ClientID: sessionSender(item.epoch), Topic: msg.Topic(), Payload: msg.Payload(), QoS: msg.Qos(), Retain: msg.Retained(),
		Duplicate: msg.Duplicate(), PacketID: msg.MessageID(), Received: time.Now(), Clipped: item.clipped}
	err := callHandler(x.hctx, x.h, m, x.log)
	switch {
	case err == nil:
		x.stats.accepted.Add(1)
		ack(true)
	case errors.Is(err, ErrReject):
		x.stats.handlerRejections.Add(1)
		ack(true)
	case m.QoS == 0:
		x.stats.handlerRejections.Add(1) // QoS 0 cannot be redelivered; no reconnect
	default:
		ack(false)
		x.stats.handlerRejections.Add(1)
		x.log.Debug("mqtt message not accepted; will reconnect for redelivery", "topic", m.Topic, "error", err)
		x.mu.Lock()
		if !x.draining && !x.closed {
			x.draining = true
			x.log.Warn("handler refused a message; reconnecting to the broker so it is redelivered", "error", err)
		}
		x.mu.Unlock()
	}
	x.leave()
}

func (x *External) enter() bool {
	x.mu.Lock()
	defer x.mu.Unlock()
	if x.draining || x.closed {
		return false
	}
	x.inflight++
	return true
}

func (x *External) leave() {
	x.mu.Lock()
	defer x.mu.Unlock()
	x.inflight--
	if x.inflight == 0 {
		if x.closed {
			select {
			case x.idle <- struct{}{}:
			default:
			}
		} else if x.draining {
			select {
			case x.reconnectC <- struct{}{}:
			default:
			}
		}
	}
}

// reconnectLoop reconnects after a handler error once the in-flight handlers
// have finished, so the broker redelivers the unacknowledged messages.
func (x *External) reconnectLoop() {
	defer x.wg.Done()
	const minBackoff = 100 * time.Millisecond
	backoff := minBackoff
	var acceptedAtLastReconnect uint64
	for {
		select {
		case <-x.stopC:
			return
		case <-x.reconnectC:
		}
		t := time.NewTimer(backoff)
		select {
		case <-x.stopC:
			t.Stop()
			return
		case <-t.C:
		}
		// Back off while handlers keep failing; start small again once a
		// message was accepted since the previous forced reconnect.
		if n := x.stats.accepted.Load(); n != acceptedAtLastReconnect {
			acceptedAtLastReconnect = n
			backoff = minBackoff
		} else {
			backoff = min(backoff*2, x.cfg.MaxReconnectInterval)
		}
		if x.testBeforeRedial != nil {
			x.testBeforeRedial()
		}
		x.gen.Add(1) // what is queued from this connection is not ours to ack
		x.client.Disconnect(250)
		x.connected.Store(false)
		x.subscribedOK.Store(false)
		// Close may have started meanwhile, its Disconnect maybe before
		// ours: connecting now would leave a live client behind it. Close
		// sets closed under mu before it disconnects, so a Connect made
		// under mu with closed unset comes before Close's Disconnect.
		x.mu.Lock()
		if x.closed {
			x.mu.Unlock()
			return
		}
		x.draining = false
		tok := x.client.Connect()
		x.mu.Unlock()
		select {
		case <-tok.Done():
			if err := tok.Error(); err != nil {
				// paho refused to start (for one, its Disconnect was still
				// finishing): try again after the backoff rather than stay
				// disconnected.
				x.log.Warn("MQTT reconnect did not start; retrying", "broker", x.cfg.Broker, "error", err)
				select {
				case x.reconnectC <- struct{}{}:
				default:
				}
			}
		case <-x.stopC:
			return
		}
	}
}

// checkPublishSize refuses a message whose PUBLISH packet is over
// MaxPacketSize.
func (x *External) checkPublishSize(topic string, qos byte, payload []byte) error {
	if x.cfg.MaxPacketSize <= 0 {
		return nil
	}
	if n := publishPacketSize(topic, qos, len(payload)); n > x.cfg.MaxPacketSize {
		return fmt.Errorf("%w: a packet of %d bytes (payload %d) to %s, max_packet_size %d", ErrPublishTooLarge, n, len(payload), topic, x.cfg.MaxPacketSize)
	}
	return nil
}

// publishPacketSize is the size of an MQTT 3.1.1 PUBLISH packet: the
// fixed header (type byte and remaining length, 1 to 4 bytes), the topic
// with its length, the packet id (QoS > 0) and the payload.
func publishPacketSize(topic string, qos byte, payload int) int {
	rest := 2 + len(topic) + payload
	if qos > 0 {
		rest += 2
	}
	n := 1 + 1
	for r := rest; r >= 128; r >>= 7 {
		n++
	}
	return n + rest
}

// Publish publishes through the broker and waits until the message is sent
// (QoS 0) or acknowledged by the broker (QoS 1 and 2), or ctx is done. It
// fails with ErrNotConnected while the client is not connected, with
// ErrUnconfirmed when the connection was lost before a QoS 1 or 2 message
// was acknowledged (paho then completes its token without the broker's
// acknowledgement; see PITFALLS), and with ErrPublishTooLarge for a
// packet over MaxPacketSize.
func (x *External) Publish(ctx context.Context, topic string, payload []byte, qos byte, retain bool) error {
	if err := topics.ValidName(topic); err != nil {
		return err
	}
	if qos > 2 {
		return fmt.Errorf("%w: %d", ErrInvalidQoS, qos)
	}
	if err := x.checkPublishSize(topic, qos, payload); err != nil {
		return err
	}
	x.mu.Lock()
	started, closed := x.started, x.closed
	x.mu.Unlock()
	switch {
	case closed:
		return ErrClosed
	case !started:
		return ErrNotStarted
	}
	if !x.client.IsConnectionOpen() {
		return fmt.Errorf("mqtt: publish %s: %w", topic, ErrNotConnected)
	}
	conn := x.conn()
	t := x.client.Publish(topic, qos, retain, payload)
	select {
	case <-t.Done():
		if err := t.Error(); err != nil {
			return fmt.Errorf("mqtt: publish %s: %w", topic, err)
		}
		if qos > 0 && x.conn() != conn {
			return fmt.Errorf("mqtt: publish %s: %w", topic, ErrUnconfirmed)
		}
	case <-ctx.Done():
		return fmt.Errorf("mqtt: publish %s: %w", topic, ctx.Err())
	}
	x.stats.published.Add(1)
	return nil
}

// Outgoing is one message for PublishAll.
type Outgoing struct {
	Topic   string
	Payload []byte
	QoS     byte
	Retain  bool
}

// PublishAll publishes msgs in order without waiting for each one's
// acknowledgement before sending the next (Publish waits for every QoS 1
// PUBACK in turn: one round trip to the broker per message), then waits for
// them all. It returns how many of the first messages were sent (QoS 0) or
// acknowledged (QoS 1 and 2): len(msgs) with a nil error, or the index of
// the first that failed with its error. Messages after that one may have
// been sent too, so a caller that retries from there delivers them at least
// once. A QoS 1 or 2 message whose token completed after the connection was
// lost is not counted (ErrUnconfirmed): paho completes the tokens of the
// messages it resends on the next connection without waiting for their
// acknowledgements.
func (x *External) PublishAll(ctx context.Context, msgs []Outgoing) (int, error) {
	x.mu.Lock()
	started, closed := x.started, x.closed
	x.mu.Unlock()
	switch {
	case closed:
		return 0, ErrClosed
	case !started:
		return 0, ErrNotStarted
	}
	toks := make([]paho.Token, 0, len(msgs))
	var stop error // why publishing stopped before the end
	conn := x.conn()
	for _, m := range msgs {
		if err := topics.ValidName(m.Topic); err != nil {
			stop = err
			break
		}
		if m.QoS > 2 {
			stop = fmt.Errorf("%w: %d", ErrInvalidQoS, m.QoS)
			break
		}
		if err := x.checkPublishSize(m.Topic, m.QoS, m.Payload); err != nil {
			stop = err
			break
		}
		if !x.client.IsConnectionOpen() {
			stop = fmt.Errorf("mqtt: publish %s: %w", m.Topic, ErrNotConnected)
			break
		}
		toks = append(toks, x.client.Publish(m.Topic, m.QoS, m.Retain, m.Payload))
	}
	for i, t := range toks {
		select {
		case <-t.Done():
			if err := t.Error(); err != nil {
				return i, fmt.Errorf("mqtt: publish %s: %w", msgs[i].Topic, err)
			}
			if msgs[i].QoS > 0 && x.conn() != conn {
				return i, fmt.Errorf("mqtt: publish %s: %w", msgs[i].Topic, ErrUnconfirmed)
			}
		case <-ctx.Done():
			return i, fmt.Errorf("mqtt: publish %s: %w", msgs[i].Topic, ctx.Err())
		}
		x.stats.published.Add(1)
	}
	return len(toks), stop
}

// Ready reports whether the client is connected and subscribed to the
// current filters.
func (x *External) Ready() bool {
	return x.connected.Load() && x.subscribedOK.Load() && x.client.IsConnectionOpen()
}

// Stats returns a snapshot of the counters.
func (x *External) Stats() Stats { return x.stats.snapshot() }

// Close stops taking messages (those not yet acknowledged stay in the
// broker's session and are redelivered next time), waits for in-flight
// handlers (cancelling their context if ctx ends first), then disconnects.
// Subscriptions are kept in the persistent session so the broker queues
// messages while the gateway is down.
func (x *External) Close(ctx context.Context) error {
	x.mu.Lock()
	if x.closed {
		x.mu.Unlock()
		return nil
	}
	x.closed = true
	started := x.started
	n := x.inflight
	x.mu.Unlock()
	close(x.stopC)
	defer x.hcancel()
	if !started {
		return nil
	}
	var ctxErr error
	if n > 0 {
		select {
		case <-x.idle:
		case <-ctx.Done():
			ctxErr = fmt.Errorf("mqtt: close: handlers still running: %w", ctx.Err())
			x.hcancel()
			<-x.idle
		}
	}
	x.client.Disconnect(250)
	x.connected.Store(false)
	x.wg.Wait()
	x.log.Info("disconnected from MQTT broker", "broker", x.cfg.Broker)
	return ctxErr
}
