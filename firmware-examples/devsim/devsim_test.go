package devsim

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/crypto/bcrypt"

	"github.com/moongate-edge/moongate/mqtt"
)

// broker is a real embedded moongate broker on a random loopback port whose
// Handler records every accepted telemetry payload.
type broker struct {
	e    *mqtt.Embedded
	url  string
	mu   sync.Mutex
	seen map[string]int // device/seq -> times handled
	dups atomic.Int64   // messages flagged DUP
	// reject, when set, decides whether to refuse (no PUBACK, connection
	// closed) a message.
	reject func(m *mqtt.Message) bool
}

func startBroker(t *testing.T, cfg mqtt.EmbeddedConfig) *broker {
	t.Helper()
	b := &broker{seen: map[string]int{}}
	cfg.Listen = "127.0.0.1:0"
	cfg.AllowAnonymous = true
	e, err := mqtt.NewEmbedded(cfg, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	if err := e.SetFilters(context.Background(), []string{"devices/+/telemetry"}); err != nil {
		t.Fatal(err)
	}
	h := func(_ context.Context, m *mqtt.Message) error {
		if b.reject != nil && b.reject(m) {
			return errors.New("refused by the test")
		}
		p, err := ParsePayload(m.Payload)
		if err != nil {
			return fmt.Errorf("%w: %w", mqtt.ErrReject, err)
		}
		if m.Duplicate {
			b.dups.Add(1)
		}
		device := strings.Split(m.Topic, "/")[1]
		b.mu.Lock()
		b.seen[fmt.Sprintf("%s/%d", device, p.Seq)]++
		b.mu.Unlock()
		return nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := e.Start(ctx, h); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_ = e.Close(ctx)
	})
	b.e = e
	b.url = "tcp://" + e.Addr().String()
	return b
}

func (b *broker) handled(key string) int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.seen[key]
}

// ackSet collects OnAck calls.
type ackSet struct {
	mu   sync.Mutex
	acks map[string]Ack
	dups int
}

func (a *ackSet) on(x Ack) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.acks == nil {
		a.acks = map[string]Ack{}
	}
	k := fmt.Sprintf("%s/%d", x.Device, x.Seq)
	if _, ok := a.acks[k]; ok {
		a.dups++
	}
	a.acks[k] = x
}

func TestRunQoS1EveryAckWasHandled(t *testing.T) {
	b := startBroker(t, mqtt.EmbeddedConfig{})
	var acks ackSet
	cfg := Config{Broker: b.url, Devices: 20, Rate: 100, Jitter: 0.3, QoS: 1, Count: 10, OnAck: acks.on}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	r, err := Run(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Log(r)
	if r.Connected != 20 || r.Sent != 200 || r.Acked != 200 || r.Unacked != 0 || r.Errors != 0 {
		t.Fatalf("report: %+v", r)
	}
	if len(acks.acks) != 200 || acks.dups != 0 || r.Latency.Count != 200 {
		t.Fatalf("OnAck: %d distinct, %d repeated; latency samples %d", len(acks.acks), acks.dups, r.Latency.Count)
	}
	for k, a := range acks.acks {
		if b.handled(k) != 1 {
			t.Errorf("%s acknowledged but handled %d times", k, b.handled(k))
		}
		if a.Acked.Before(a.Sent) || a.Resent != 0 {
			t.Errorf("%s: ack %+v", k, a)
		}
	}
	for i := range 20 {
		for seq := 1; seq <= 10; seq++ {
			if _, ok := acks.acks[fmt.Sprintf("sim-%05d/%d", i, seq)]; !ok {
				t.Errorf("sim-%05d seq %d not acknowledged", i, seq)
			}
		}
	}
}

func TestRunQoS0Duration(t *testing.T) {
	b := startBroker(t, mqtt.EmbeddedConfig{})
	var sends atomic.Uint64
	cfg := Config{Broker: b.url, Devices: 5, Rate: 50, Duration: 300 * time.Millisecond, DevicePrefix: "q0-", PayloadBytes: 300,
		OnSend: func(string, uint64, time.Time) { sends.Add(1) }}
	r, err := Run(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	if r.Sent == 0 || r.Acked != 0 || r.Latency.Count != 0 || sends.Load() != r.Sent {
		t.Fatalf("report: %+v, OnSend %d", r, sends.Load())
	}
	// At most one message per interval (plus the first) per device.
	if limit := uint64(5 * (0.3*50 + 2)); r.Sent > limit {
		t.Fatalf("sent %d, more than the rate allows (%d)", r.Sent, limit)
	}
}

// TestCommandsReachDevices: a command published on a device's cmd topic
// while it lingers is received and counted.
func TestCommandsReachDevices(t *testing.T) {
	b := startBroker(t, mqtt.EmbeddedConfig{})
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	var got sync.Map
	var n atomic.Int64
	cfg := Config{Broker: b.url, Devices: 3, QoS: 1, Count: 1, Linger: time.Minute,
		OnAck: func(a Ack) {
			// The subscription was sent before the publish on the same
			// connection, so it is in place now.
			go func() {
				_ = b.e.Publish(ctx, "devices/"+a.Device+"/cmd", []byte(`{"cmd":"led","on":true}`), 1, false)
			}()
		},
		OnCommand: func(device string, payload []byte) {
			got.Store(device, string(payload))
			if n.Add(1) == 3 {
				cancel()
			}
		},
	}
	r, err := Run(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	if r.CommandsReceived != 3 {
		t.Fatalf("commands received %d: %+v", r.CommandsReceived, r)
	}
	for i := range 3 {
		if v, _ := got.Load(fmt.Sprintf("sim-%05d", i)); v != `{"cmd":"led","on":true}` {
			t.Errorf("device %d got %v", i, v)
		}
	}
}

// TestReconnectResendsUnacked: the broker refuses the first delivery of
// every 5th message (no PUBACK, the connection is closed); the device
// reconnects, resends it with DUP and it is acknowledged then, once.
func TestReconnectResendsUnacked(t *testing.T) {
	b := startBroker(t, mqtt.EmbeddedConfig{})
	var refused sync.Map
	b.reject = func(m *mqtt.Message) bool {
		p, err := ParsePayload(m.Payload)
		if err != nil || p.Seq%5 != 0 {
			return false
		}
		_, already := refused.LoadOrStore(m.Topic+fmt.Sprint(p.Seq), true)
		return !already
	}
	var acks ackSet
	cfg := Config{Broker: b.url, Devices: 4, Rate: 200, QoS: 1, Count: 20, OnAck: acks.on,
		ReconnectMin: 5 * time.Millisecond, ReconnectMax: 50 * time.Millisecond}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	r, err := Run(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Log(r)
	if r.Acked != 80 || r.Unacked != 0 || r.Reconnects < 16 || r.Resent < 16 || b.dups.Load() < 16 {
		t.Fatalf("report %+v, DUP seen by the broker %d", r, b.dups.Load())
	}
	for k, a := range acks.acks {
		if n := b.handled(k); n != 1 {
			t.Errorf("%s handled %d times", k, n)
		}
		if strings.HasSuffix(k, "/5") && a.Resent == 0 {
			t.Errorf("%s acked without a resend", k)
		}
	}
}

// TestBrokerAwayThenBack: devices keep trying with backoff while nothing
// listens, and connect once the broker appears.
func TestBrokerAwayThenBack(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	var failures atomic.Int64
	cfg := Config{Broker: "tcp://" + addr, Devices: 2, QoS: 1, Count: 2, Rate: 50,
		ReconnectMin: 5 * time.Millisecond, ReconnectMax: 20 * time.Millisecond,
		Logger: slog.New(countHandler{&failures})}
	done := make(chan *Report, 1)
	go func() {
		r, err := Run(context.Background(), cfg)
		if err != nil {
			t.Error(err)
		}
		done <- r
	}()
	for failures.Load() < 4 {
		select {
		case r := <-done:
			t.Fatalf("finished while the broker was away: %+v", r)
		case <-time.After(time.Millisecond):
		}
	}
	e, err := mqtt.NewEmbedded(mqtt.EmbeddedConfig{Listen: addr, AllowAnonymous: true}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := e.SetFilters(context.Background(), []string{"#"}); err != nil {
		t.Fatal(err)
	}
	if err := e.Start(context.Background(), func(context.Context, *mqtt.Message) error { return nil }); err != nil {
		t.Fatal(err)
	}
	defer e.Close(context.Background())
	select {
	case r := <-done:
		if r.Acked != 4 || r.ConnectFailures < 4 || r.Connected != 2 {
			t.Fatalf("report %+v", r)
		}
	case <-time.After(60 * time.Second):
		t.Fatal("devices did not connect to the broker")
	}
}

// countHandler counts debug "connect failed" records.
type countHandler struct{ n *atomic.Int64 }

func (h countHandler) Enabled(context.Context, slog.Level) bool { return true }
func (h countHandler) Handle(_ context.Context, r slog.Record) error {
	if r.Message == "devsim: connect failed" {
		h.n.Add(1)
	}
	return nil
}
func (h countHandler) WithAttrs([]slog.Attr) slog.Handler { return h }
func (h countHandler) WithGroup(string) slog.Handler      { return h }

func TestNoDeviceConnects(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	r, err := Run(context.Background(), Config{Broker: "tcp://" + addr, Duration: 100 * time.Millisecond,
		ReconnectMin: 5 * time.Millisecond, ReconnectMax: 10 * time.Millisecond})
	if !errors.Is(err, ErrNoDevice) || r.ConnectFailures == 0 || r.Connected != 0 {
		t.Fatalf("err %v report %+v", err, r)
	}
}

func TestWrongPasswordIsAConnectFailure(t *testing.T) {
	// The lowest bcrypt cost keeps the test fast under -race.
	hashed, err := bcrypt.GenerateFromPassword([]byte("right"), bcrypt.MinCost)
	hash := string(hashed)
	if err != nil {
		t.Fatal(err)
	}
	b := startBroker(t, mqtt.EmbeddedConfig{Users: []mqtt.User{{Username: "sim-00000", PasswordHash: hash}}})
	r, err := Run(context.Background(), Config{Broker: b.url, Username: "{device}", Password: "wrong",
		Duration: 100 * time.Millisecond, ReconnectMin: time.Second, ReconnectMax: time.Second})
	if !errors.Is(err, ErrNoDevice) || !strings.Contains(r.LastError, "CONNACK") {
		t.Fatalf("err %v report %+v", err, r)
	}
	var acks ackSet
	r, err = Run(context.Background(), Config{Broker: b.url, Username: "{device}", Password: "right", QoS: 1, Count: 2, Rate: 50, OnAck: acks.on})
	if err != nil || r.Acked != 2 || r.Errors != 0 {
		t.Fatalf("err %v report %+v", err, r)
	}
}

func TestValidate(t *testing.T) {
	ok := Config{Broker: "tcp://127.0.0.1:1883"}
	if err := ok.Validate(); err != nil {
		t.Fatal(err)
	}
	if err := (Config{Broker: "mqtt://localhost"}).Validate(); err != nil {
		t.Fatal(err)
	}
	for name, mut := range map[string]func(*Config){
		"no broker":        func(c *Config) { c.Broker = "" },
		"bad scheme":       func(c *Config) { c.Broker = "http://x:1" },
		"path":             func(c *Config) { c.Broker = "tcp://x:1/a" },
		"no host":          func(c *Config) { c.Broker = "tcp://:1883" },
		"negative devices": func(c *Config) { c.Devices = -1 },
		"too many":         func(c *Config) { c.Devices = MaxDevices + 1 },
		"negative rate":    func(c *Config) { c.Rate = -1 },
		"nan rate":         func(c *Config) { c.Rate = math.NaN() },
		"inf rate":         func(c *Config) { c.Rate = math.Inf(1) },
		"tiny rate":        func(c *Config) { c.Rate = 1e-300 },
		"tiny connect":     func(c *Config) { c.ConnectRate = 1e-300 },
		"jitter":           func(c *Config) { c.Jitter = 1.5 },
		"qos 2":            func(c *Config) { c.QoS = 2 },
		"count":            func(c *Config) { c.Count = -1 },
		"duration":         func(c *Config) { c.Duration = -time.Second },
		"payload":          func(c *Config) { c.PayloadBytes = MaxPayloadBytes + 1 },
		"keepalive":        func(c *Config) { c.KeepAlive = time.Millisecond },
		"backoff":          func(c *Config) { c.ReconnectMin, c.ReconnectMax = time.Second, time.Millisecond },
		"inflight":         func(c *Config) { c.MaxInflight = 70000 },
		"topic prefix":     func(c *Config) { c.TopicPrefix = "a/b" },
		"device prefix":    func(c *Config) { c.DevicePrefix = "x+" },
		"client prefix":    func(c *Config) { c.ClientIDPrefix = "\xff" },
		"linger":           func(c *Config) { c.Linger = -1 },
	} {
		c := ok
		mut(&c)
		if err := c.Validate(); !errors.Is(err, ErrConfig) {
			t.Errorf("%s: err %v", name, err)
		}
		if _, err := Run(context.Background(), c); !errors.Is(err, ErrConfig) {
			t.Errorf("%s: Run err %v", name, err)
		}
	}
}

func TestPayloadRoundTrip(t *testing.T) {
	p := Payload{Seq: 42, TS: 1764115200123, Temp: -3.25, Hum: 40, Pad: "xxx"}
	b := appendPayload(nil, &p)
	if string(b) != `{"seq":42,"ts":1764115200123,"temp":-3.25,"hum":40.00,"pad":"xxx"}` {
		t.Fatalf("%s", b)
	}
	q, err := ParsePayload(b)
	if err != nil || q != p {
		t.Fatalf("%+v %v", q, err)
	}
}

func TestParsePayloadRejects(t *testing.T) {
	for _, in := range []string{
		``, `null`, `[]`, `{`, `{"seq":1}`, `{"seq":1,"ts":1,"temp":1}`,
		`{"seq":0,"ts":1,"temp":1,"hum":1}`, `{"seq":-1,"ts":1,"temp":1,"hum":1}`,
		`{"seq":1.5,"ts":1,"temp":1,"hum":1}`, `{"seq":9007199254740993,"ts":1,"temp":1,"hum":1}`,
		`{"seq":1,"ts":1e3,"temp":1,"hum":1}`, `{"seq":1,"ts":-5,"temp":1,"hum":1}`,
		`{"seq":"1","ts":1,"temp":1,"hum":1}`, `{"seq":1,"ts":1,"temp":"hot","hum":1}`,
		`{"seq":1,"ts":1,"temp":1e999,"hum":1}`, `{"seq":1,"ts":1,"temp":1,"hum":1} x`,
	} {
		if _, err := ParsePayload([]byte(in)); !errors.Is(err, ErrPayload) {
			t.Errorf("%q: err %v", in, err)
		}
	}
}

func FuzzParsePayload(f *testing.F) {
	f.Add([]byte(`{"seq":1,"ts":2,"temp":3,"hum":4}`))
	f.Add([]byte(`{"seq":9007199254740992,"ts":0,"temp":-1e300,"hum":1e-300,"pad":"x"}`))
	f.Add([]byte(`{"seq":1,"ts":1,"temp":1,"hum":1,"seq":2}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		p, err := ParsePayload(data)
		if err != nil {
			if !errors.Is(err, ErrPayload) {
				t.Fatalf("error does not wrap ErrPayload: %v", err)
			}
			return
		}
		if p.Seq == 0 || p.Seq > maxSeq || p.TS < 0 {
			t.Fatalf("accepted %+v", p)
		}
		// What devices write parses back to the same fields.
		if strings.Contains(p.Pad, `"`) || strings.Contains(p.Pad, `\`) {
			return
		}
		q, err := ParsePayload(appendPayload(nil, &Payload{Seq: p.Seq, TS: p.TS, Temp: 1.5, Hum: 2}))
		if err != nil || q.Seq != p.Seq || q.TS != p.TS {
			t.Fatalf("round trip of %+v: %+v %v", p, q, err)
		}
	})
}

func TestHistogram(t *testing.T) {
	var h histogram
	for i := 1; i <= 1000; i++ {
		h.add(time.Duration(i) * time.Millisecond)
	}
	for q, want := range map[float64]time.Duration{0.5: 500 * time.Millisecond, 0.9: 900 * time.Millisecond, 0.99: 990 * time.Millisecond} {
		got := h.quantile(q)
		if got < want || float64(got) > float64(want)*1.13 {
			t.Errorf("q%v = %v, want about %v", q, got, want)
		}
	}
	if s := h.summary(); s.Max != 1000 || s.Count != 1000 {
		t.Errorf("summary %+v", s)
	}
	for us := range uint64(100000) {
		if i := bucketOf(us); us > bucketUpper(i) || (i > 0 && us <= bucketUpper(i-1)) {
			t.Fatalf("%d in bucket %d (upper %d)", us, i, bucketUpper(i))
		}
	}
}

// TestOfflineStatusIsQoS1: before its clean disconnect each device publishes
// the retained "offline" at QoS 1, as the contract asks of status messages,
// and waits for the PUBACK: when Run returns the broker has handled it.
func TestOfflineStatusIsQoS1(t *testing.T) {
	e, err := mqtt.NewEmbedded(mqtt.EmbeddedConfig{Listen: "127.0.0.1:0", AllowAnonymous: true}, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	if err := e.SetFilters(context.Background(), []string{"devices/+/status"}); err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	last := map[string]mqtt.Message{}
	h := func(_ context.Context, m *mqtt.Message) error {
		// A slow handler: a PUBACK not waited for would come too late.
		time.Sleep(50 * time.Millisecond)
		mu.Lock()
		last[m.Topic] = *m
		mu.Unlock()
		return nil
	}
	if err := e.Start(context.Background(), h); err != nil {
		t.Fatal(err)
	}
	defer e.Close(context.Background())
	r, err := Run(context.Background(), Config{Broker: "tcp://" + e.Addr().String(), Devices: 3, QoS: 1, Count: 2, Rate: 50})
	if err != nil || r.Acked != 6 {
		t.Fatalf("err %v report %+v", err, r)
	}
	mu.Lock()
	defer mu.Unlock()
	for i := range 3 {
		topic := fmt.Sprintf("devices/sim-%05d/status", i)
		m, ok := last[topic]
		if !ok || string(m.Payload) != "offline" || m.QoS != 1 || !m.Retain {
			t.Errorf("%s: last status %q qos %d retain %v (seen %v)", topic, m.Payload, m.QoS, m.Retain, ok)
		}
	}
}
