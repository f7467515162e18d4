package devsim

import (
	"fmt"
	"log/slog"
	"math"
	"net"
	"net/url"
	"strings"
	"time"
	"unicode/utf8"
)

// Defaults applied by Run to Config fields left at their zero value.
const (
	DefaultDevices      = 1
	DefaultDevicePrefix = "sim-"
	DefaultRate         = 1.0 // messages per second per device
	DefaultTopicPrefix  = "devices"
	DefaultKeepAlive    = 30 * time.Second
	DefaultConnectRate  = 200.0 // new connections per second, whole fleet
	DefaultReconnectMin = 100 * time.Millisecond
	DefaultReconnectMax = 10 * time.Second
	DefaultMaxInflight  = 16
	// MaxInflightLimit is the largest MaxInflight: the packet ids (1..65535
	// without the subscription's) less room for the two status messages
	// (65535 made the id allocation spin for ever once all were in use).
	MaxInflightLimit      = 65531
	DefaultAckTimeout     = 10 * time.Second
	DefaultConnectTimeout = 10 * time.Second
)

// Limits checked by Validate.
const (
	MaxDevices      = 1_000_000
	MinRate         = 1.0 / 86400 // one message a day
	MaxRate         = 10_000.0    // per device
	MinConnectRate  = 0.01
	MaxPayloadBytes = 256 << 10
	maxNameBytes    = 128
)

// Config describes a simulated fleet. The zero value, with Broker set, is
// one device publishing one QoS 0 message per second until the context ends.
// A Config is read by Run and not modified; it must not be changed while Run
// uses it.
type Config struct {
	// Broker is the MQTT broker: tcp://host:port or mqtt://host:port (the
	// port defaults to 1883). Required.
	Broker string
	// Devices is the number of simulated devices (default 1).
	Devices int
	// DevicePrefix and FirstDevice name the devices: DevicePrefix followed by
	// the index from FirstDevice, zero-padded to 5 digits ("sim-00000").
	// Default prefix "sim-". Several simulators can share a broker with
	// disjoint ranges.
	DevicePrefix string
	FirstDevice  int
	// Rate is the messages per second of each device (default 1).
	Rate float64
	// Jitter, in [0, 1], spreads each interval uniformly over
	// [1-Jitter, 1+Jitter] times 1/Rate. Default 0. Whatever Jitter is, each
	// device's first message falls at a random moment of the first
	// interval, so a fleet does not publish in lock step.
	Jitter float64
	// QoS of the telemetry: 0 or 1.
	QoS byte
	// Count is the number of messages per device; Duration bounds the
	// publishing phase. Whichever comes first ends it; when both are zero
	// devices publish until the context ends.
	Count    int
	Duration time.Duration
	// Username and Password are sent when Username is not empty; "{device}"
	// in either is replaced by the device name.
	Username, Password string
	// TopicPrefix is the first topic level (default "devices").
	TopicPrefix string
	// ClientIDPrefix is put before the device name to make the client id
	// (default none: the client id is the device name, as the contract asks).
	ClientIDPrefix string
	// CleanSession makes devices connect with a clean session. The default
	// (false) is the contract's persistent session: the broker keeps
	// commands for a disconnected device and a resent message is recognised.
	CleanSession bool
	// NoStatus turns off the presence messages on PREFIX/DEVICE/status
	// (retained, QoS 1: "online" after each connect, "offline" before the
	// final DISCONNECT, and "offline" as the last will).
	NoStatus bool
	// NoCommands turns off the subscription to PREFIX/DEVICE/cmd.
	NoCommands bool
	// PayloadBytes pads each payload with a "pad" field up to about this
	// many bytes (default: no padding).
	PayloadBytes int
	// KeepAlive is the MQTT keep-alive (default 30s; at least 1s).
	KeepAlive time.Duration
	// ConnectRate bounds new connections per second over the whole fleet,
	// reconnects included (default 200), so that a large fleet does not
	// hit the broker with thousands of handshakes at once.
	ConnectRate float64
	// ReconnectMin and ReconnectMax bound the reconnect backoff: the wait
	// after the n-th failure in a row is uniformly random in
	// [0, min(ReconnectMax, ReconnectMin*2^n)] ("full jitter").
	// Defaults 100ms and 10s.
	ReconnectMin, ReconnectMax time.Duration
	// MaxInflight bounds a device's QoS 1 messages awaiting their PUBACK
	// (default 16); a device waits for room before publishing more.
	MaxInflight int
	// ConnectTimeout bounds the TCP connect plus CONNACK (default 10s).
	ConnectTimeout time.Duration
	// AckTimeout bounds how long a device waits for its last PUBACKs after
	// the publishing phase, and for the PUBACK of its final "offline"
	// (default 10s).
	AckTimeout time.Duration
	// Linger keeps each device connected this long after its publishing
	// phase and its last PUBACK, to receive commands (default 0).
	Linger time.Duration

	// OnAck, when set, is called once for every acknowledged QoS 1 message,
	// from the device's reader goroutine: it must be fast and safe for
	// concurrent use.
	OnAck func(Ack)
	// OnSend, when set, is called after the first write of every telemetry
	// message (QoS 0 or 1) with its send time, which is also the payload's
	// ts; same rules as OnAck.
	OnSend func(device string, seq uint64, sent time.Time)
	// OnCommand, when set, is called for every message received on a
	// device's cmd topic, with the same rules as OnAck. The payload is only
	// valid during the call.
	OnCommand func(device string, payload []byte)
	// Logger receives connection errors at debug level and a summary at
	// info level (default: discard).
	Logger *slog.Logger
}

// Ack is one acknowledged message.
type Ack struct {
	Device string
	Seq    uint64
	Sent   time.Time // first send
	Acked  time.Time // PUBACK received
	Resent int       // times it was sent again after a reconnect
}

// withDefaults returns a copy of c with the defaults applied.
func (c Config) withDefaults() Config {
	if c.Devices == 0 {
		c.Devices = DefaultDevices
	}
	if c.DevicePrefix == "" {
		c.DevicePrefix = DefaultDevicePrefix
	}
	if c.Rate == 0 {
		c.Rate = DefaultRate
	}
	if c.TopicPrefix == "" {
		c.TopicPrefix = DefaultTopicPrefix
	}
	if c.KeepAlive == 0 {
		c.KeepAlive = DefaultKeepAlive
	}
	if c.ConnectRate == 0 {
		c.ConnectRate = DefaultConnectRate
	}
	if c.ReconnectMin == 0 {
		c.ReconnectMin = DefaultReconnectMin
	}
	if c.ReconnectMax == 0 {
		c.ReconnectMax = DefaultReconnectMax
	}
	if c.MaxInflight == 0 {
		c.MaxInflight = DefaultMaxInflight
	}
	if c.ConnectTimeout == 0 {
		c.ConnectTimeout = DefaultConnectTimeout
	}
	if c.AckTimeout == 0 {
		c.AckTimeout = DefaultAckTimeout
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	return c
}

// Validate reports the first problem of c (after defaults) as an error
// wrapping ErrConfig.
func (c Config) Validate() error {
	_, err := c.resolve()
	return err
}

// resolve applies the defaults, validates, and returns the broker address.
func (c *Config) resolve() (string, error) {
	*c = c.withDefaults()
	bad := func(format string, a ...any) (string, error) {
		return "", fmt.Errorf("%w: "+format, append([]any{ErrConfig}, a...)...)
	}
	addr, err := brokerAddr(c.Broker)
	if err != nil {
		return bad("%v", err)
	}
	finite := func(f float64) bool { return !math.IsNaN(f) && !math.IsInf(f, 0) }
	switch {
	case c.Devices < 0 || c.Devices > MaxDevices:
		return bad("devices %d: must be 1..%d", c.Devices, MaxDevices)
	case c.FirstDevice < 0 || c.FirstDevice > math.MaxInt32:
		return bad("first device %d: must be 0..%d", c.FirstDevice, math.MaxInt32)
	case !finite(c.Rate) || c.Rate < MinRate || c.Rate > MaxRate:
		return bad("rate %v: must be %v..%v messages per second per device", c.Rate, MinRate, MaxRate)
	case !finite(c.Jitter) || c.Jitter < 0 || c.Jitter > 1:
		return bad("jitter %v: must be in [0, 1]", c.Jitter)
	case c.QoS > 1:
		return bad("qos %d: must be 0 or 1", c.QoS)
	case c.Count < 0:
		return bad("count %d: must not be negative", c.Count)
	case c.Duration < 0:
		return bad("duration %v: must not be negative", c.Duration)
	case c.PayloadBytes < 0 || c.PayloadBytes > MaxPayloadBytes:
		return bad("payload bytes %d: must be 0..%d", c.PayloadBytes, MaxPayloadBytes)
	case c.KeepAlive < time.Second || c.KeepAlive > 65535*time.Second:
		return bad("keepalive %v: must be 1s..65535s", c.KeepAlive)
	case !finite(c.ConnectRate) || c.ConnectRate < MinConnectRate:
		return bad("connect rate %v: must be at least %v per second", c.ConnectRate, MinConnectRate)
	case c.ReconnectMin <= 0 || c.ReconnectMax < c.ReconnectMin:
		return bad("reconnect backoff %v..%v: need 0 < min <= max", c.ReconnectMin, c.ReconnectMax)
	case c.MaxInflight < 1 || c.MaxInflight > MaxInflightLimit:
		return bad("max inflight %d: must be 1..%d", c.MaxInflight, MaxInflightLimit)
	case c.ConnectTimeout <= 0 || c.AckTimeout <= 0 || c.Linger < 0:
		return bad("timeouts must be positive and linger not negative")
	}
	for what, s := range map[string]string{"device prefix": c.DevicePrefix, "topic prefix": c.TopicPrefix, "client id prefix": c.ClientIDPrefix} {
		if len(s) > maxNameBytes || !utf8.ValidString(s) || strings.ContainsAny(s, "+#/\x00") {
			return bad("%s %q: at most %d bytes of UTF-8 without '/', '+', '#' or NUL", what, clip(s), maxNameBytes)
		}
	}
	if len(c.Username) > 1024 || len(c.Password) > 1024 {
		return bad("username and password: at most 1024 bytes each")
	}
	return addr, nil
}

// brokerAddr turns tcp://host:port or mqtt://host:port into host:port.
func brokerAddr(broker string) (string, error) {
	if broker == "" {
		return "", fmt.Errorf("broker: required (tcp://host:port)")
	}
	u, err := url.Parse(broker)
	if err != nil {
		return "", fmt.Errorf("broker %q: %w", clip(broker), err)
	}
	if u.Scheme != "tcp" && u.Scheme != "mqtt" {
		return "", fmt.Errorf("broker %q: scheme must be tcp:// or mqtt://", clip(broker))
	}
	if u.Hostname() == "" || (u.Path != "" && u.Path != "/") || u.RawQuery != "" || u.User != nil {
		return "", fmt.Errorf("broker %q: want tcp://host:port", clip(broker))
	}
	port := u.Port()
	if port == "" {
		port = "1883"
	}
	return net.JoinHostPort(u.Hostname(), port), nil
}

func clip(s string) string {
	if len(s) > 64 {
		return s[:64] + "..."
	}
	return s
}
