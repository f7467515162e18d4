package mqtt

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"
	"github.com/moongate-edge/moongate/mqtt/mqtttest"
)

func startExternal(t testing.TB, url, clientID string, h Handler, filters ...string) *External {
	t.Helper()
	x, err := NewExternal(ExternalConfig{Broker: url, ClientID: clientID, KeepAlive: 5 * time.Second,
		ConnectTimeout: 3 * time.Second, MaxReconnectInterval: 500 * time.Millisecond}, testLogger(t))
	if err != nil {
		t.Fatalf("NewExternal: %v", err)
	}
	if filters != nil {
		if err := x.SetFilters(context.Background(), filters); err != nil {
			t.Fatalf("SetFilters: %v", err)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := x.Start(ctx, h); err != nil {
		t.Fatalf("Start: %v", err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := x.Close(ctx); err != nil {
			t.Errorf("Close: %v", err)
		}
	})
	return x
}

// payloadSet collects distinct payloads handed to a Handler.
type payloadSet struct {
	mu    sync.Mutex
	seen  map[string]int
	order []string
}

func newPayloadSet() *payloadSet { return &payloadSet{seen: map[string]int{}} }

func (p *payloadSet) add(m *Message) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.seen[string(m.Payload)]++
	p.order = append(p.order, string(m.Payload))
}

func (p *payloadSet) distinct() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.seen)
}

func (p *payloadSet) has(s string) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.seen[s] > 0
}

func publishN(t testing.TB, c paho.Client, topic string, from, n int) {
	t.Helper()
	for i := from; i < from+n; i++ {
		if err := waitToken(t, c.Publish(topic, 1, false, []byte(fmt.Sprintf("m%05d", i)))); err != nil {
			t.Fatalf("publish %d: %v", i, err)
		}
	}
}

func TestExternalReceiveAckPublish(t *testing.T) {
	m := mqtttest.StartMosquitto(t)
	ps := newPayloadSet()
	x := startExternal(t, m.URL(), "gw-basic", func(ctx context.Context, msg *Message) error { ps.add(msg); return nil }, "devices/+/t")
	if !x.Ready() {
		t.Fatal("not ready after Start")
	}
	pub := mustDial(t, m.URL(), "device")
	publishN(t, pub, "devices/a/t", 0, 50)
	if err := waitToken(t, pub.Publish("devices/a/other", 1, false, []byte("not ours"))); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "50 messages", 10*time.Second, func() bool { return ps.distinct() == 50 })
	// Local publish through the broker.
	got := make(chan string, 1)
	if err := waitToken(t, pub.Subscribe("out/#", 1, func(_ paho.Client, m paho.Message) { got <- string(m.Payload()) })); err != nil {
		t.Fatal(err)
	}
	if err := x.Publish(context.Background(), "out/1", []byte("result"), 1, false); err != nil {
		t.Fatal(err)
	}
	select {
	case p := <-got:
		if p != "result" {
			t.Fatalf("got %q", p)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("local publish not received")
	}
	// Filters can change while connected.
	if err := x.SetFilters(context.Background(), []string{"devices/+/other"}); err != nil {
		t.Fatal(err)
	}
	if err := waitToken(t, pub.Publish("devices/a/other", 1, false, []byte("now ours"))); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "message on new filter", 5*time.Second, func() bool { return ps.has("now ours") })
	publishN(t, pub, "devices/a/t", 1000, 1) // no longer subscribed
	if err := waitToken(t, pub.Publish("devices/b/other", 1, false, []byte("sync"))); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "sync message", 5*time.Second, func() bool { return ps.has("sync") })
	if ps.has("m01000") {
		t.Fatal("received a message on a removed filter")
	}
	// Accepted is counted after the handler returns.
	waitFor(t, "52 accepted", 5*time.Second, func() bool { return x.Stats().Accepted >= 52 })
	if st := x.Stats(); st.Accepted != 52 || st.Published != 1 {
		t.Fatalf("stats = %+v", st)
	}
	if err := x.Publish(context.Background(), "a/+", nil, 0, false); !errors.Is(err, ErrInvalidTopic) {
		t.Fatalf("invalid topic publish: %v", err)
	}
}

// A handler error leaves the message unacknowledged; the client reconnects
// and the broker redelivers it, in order with the ones after it.
func TestExternalHandlerErrorRedelivered(t *testing.T) {
	m := mqtttest.StartMosquitto(t)
	var failed atomic.Bool
	ps := newPayloadSet()
	x := startExternal(t, m.URL(), "gw-redeliver", func(ctx context.Context, msg *Message) error {
		if string(msg.Payload) == "m00003" && failed.CompareAndSwap(false, true) {
			return errors.New("inbox unavailable")
		}
		ps.add(msg)
		return nil
	}, "d/#")
	pub := mustDial(t, m.URL(), "device")
	publishN(t, pub, "d/1", 0, 10)
	waitFor(t, "all 10 accepted", 15*time.Second, func() bool { return ps.distinct() == 10 })
	st := x.Stats()
	if st.RejectedHandler != 1 || st.Reconnects < 1 {
		t.Fatalf("stats = %+v", st)
	}
	waitFor(t, "ready again", 10*time.Second, x.Ready)
}

// Killing the broker: the client reconnects, resubscribes (the killed broker
// lost the session) and keeps receiving.
func TestExternalBrokerKillRestart(t *testing.T) {
	m := mqtttest.StartMosquitto(t)
	ps := newPayloadSet()
	x := startExternal(t, m.URL(), "gw-restart", func(ctx context.Context, msg *Message) error { ps.add(msg); return nil }, "k/#")
	pub := mustDial(t, m.URL(), "device-1")
	publishN(t, pub, "k/1", 0, 5)
	waitFor(t, "first batch", 10*time.Second, func() bool { return ps.distinct() == 5 })
	m.Kill()
	waitFor(t, "not ready after kill", 10*time.Second, func() bool { return !x.Ready() })
	m.Restart()
	waitFor(t, "ready after restart", 15*time.Second, x.Ready)
	pub2 := mustDial(t, m.URL(), "device-2")
	publishN(t, pub2, "k/1", 5, 5)
	waitFor(t, "second batch", 10*time.Second, func() bool { return ps.distinct() == 10 })
	if x.Stats().Reconnects < 1 {
		t.Fatalf("stats = %+v", x.Stats())
	}
}

// Messages published while the gateway is offline wait in its persistent
// session, across a graceful broker restart, and arrive when it returns.
func TestExternalOfflineMessagesDelivered(t *testing.T) {
	m := mqtttest.StartMosquitto(t)
	ps := newPayloadSet()
	h := func(ctx context.Context, msg *Message) error { ps.add(msg); return nil }
	x, err := NewExternal(ExternalConfig{Broker: m.URL(), ClientID: "gw-offline"}, testLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	_ = x.SetFilters(context.Background(), []string{"o/#"})
	if err := x.Start(context.Background(), h); err != nil {
		t.Fatal(err)
	}
	if err := x.Close(context.Background()); err != nil {
		t.Fatal(err)
	}
	pub := mustDial(t, m.URL(), "device")
	publishN(t, pub, "o/1", 0, 200)
	pub.Disconnect(50)
	m.Stop() // SIGTERM: mosquitto writes its persistence file
	m.Restart()
	startExternal(t, m.URL(), "gw-offline", h, "o/#")
	deadline := time.Now().Add(15 * time.Second)
	for ps.distinct() < 200 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if n := ps.distinct(); n != 200 {
		t.Fatalf("received %d of 200 messages published while offline; mosquitto log:\n%s", n, m.Log())
	}
	ps.mu.Lock()
	defer ps.mu.Unlock()
	if len(ps.order) != 200 {
		t.Fatalf("got %d deliveries for 200 messages", len(ps.order))
	}
}

// A blocking handler holds at most the broker's in-flight window; the rest
// waits at the broker, and nothing is lost once it unblocks.
func TestExternalBackpressure(t *testing.T) {
	m := mqtttest.StartMosquitto(t, mqtttest.WithConfig("max_inflight_messages 5"))
	release := make(chan struct{})
	var running, peak atomic.Int64
	ps := newPayloadSet()
	startExternal(t, m.URL(), "gw-slow", func(ctx context.Context, msg *Message) error {
		n := running.Add(1)
		for {
			p := peak.Load()
			if n <= p || peak.CompareAndSwap(p, n) {
				break
			}
		}
		<-release
		running.Add(-1)
		ps.add(msg)
		return nil
	}, "s/#")
	var once sync.Once
	t.Cleanup(func() { once.Do(func() { close(release) }) })
	pub := mustDial(t, m.URL(), "device")
	// Ten topics: messages of one topic are handled one at a time, in
	// order; different topics in parallel, up to the broker's window.
	for j := range 30 {
		for i := range 10 {
			publishN(t, pub, fmt.Sprintf("s/%d", i), j*10+i, 1)
		}
	}
	waitFor(t, "handlers saturated", 10*time.Second, func() bool { return running.Load() == 5 })
	if p := peak.Load(); p > 5 {
		t.Fatalf("%d handlers ran at once with a broker window of 5", p)
	}
	once.Do(func() { close(release) })
	waitFor(t, "all 300 delivered", 20*time.Second, func() bool { return ps.distinct() == 300 })
	if p := peak.Load(); p > 5 {
		t.Fatalf("peak concurrency %d > 5", p)
	}
}

func TestExternalConfigErrors(t *testing.T) {
	for name, cfg := range map[string]ExternalConfig{
		"no scheme":   {Broker: "localhost:1883"},
		"bad scheme":  {Broker: "http://localhost:1883"},
		"empty":       {},
		"cert no key": {Broker: "tcp://127.0.0.1:1", CertFile: "c.pem"},
		"missing ca":  {Broker: "ssl://127.0.0.1:1", CAFile: "/nonexistent/ca.pem"},
		"keepalive":   {Broker: "tcp://127.0.0.1:1", KeepAlive: time.Millisecond},
		"tls on tcp":  {Broker: "tcp://127.0.0.1:1", CAFile: "/etc/ssl/certs/ca-certificates.crt"},
	} {
		if _, err := NewExternal(cfg, nil); !errors.Is(err, ErrConfig) {
			t.Errorf("%s: err = %v, want ErrConfig", name, err)
		}
	}
}

// Start gives up when its context ends but keeps connecting; Close stops it.
func TestExternalStartUnreachable(t *testing.T) {
	port := freeLoopbackPort(t)
	x, err := NewExternal(ExternalConfig{Broker: fmt.Sprintf("tcp://127.0.0.1:%d", port), ClientID: "gw-x",
		ConnectTimeout: 200 * time.Millisecond, MaxReconnectInterval: 200 * time.Millisecond}, testLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	if err := x.Start(ctx, func(context.Context, *Message) error { return nil }); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Start = %v", err)
	}
	if x.Ready() {
		t.Fatal("ready without a broker")
	}
	if err := x.Publish(context.Background(), "a", nil, 0, false); !errors.Is(err, ErrNotConnected) {
		t.Fatalf("publish without a broker: %v", err)
	}
	done := make(chan error, 1)
	go func() { done <- x.Close(context.Background()) }()
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Close hung while connecting")
	}
}

// PublishAll sends a run of messages in order without waiting for each
// acknowledgement, and says how many of the first ones went out when one
// cannot.
func TestExternalPublishAll(t *testing.T) {
	m := mqtttest.StartMosquitto(t)
	x := startExternal(t, m.URL(), "gw-publishall", func(context.Context, *Message) error { return nil })
	var mu sync.Mutex
	var got []string
	sub := mustDial(t, m.URL(), "sub", func(o *paho.ClientOptions) { o.SetOrderMatters(true) })
	if err := waitToken(t, sub.Subscribe("out/#", 1, func(_ paho.Client, msg paho.Message) {
		mu.Lock()
		got = append(got, string(msg.Payload()))
		mu.Unlock()
	})); err != nil {
		t.Fatal(err)
	}
	received := func() []string {
		mu.Lock()
		defer mu.Unlock()
		return append([]string(nil), got...)
	}
	var msgs []Outgoing
	for i := range 300 {
		msgs = append(msgs, Outgoing{Topic: "out/a", Payload: []byte(fmt.Sprintf("m%03d", i)), QoS: 1})
	}
	n, err := x.PublishAll(context.Background(), msgs)
	if n != len(msgs) || err != nil {
		t.Fatalf("PublishAll = %d, %v; want %d, nil", n, err, len(msgs))
	}
	waitFor(t, "300 messages", 10*time.Second, func() bool { return len(received()) == 300 })
	for i, p := range received() {
		if want := fmt.Sprintf("m%03d", i); p != want {
			t.Fatalf("message %d is %q, want %q (order)", i, p, want)
		}
	}
	if st := x.Stats(); st.Published != 300 {
		t.Fatalf("published = %d, want 300", st.Published)
	}
	// A bad message stops the run: the ones before it go out.
	bad := []Outgoing{{Topic: "out/b", Payload: []byte("b0"), QoS: 1}, {Topic: "out/b", Payload: []byte("b1"), QoS: 1},
		{Topic: "out/+", Payload: []byte("wild"), QoS: 1}, {Topic: "out/b", Payload: []byte("b3"), QoS: 1}}
	n, err = x.PublishAll(context.Background(), bad)
	if n != 2 || !errors.Is(err, ErrInvalidTopic) {
		t.Fatalf("PublishAll with a wildcard topic third = %d, %v; want 2, ErrInvalidTopic", n, err)
	}
	if n, err = x.PublishAll(context.Background(), []Outgoing{{Topic: "out/c", QoS: 3}}); n != 0 || !errors.Is(err, ErrInvalidQoS) {
		t.Fatalf("PublishAll with QoS 3 = %d, %v", n, err)
	}
	waitFor(t, "the two before the bad one", 10*time.Second, func() bool { return len(received()) == 302 })
	if r := received(); r[300] != "b0" || r[301] != "b1" {
		t.Fatalf("after the bad run got %q", r[300:])
	}
	idle, err := NewExternal(ExternalConfig{Broker: m.URL(), ClientID: "never-started"}, testLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	if n, err := idle.PublishAll(context.Background(), msgs[:1]); n != 0 || !errors.Is(err, ErrNotStarted) {
		t.Fatalf("PublishAll before Start = %d, %v", n, err)
	}
}

// A QoS 1 message in flight when the connection drops is not reported as
// published: paho completes its token when it resends the message on the
// next connection, before the broker has acknowledged it (paho#563), and
// an outbox that deleted the message then could lose it in a crash. The
// broker here is moongate's embedded one, whose handler holds the
// acknowledgements until the test lets them go.
func TestExternalPublishUnconfirmedAcrossReconnect(t *testing.T) {
	release := make(chan struct{})
	var mu sync.Mutex
	seen := map[string]int{}
	e := startEmbedded(t, EmbeddedConfig{AllowAnonymous: true}, func(ctx context.Context, m *Message) error {
		mu.Lock()
		seen[string(m.Payload)]++
		mu.Unlock()
		select { // no PUBACK until released
		case <-release:
			return nil
		case <-ctx.Done():
			return ctx.Err()
		}
	}, "out/#")
	var once sync.Once
	defer once.Do(func() { close(release) })
	x := startExternal(t, "tcp://"+e.Addr().String(), "gw-unconfirmed", func(context.Context, *Message) error { return nil })
	msgs := []Outgoing{{Topic: "out/a", Payload: []byte("m0"), QoS: 1}, {Topic: "out/a", Payload: []byte("m1"), QoS: 1}}
	type result struct {
		n   int
		err error
	}
	done := make(chan result, 1)
	go func() {
		n, err := x.PublishAll(context.Background(), msgs)
		done <- result{n, err}
	}()
	count := func(p string) int {
		mu.Lock()
		defer mu.Unlock()
		return seen[p]
	}
	// The broker's handler takes one client's messages in order: m1 waits
	// behind m0, unacknowledged too.
	waitFor(t, "the first message at the broker, unacknowledged", 10*time.Second, func() bool { return count("m0") == 1 })
	reconnects := x.Stats().Reconnects
	cl, ok := e.srv.Clients.Get("gw-unconfirmed")
	if !ok {
		t.Fatal("the gateway's client is not at the broker")
	}
	cl.Stop(errors.New("test: connection cut"))
	var r result
	select {
	case r = <-done:
	case <-time.After(20 * time.Second):
		once.Do(func() { close(release) })
		t.Fatal("PublishAll did not return after the reconnect")
	}
	if r.n != 0 || !errors.Is(r.err, ErrUnconfirmed) {
		t.Fatalf("PublishAll across a lost connection = %d, %v; want 0, ErrUnconfirmed", r.n, r.err)
	}
	waitFor(t, "the reconnection", 10*time.Second, func() bool { return x.Stats().Reconnects > reconnects })
	once.Do(func() { close(release) })
	// paho resends both on the new connection; they arrive (again).
	waitFor(t, "both messages resent", 10*time.Second, func() bool { return count("m0") >= 2 && count("m1") >= 1 })
	n, err := x.PublishAll(context.Background(), msgs)
	if n != 2 || err != nil {
		t.Fatalf("PublishAll on a steady connection = %d, %v", n, err)
	}
}
