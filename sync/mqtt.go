package sync

import (
	"context"
	"fmt"
	"net/url"
	"strings"
	gosync "sync"
	"sync/atomic"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"

	"github.com/moongate-edge/moongate/mqtt"
	"github.com/moongate-edge/moongate/store"
)

// MQTTConfig configures an mqtt target: one QoS 1 message per record (the
// AppendRecord object) on a topic built from Topic.
type MQTTConfig struct {
	Broker   string // tcp:// mqtt:// ssl:// tls:// mqtts:// ws:// wss://
	ClientID string // default moongate-sync-<gateway>-<target>
	Username string
	Password string
	// Topic is the topic template (default "gateways/{gateway}/{stream}");
	// {gateway}, {stream}, {function} and {device} are replaced (an empty
	// value becomes "_"; '+', '#' and '/' in a value become '_').
	Topic     string
	KeepAlive time.Duration // default 30s
	TLS       TLSConfig
	// MaxPayload is the largest message payload (an encoded record) the
	// target publishes, 1 to MaxMQTTPayload (0: MaxMQTTPayload). A larger
	// record is refused before it is sent (a Rejection: dead-lettered):
	// MQTT 3.1.1 has no per-message refusal, and a broker with a lower
	// limit drops the connection, which would hold the record, and every
	// record behind it, forever. Set it to the broker's limit.
	MaxPayload int
	// MaxTopic is the longest topic, in bytes, the target publishes to, 1
	// to 65535 (0: 65535): a record whose topic is longer is refused before
	// it is sent (a Rejection), as for MaxPayload. A broker that limits
	// topics (moongate's embedded broker: 1,024 bytes; AWS IoT: 256) drops
	// the connection on a longer one.
	MaxTopic int
}

// DefaultMQTTTopic is the default topic template of mqtt targets.
const DefaultMQTTTopic = "gateways/{gateway}/{stream}"

// MaxMQTTPayload is the largest payload an MQTT 3.1.1 PUBLISH can carry
// whatever its topic: the protocol's largest remaining length (268435455)
// minus the variable header of a QoS 1 publish with the longest topic
// (2 + 65535 bytes of topic, 2 of packet id). It is the default of
// MQTTConfig.MaxPayload.
const MaxMQTTPayload = 268435455 - (2 + 65535) - 2

func init() {
	mustRegister(Module{ID: ModulePrefix + "mqtt", New: newMQTTTarget})
}

// mqttTarget publishes with paho, QoS 1, clean session, no automatic
// reconnect. A message counts as delivered only when its token completed
// without error on a connection that has not been lost since the message
// was published (paho can complete tokens after a reconnect without a
// PUBACK): gen changes on every connect and every connection loss. After a
// failure the client is thrown away and the next Deliver reconnects and
// re-sends everything not confirmed.
type mqttTarget struct {
	cfg  TargetConfig
	env  Env
	opts *paho.ClientOptions
	tpl  *template

	mu     gosync.Mutex
	client paho.Client
	closed bool
	gen    atomic.Uint64
	stop   chan struct{}
}

func newMQTTTarget(cfg TargetConfig, env Env) (Target, error) {
	m := cfg.MQTT
	u, err := url.Parse(m.Broker)
	if err != nil || u.Host == "" {
		return nil, fmt.Errorf("%w: mqtt broker %q: want scheme://host:port", ErrInvalidConfig, safeURL(m.Broker))
	}
	switch u.Scheme {
	case "ssl", "tls", "mqtts", "wss":
	case "tcp", "mqtt", "ws":
		if m.TLS != (TLSConfig{}) {
			return nil, fmt.Errorf("%w: mqtt tls is set but broker %q is not a TLS URL (the settings would be ignored and credentials sent in clear): use ssl://, tls://, mqtts:// or wss://", ErrInvalidConfig, safeURL(m.Broker))
		}
	default:
		return nil, fmt.Errorf("%w: mqtt broker scheme %q", ErrInvalidConfig, u.Scheme)
	}
	switch {
	case m.MaxPayload == 0:
		m.MaxPayload = MaxMQTTPayload
	case m.MaxPayload < 0 || m.MaxPayload > MaxMQTTPayload:
		return nil, fmt.Errorf("%w: mqtt max payload %d out of range [1, %d]", ErrInvalidConfig, m.MaxPayload, MaxMQTTPayload)
	}
	switch {
	case m.MaxTopic == 0:
		m.MaxTopic = 65535
	case m.MaxTopic < 0 || m.MaxTopic > 65535:
		return nil, fmt.Errorf("%w: mqtt max topic %d out of range [1, 65535]", ErrInvalidConfig, m.MaxTopic)
	}
	if m.Topic == "" {
		m.Topic = DefaultMQTTTopic
	}
	if strings.ContainsAny(m.Topic, "+#") {
		return nil, fmt.Errorf("%w: mqtt topic %q contains a wildcard", ErrInvalidConfig, m.Topic)
	}
	if m.ClientID == "" {
		m.ClientID = "moongate-sync-" + env.GatewayID + "-" + cfg.Name
	}
	if m.KeepAlive <= 0 {
		m.KeepAlive = 30 * time.Second
	}
	cfg.MQTT = m
	tlsCfg, err := m.TLS.build(u.Hostname())
	if err != nil {
		return nil, err
	}
	t := &mqttTarget{cfg: cfg, env: env, tpl: parseTemplate(m.Topic, cleanMQTT), stop: make(chan struct{})}
	o := paho.NewClientOptions().AddBroker(m.Broker).SetClientID(m.ClientID).
		SetCleanSession(true).SetAutoReconnect(false).SetConnectRetry(false).
		SetKeepAlive(m.KeepAlive).SetPingTimeout(min(m.KeepAlive, 10*time.Second)).
		SetConnectTimeout(cfg.AckTimeout).SetWriteTimeout(cfg.AckTimeout).
		SetOrderMatters(false).SetMaxResumePubInFlight(cfg.Inflight).
		SetConnectionLostHandler(func(paho.Client, error) { t.gen.Add(1) }).
		// The broker sends this client acknowledgements only: a packet
		// announced larger is refused before paho allocates it.
		SetCustomOpenConnectionFn(mqtt.BoundedOpener(maxBrokerPacket))
	if m.Username != "" {
		o.SetUsername(m.Username).SetPassword(m.Password)
	}
	if tlsCfg != nil {
		o.SetTLSConfig(tlsCfg)
	}
	t.opts = o
	return t, nil
}

// maxBrokerPacket bounds what the upstream broker may send the MQTT
// target (CONNACK, PUBACK, PINGRESP, DISCONNECT: a few bytes each).
const maxBrokerPacket = 64 << 10

func (t *mqttTarget) topic(r *store.Record) string { return t.tpl.expand(t.env.GatewayID, r) }

// Connected reports whether the current connection is open.
func (t *mqttTarget) Connected() bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.client != nil && t.client.IsConnectionOpen()
}

// Connect makes a new connection unless one is open.
func (t *mqttTarget) Connect(ctx context.Context) error {
	_, err := t.conn(ctx)
	return err
}

// conn returns the open client or connects a new one. The connection is
// made without holding mu, so that Close never waits for it.
func (t *mqttTarget) conn(ctx context.Context) (paho.Client, error) {
	t.mu.Lock()
	if t.closed {
		t.mu.Unlock()
		return nil, ErrClosed
	}
	if t.client != nil && t.client.IsConnectionOpen() {
		c := t.client
		t.mu.Unlock()
		return c, nil
	}
	if t.client != nil {
		t.client.Disconnect(0)
		t.client = nil
	}
	t.mu.Unlock()
	c := paho.NewClient(t.opts)
	tok := c.Connect()
	select {
	case <-tok.Done():
	case <-ctx.Done():
		go c.Disconnect(0)
		return nil, ctx.Err()
	case <-t.stop:
		go c.Disconnect(0)
		return nil, ErrClosed
	}
	if err := tok.Error(); err != nil {
		return nil, fmt.Errorf("mqtt connect %s: %w", safeURL(t.cfg.MQTT.Broker), err)
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.closed {
		go c.Disconnect(0)
		return nil, ErrClosed
	}
	t.gen.Add(1)
	t.client = c
	return c, nil
}

// drop throws the connection away after a failure.
func (t *mqttTarget) drop(c paho.Client) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.gen.Add(1)
	if t.client == c && c != nil {
		c.Disconnect(0)
		t.client = nil
	}
}

func (t *mqttTarget) Close() error {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.closed {
		return nil
	}
	t.closed = true
	close(t.stop)
	if t.client != nil {
		t.client.Disconnect(250)
		t.client = nil
	}
	return nil
}

func (t *mqttTarget) Deliver(ctx context.Context, batch []store.OutboxEntry) (Result, error) {
	c, err := t.conn(ctx)
	if err != nil {
		return Result{}, err
	}
	gen := t.gen.Load()
	win := t.cfg.Inflight
	toks := make([]paho.Token, win)
	refused := make([]string, win) // reason of a record refused instead of published
	timer := time.NewTimer(t.cfg.AckTimeout)
	defer timer.Stop()
	payload := make([]byte, 0, 512)
	var res Result
	next := 0
	for res.Done < len(batch) {
		for next < len(batch) && next-res.Done < win {
			r := &batch[next].Record
			payload = AppendRecord(payload[:0], t.env.GatewayID, r)
			topic := t.topic(r)
			if reason := t.oversize(len(payload), topic); reason != "" {
				refused[next%win] = reason
			} else {
				toks[next%win] = c.Publish(topic, 1, false, append([]byte(nil), payload...))
			}
			next++
		}
		i := res.Done % win
		if refused[i] != "" {
			res.Rejected = append(res.Rejected, Rejection{Index: res.Done, Reason: refused[i]})
			refused[i] = ""
			res.Done++
			continue
		}
		tok := toks[i]
		timer.Reset(t.cfg.AckTimeout)
		select {
		case <-tok.Done():
		case <-timer.C:
			t.drop(c)
			return res, ErrAckTimeout
		case <-ctx.Done():
			t.drop(c)
			return res, ctx.Err()
		case <-t.stop:
			return res, ErrClosed
		}
		if err := tok.Error(); err != nil {
			t.drop(c)
			return res, fmt.Errorf("mqtt publish: %w", err)
		}
		// A token completed on a connection lost since is no proof.
		if t.gen.Load() != gen || !c.IsConnectionOpen() {
			t.drop(c)
			return res, ErrConnectionLost
		}
		toks[i] = nil
		res.Done++
	}
	return res, nil
}

// oversize returns why a message of n payload bytes on topic cannot be
// published (over MaxPayload or MaxTopic, or over what an MQTT packet can carry), or
// "" when it can.
func (t *mqttTarget) oversize(n int, topic string) string {
	if n > t.cfg.MQTT.MaxPayload {
		return fmt.Sprintf("mqtt: record of %d bytes exceeds the target's max_payload of %d bytes", n, t.cfg.MQTT.MaxPayload)
	}
	if len(topic) > t.cfg.MQTT.MaxTopic {
		return fmt.Sprintf("mqtt: topic of %d bytes exceeds the target's max_topic of %d bytes", len(topic), t.cfg.MQTT.MaxTopic)
	}
	if len(topic) > 65535 || 2+len(topic)+2+n > 268435455 {
		return fmt.Sprintf("mqtt: record of %d bytes on a topic of %d bytes exceeds the MQTT packet limit", n, len(topic))
	}
	return ""
}
