package mqtt

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os/exec"
	"runtime"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"
	"golang.org/x/crypto/bcrypt"
)

func brokerURL(e *Embedded) string { return "tcp://" + e.Addr().String() }

// The PUBACK must not reach the device before the Handler returned nil.
func TestEmbeddedAckOnlyAfterHandler(t *testing.T) {
	release := make(chan struct{})
	var got atomic.Pointer[Message]
	e := startEmbedded(t, EmbeddedConfig{AllowAnonymous: true}, func(ctx context.Context, m *Message) error {
		got.Store(m)
		<-release
		return nil
	}, "devices/+/telemetry")
	c := mustDial(t, brokerURL(e), "dev1")
	tok := c.Publish("devices/dev1/telemetry", 1, false, []byte(`{"t":21}`))
	waitFor(t, "handler call", 5*time.Second, func() bool { return got.Load() != nil })
	select {
	case <-tok.Done():
		t.Fatal("PUBACK arrived while the handler had not returned")
	case <-time.After(200 * time.Millisecond):
	}
	close(release)
	if err := waitToken(t, tok); err != nil {
		t.Fatalf("publish: %v", err)
	}
	m := got.Load()
	if m.Topic != "devices/dev1/telemetry" || string(m.Payload) != `{"t":21}` || m.QoS != 1 || m.ClientID != "dev1" || m.Received.IsZero() {
		t.Fatalf("message = %+v", m)
	}
	st := e.Stats()
	if st.Received != 1 || st.Accepted != 1 || st.Rejected != 0 {
		t.Fatalf("stats = %+v", st)
	}
}

// Topics outside the filters are only routed; matching ones are handled and
// routed too.
func TestEmbeddedFiltersAndRouting(t *testing.T) {
	var rec recorder
	e := startEmbedded(t, EmbeddedConfig{AllowAnonymous: true}, rec.handle, "in/#")
	sub := mustDial(t, brokerURL(e), "sub")
	routed := make(chan string, 10)
	if err := waitToken(t, sub.Subscribe("#", 1, func(_ paho.Client, m paho.Message) { routed <- m.Topic() })); err != nil {
		t.Fatal(err)
	}
	pub := mustDial(t, brokerURL(e), "pub")
	for _, topic := range []string{"in/a", "other/b", "in"} {
		if err := waitToken(t, pub.Publish(topic, 1, false, []byte("x"))); err != nil {
			t.Fatal(err)
		}
	}
	seen := map[string]bool{}
	for len(seen) < 3 {
		select {
		case topic := <-routed:
			seen[topic] = true
		case <-time.After(5 * time.Second):
			t.Fatalf("routed only %v", seen)
		}
	}
	if rec.len() != 2 || rec.get(0).Topic != "in/a" || rec.get(1).Topic != "in" {
		t.Fatalf("handled %d messages", rec.len())
	}
	if st := e.Stats(); st.Ignored != 1 || st.Accepted != 2 {
		t.Fatalf("stats = %+v", st)
	}
	// Replacing the filters takes effect at once.
	if err := e.SetFilters(context.Background(), []string{"other/+"}); err != nil {
		t.Fatal(err)
	}
	if err := waitToken(t, pub.Publish("other/c", 1, false, []byte{})); err != nil {
		t.Fatal(err)
	}
	if err := waitToken(t, pub.Publish("in/a", 1, false, []byte{})); err != nil {
		t.Fatal(err)
	}
	if rec.len() != 3 || rec.get(2).Topic != "other/c" {
		t.Fatalf("after SetFilters handled %d", rec.len())
	}
	if err := e.SetFilters(context.Background(), []string{"a/#/b"}); !errors.Is(err, ErrInvalidFilter) {
		t.Fatalf("SetFilters invalid = %v", err)
	}
}

// Until the first SetFilters, messages wait instead of being dropped.
func TestEmbeddedMessagesWaitForFilters(t *testing.T) {
	var rec recorder
	e := startEmbedded(t, EmbeddedConfig{AllowAnonymous: true}, rec.handle) // no filters yet
	c := mustDial(t, brokerURL(e), "early")
	tok := c.Publish("t/1", 1, false, []byte("early"))
	select {
	case <-tok.Done():
		t.Fatal("acknowledged before any filter was set")
	case <-time.After(200 * time.Millisecond):
	}
	if err := e.SetFilters(context.Background(), []string{"t/#"}); err != nil {
		t.Fatal(err)
	}
	if err := waitToken(t, tok); err != nil {
		t.Fatal(err)
	}
	if rec.len() != 1 {
		t.Fatalf("handled %d", rec.len())
	}
}

func testUsers(t testing.TB) []User {
	t.Helper()
	// Minimum cost keeps the race-enabled tests fast; HashPassword itself
	// is tested separately.
	hb, err := bcrypt.GenerateFromPassword([]byte("s3cret"), bcrypt.MinCost)
	if err != nil {
		t.Fatal(err)
	}
	h := string(hb)
	return []User{
		{Username: "alice", PasswordHash: h},
		{Username: "mute", PasswordHash: h, Publish: []string{}, Subscribe: []string{}},
		{Username: "ops", PasswordHash: h, Publish: []string{"cmd/#"}, Subscribe: []string{"devices/+/state", "cmd/{username}/#"}},
	}
}

func TestEmbeddedAuthentication(t *testing.T) {
	var rec recorder
	e := startEmbedded(t, EmbeddedConfig{Users: testUsers(t)}, rec.handle, "#")
	url := brokerURL(e)
	if _, err := dial(t, url, "bad", withCreds("alice", "wrong")); err == nil {
		t.Fatal("wrong password accepted")
	}
	if _, err := dial(t, url, "ghost", withCreds("mallory", "s3cret")); err == nil {
		t.Fatal("unknown user accepted")
	}
	if _, err := dial(t, url, "anon"); err == nil {
		t.Fatal("anonymous accepted without AllowAnonymous")
	}
	// A client may give up (connect timeout) before a loaded broker has
	// finished checking the password: wait for the count.
	waitFor(t, "3 authentication failures", 20*time.Second, func() bool { return e.Stats().AuthFailures >= 3 })
	if st := e.Stats(); st.AuthFailures != 3 {
		t.Fatalf("AuthFailures = %d, want 3", st.AuthFailures)
	}
	c := mustDial(t, url, "alice-1", withCreds("alice", "s3cret"))
	if err := waitToken(t, c.Publish("devices/alice/t", 1, false, []byte("1"))); err != nil {
		t.Fatal(err)
	}
	// A second connection hits the verified-password cache and still works.
	mustDial(t, url, "alice-2", withCreds("alice", "s3cret"))
	if rec.len() != 1 || rec.get(0).Username != "alice" || rec.get(0).ClientID != "alice-1" {
		t.Fatalf("handled %d", rec.len())
	}
}

func TestEmbeddedACL(t *testing.T) {
	var rec recorder
	e := startEmbedded(t, EmbeddedConfig{Users: testUsers(t), AllowAnonymous: true}, rec.handle, "#")
	url := brokerURL(e)
	alice := mustDial(t, url, "alice", withCreds("alice", "s3cret"))
	// Outside her prefix: MQTT 3.1.1 has no negative PUBACK, so the publish is
	// acknowledged and dropped, and counted.
	for _, topic := range []string{"devices/bob/t", "devicesX/alice", "cmd/x"} {
		if err := waitToken(t, alice.Publish(topic, 1, false, []byte("x"))); err != nil {
			t.Fatalf("publish %s: %v", topic, err)
		}
	}
	if err := waitToken(t, alice.Publish("devices/alice/ok", 0, false, []byte("x"))); err != nil {
		t.Fatal(err)
	}
	if err := waitToken(t, alice.Publish("devices/bob/q0", 0, false, []byte("x"))); err != nil {
		t.Fatal(err)
	}
	// Round trip so the QoS 0 publishes are processed.
	if err := waitToken(t, alice.Publish("devices/alice/sync", 1, false, []byte{})); err != nil {
		t.Fatal(err)
	}
	if rec.len() != 2 {
		t.Fatalf("handled %d, want 2 (only her own topics)", rec.len())
	}
	st := e.Stats()
	if st.RejectedUnauthorized != 4 || st.Rejected != 4 {
		t.Fatalf("stats = %+v", st)
	}
	if !alice.IsConnectionOpen() {
		t.Fatal("refused publish disconnected the device")
	}
	// Subscriptions outside the subscribe ACL are refused in the SUBACK.
	tok := alice.Subscribe("devices/#", 1, nil)
	if err := waitToken(t, tok); err != nil {
		t.Fatal(err)
	}
	if code := tok.(*paho.SubscribeToken).Result()["devices/#"]; code != 0x80 {
		t.Fatalf("SUBACK for devices/# = %#x, want 0x80", code)
	}
	tok = alice.Subscribe("devices/alice/#", 1, nil)
	if err := waitToken(t, tok); err != nil {
		t.Fatal(err)
	}
	if code := tok.(*paho.SubscribeToken).Result()["devices/alice/#"]; code != 1 {
		t.Fatalf("SUBACK for own prefix = %#x", code)
	}
	// A user with explicit ACLs and the {username} placeholder.
	ops := mustDial(t, url, "ops", withCreds("ops", "s3cret"))
	tok = ops.Subscribe("cmd/ops/+", 1, nil)
	if err := waitToken(t, tok); err != nil || tok.(*paho.SubscribeToken).Result()["cmd/ops/+"] != 1 {
		t.Fatalf("ops subscribe: %v %v", err, tok.(*paho.SubscribeToken).Result())
	}
	// An explicit empty ACL allows nothing.
	mute := mustDial(t, url, "mute", withCreds("mute", "s3cret"))
	if err := waitToken(t, mute.Publish("devices/mute/x", 1, false, []byte{})); err != nil {
		t.Fatal(err)
	}
	tok = mute.Subscribe("devices/mute/#", 1, nil)
	if err := waitToken(t, tok); err != nil || tok.(*paho.SubscribeToken).Result()["devices/mute/#"] != 0x80 {
		t.Fatalf("mute subscribe: %v %v", err, tok.(*paho.SubscribeToken).Result())
	}
	if st := e.Stats(); st.RejectedUnauthorized != 5 {
		t.Fatalf("stats = %+v", st)
	}
	// Anonymous on the loopback listener may do anything.
	anon := mustDial(t, url, "anon")
	if err := waitToken(t, anon.Publish("anything/at/all", 1, false, []byte{})); err != nil {
		t.Fatal(err)
	}
	if rec.len() != 3 {
		t.Fatalf("handled %d, want 3", rec.len())
	}
}

func TestEmbeddedNonLoopbackNeedsUsers(t *testing.T) {
	for _, addr := range []string{"0.0.0.0:0", ":1883", "192.168.1.10:1883", "[::]:1883", "gateway.local:1883"} {
		_, err := NewEmbedded(EmbeddedConfig{Listen: addr, AllowAnonymous: true}, nil)
		if !errors.Is(err, ErrInsecureListener) || !errors.Is(err, ErrConfig) {
			t.Errorf("Listen %s without users: err = %v", addr, err)
		}
	}
	_, err := NewEmbedded(EmbeddedConfig{Listen: "127.0.0.1:0", WebSocketListen: "0.0.0.0:0", AllowAnonymous: true}, nil)
	if !errors.Is(err, ErrInsecureListener) {
		t.Errorf("non-loopback websocket without users: %v", err)
	}
	if _, err := NewEmbedded(EmbeddedConfig{Listen: "0.0.0.0:0", Users: testUsers(t)}, nil); err != nil {
		t.Errorf("with users: %v", err)
	}
	for _, addr := range []string{"127.0.0.1:0", "localhost:1883", "[::1]:0"} {
		if _, err := NewEmbedded(EmbeddedConfig{Listen: addr, AllowAnonymous: true}, nil); err != nil {
			t.Errorf("Listen %s: %v", addr, err)
		}
	}
}

func TestEmbeddedConfigErrors(t *testing.T) {
	gb, _ := bcrypt.GenerateFromPassword([]byte("pw"), bcrypt.MinCost)
	good := string(gb)
	cases := map[string]EmbeddedConfig{
		"bad hash":                     {Users: []User{{Username: "a", PasswordHash: "plain"}}},
		"slash username":               {Users: []User{{Username: "a/b", PasswordHash: good}}},
		"empty username":               {Users: []User{{PasswordHash: good}}},
		"duplicate user":               {Users: []User{{Username: "a", PasswordHash: good}, {Username: "a", PasswordHash: good}}},
		"bad acl":                      {Users: []User{{Username: "a", PasswordHash: good, Publish: []string{"x/#/y"}}}},
		"no port":                      {Listen: "127.0.0.1"},
		"cert no key":                  {TLSCert: "x.pem"},
		"missing cert":                 {TLSCert: "/nonexistent.pem", TLSKey: "/nonexistent.key"},
		"negative limits":              {MaxPayload: -1},
		"negative per address":         {MaxUnauthenticatedPerAddress: -1},
		"per address over max":         {MaxUnauthenticated: 4, MaxUnauthenticatedPerAddress: 5},
		"per address over default max": {MaxUnauthenticatedPerAddress: DefaultMaxUnauthenticated + 1},
	}
	for name, cfg := range cases {
		if _, err := NewEmbedded(cfg, nil); !errors.Is(err, ErrConfig) {
			t.Errorf("%s: err = %v, want ErrConfig", name, err)
		}
	}
}

// A handler error leaves the message unacknowledged and disconnects the
// device; a device with a persistent session resends it after reconnecting.
func TestEmbeddedHandlerErrorRedelivers(t *testing.T) {
	var calls atomic.Int32
	var rec recorder
	e := startEmbedded(t, EmbeddedConfig{AllowAnonymous: true}, func(ctx context.Context, m *Message) error {
		if calls.Add(1) == 1 {
			return errors.New("disk full")
		}
		return rec.handle(ctx, m)
	}, "#")
	lost := make(chan struct{}, 1)
	c := mustDial(t, brokerURL(e), "persistent-dev", func(o *paho.ClientOptions) {
		o.SetCleanSession(false).SetAutoReconnect(true).SetMaxReconnectInterval(200 * time.Millisecond).
			SetConnectionLostHandler(func(paho.Client, error) { lost <- struct{}{} })
	})
	tok := c.Publish("devices/x/t", 1, false, []byte("important"))
	select {
	case <-lost:
	case <-time.After(5 * time.Second):
		t.Fatal("device was not disconnected after the handler error")
	}
	// paho completes the original token when it resends after the
	// reconnect (PITFALLS: paho tokens), so wait for the handler instead.
	_ = waitToken(t, tok)
	waitFor(t, "redelivered message accepted", 10*time.Second, func() bool { return rec.len() == 1 })
	if rec.len() != 1 || string(rec.get(0).Payload) != "important" || !rec.get(0).Duplicate {
		t.Fatalf("accepted %d messages, stats %+v", rec.len(), e.Stats())
	}
	// Accepted is counted after the handler returns.
	waitFor(t, "the redelivery counted as accepted", 5*time.Second, func() bool { return e.Stats().Accepted == 1 })
	if st := e.Stats(); st.RejectedHandler != 1 || st.Accepted != 1 || calls.Load() != 2 {
		t.Fatalf("stats = %+v calls=%d", st, calls.Load())
	}
}

// ErrReject refuses for good: acknowledged, not redelivered, connection kept.
func TestEmbeddedHandlerReject(t *testing.T) {
	var calls atomic.Int32
	e := startEmbedded(t, EmbeddedConfig{AllowAnonymous: true}, func(ctx context.Context, m *Message) error {
		calls.Add(1)
		return errors.Join(ErrReject, errors.New("bad payload"))
	}, "#")
	c := mustDial(t, brokerURL(e), "dev", func(o *paho.ClientOptions) { o.SetCleanSession(false) })
	if err := waitToken(t, c.Publish("a", 1, false, []byte{})); err != nil {
		t.Fatal(err)
	}
	if err := waitToken(t, c.Publish("b", 2, false, []byte{})); err != nil {
		t.Fatal(err)
	}
	if !c.IsConnectionOpen() || calls.Load() != 2 || e.Stats().RejectedHandler != 2 {
		t.Fatalf("open=%v calls=%d stats=%+v", c.IsConnectionOpen(), calls.Load(), e.Stats())
	}
}

// A blocking handler stalls only the publishing connection: its bytes pile
// up in the socket buffers, not in the gateway's memory, and other devices
// are still served.
func TestEmbeddedBackpressure(t *testing.T) {
	release := make(chan struct{})
	var slow, fast atomic.Int64
	e := startEmbedded(t, EmbeddedConfig{AllowAnonymous: true, MaxPayload: 64 << 10}, func(ctx context.Context, m *Message) error {
		if strings.HasPrefix(m.Topic, "slow/") {
			slow.Add(1)
			select {
			case <-release:
			case <-ctx.Done():
				return ctx.Err()
			}
			return nil
		}
		fast.Add(1)
		return nil
	}, "#")
	runtime.GC()
	var before runtime.MemStats
	runtime.ReadMemStats(&before)

	conn := rawDial(t, e.Addr().String(), "flood")
	pkt := rawPublish("slow/flood", 0, 0, make([]byte, 32<<10))
	const attempt = 2000 // 64 MiB if nothing pushed back
	sent := 0
	var rest []byte
	for ; sent < attempt; sent++ {
		_ = conn.SetWriteDeadline(time.Now().Add(300 * time.Millisecond))
		n, err := conn.Write(pkt)
		if err != nil {
			rest = pkt[n:]
			break
		}
	}
	if sent == attempt {
		t.Fatalf("wrote %d MiB without the broker pushing back", attempt*len(pkt)>>20)
	}
	t.Logf("writer stalled after %d packets (%d KiB)", sent, sent*len(pkt)>>10)

	// Another device is served while the flood is stalled.
	other := mustDial(t, brokerURL(e), "other")
	for i := 0; i < 20; i++ {
		if err := waitToken(t, other.Publish("fast/x", 1, false, []byte("y"))); err != nil {
			t.Fatal(err)
		}
	}
	if fast.Load() != 20 || slow.Load() != 1 {
		t.Fatalf("fast=%d slow=%d", fast.Load(), slow.Load())
	}
	var during runtime.MemStats
	runtime.ReadMemStats(&during)
	growth := int64(during.HeapInuse) - int64(before.HeapInuse)
	t.Logf("heap in use grew by %d KiB while %d KiB were pushed at the stalled handler", growth>>10, sent*len(pkt)>>10)
	if growth > 8<<20 {
		t.Fatalf("heap grew by %d MiB under backpressure", growth>>20)
	}

	// Release: every packet written is handled, none is lost.
	close(release)
	_ = conn.SetWriteDeadline(time.Now().Add(10 * time.Second))
	if len(rest) > 0 {
		if _, err := conn.Write(rest); err != nil {
			t.Fatal(err)
		}
		sent++
	}
	// A QoS 1 publish at the end: its PUBACK proves all earlier ones were handled.
	if _, err := conn.Write(rawPublish("slow/end", 1, 7, nil)); err != nil {
		t.Fatal(err)
	}
	_ = conn.SetReadDeadline(time.Now().Add(30 * time.Second))
	ack := make([]byte, 4)
	if _, err := io.ReadFull(conn, ack); err != nil {
		t.Fatalf("read puback: %v", err)
	}
	if ack[0] != 0x40 || ack[3] != 7 {
		t.Fatalf("ack = % x", ack)
	}
	if got := slow.Load(); got != int64(sent)+1 {
		t.Fatalf("handled %d slow messages, wrote %d", got, sent+1)
	}
}

func TestEmbeddedOversize(t *testing.T) {
	var rec recorder
	e := startEmbedded(t, EmbeddedConfig{AllowAnonymous: true, MaxPayload: 1024}, rec.handle, "#")
	c := mustDial(t, brokerURL(e), "dev")
	// Over MaxPayload but readable: refused (acknowledged and dropped for
	// MQTT 3.1.1), the connection stays.
	if err := waitToken(t, c.Publish("big", 1, false, make([]byte, 2048))); err != nil {
		t.Fatal(err)
	}
	if err := waitToken(t, c.Publish("small", 1, false, make([]byte, 1024))); err != nil {
		t.Fatal(err)
	}
	if rec.len() != 1 || rec.get(0).Topic != "small" || !c.IsConnectionOpen() {
		t.Fatalf("handled %d open=%v", rec.len(), c.IsConnectionOpen())
	}
	// Over the packet limit (4*MaxPayload+64 KiB): not even read, the
	// connection is closed.
	raw := rawDial(t, e.Addr().String(), "huge")
	_, _ = raw.Write(rawPublish("huge", 1, 1, make([]byte, 1<<20)))
	expectClosed(t, raw)
	waitFor(t, "oversize count", 5*time.Second, func() bool { return e.Stats().RejectedOversize == 2 })
	if rec.len() != 1 {
		t.Fatalf("handled %d", rec.len())
	}
}

// MQTT v5 devices see the refusal reason in the PUBACK (mosquitto_pub -V 5).
func TestEmbeddedV5ReasonCodes(t *testing.T) {
	pub, err := exec.LookPath("mosquitto_pub")
	if err != nil {
		t.Fatalf("mosquitto_pub not installed (apt-get install mosquitto-clients): %v", err)
	}
	e := startEmbedded(t, EmbeddedConfig{Users: testUsers(t), MaxPayload: 16}, func(ctx context.Context, m *Message) error { return nil }, "#")
	_, port, _ := net.SplitHostPort(e.Addr().String())
	run := func(args ...string) string {
		args = append([]string{"-h", "127.0.0.1", "-p", port, "-V", "5", "-q", "1", "-u", "alice", "-P", "s3cret"}, args...)
		out, _ := exec.Command(pub, args...).CombinedOutput()
		return string(out)
	}
	if out := run("-t", "devices/bob/x", "-m", "hi"); !strings.Contains(strings.ToLower(out), "not authorized") {
		t.Errorf("ACL refusal: mosquitto_pub said %q", out)
	}
	if out := run("-t", "devices/alice/x", "-m", strings.Repeat("x", 100)); !strings.Contains(strings.ToLower(out), "too large") {
		t.Errorf("oversize refusal: mosquitto_pub said %q", out)
	}
	if out := run("-t", "devices/alice/x", "-m", "ok"); strings.TrimSpace(out) != "" {
		t.Errorf("accepted publish: mosquitto_pub said %q", out)
	}
	if st := e.Stats(); st.Accepted != 1 || st.RejectedUnauthorized != 1 || st.RejectedOversize != 1 {
		t.Fatalf("stats = %+v", st)
	}
}

// Invalid topics are protocol errors: the connection is closed and counted;
// other devices are not affected.
func TestEmbeddedInvalidTopics(t *testing.T) {
	var rec recorder
	e := startEmbedded(t, EmbeddedConfig{AllowAnonymous: true}, rec.handle, "#")
	for i, topic := range []string{"a/+/b", "a/#", "\xff\xfe", "a\x00b", "$SYS/fake", ""} {
		c := rawDial(t, e.Addr().String(), "bad")
		_, _ = c.Write(rawPublish(topic, 1, 1, []byte("x")))
		expectClosed(t, c)
		waitFor(t, "invalid topic count", 5*time.Second, func() bool { return e.Stats().RejectedInvalidTopic == uint64(i+1) })
	}
	good := mustDial(t, brokerURL(e), "good")
	if err := waitToken(t, good.Publish("a/b", 1, false, []byte{})); err != nil {
		t.Fatal(err)
	}
	if rec.len() != 1 {
		t.Fatalf("handled %d", rec.len())
	}
}

func TestEmbeddedPublish(t *testing.T) {
	var rec recorder
	e := startEmbedded(t, EmbeddedConfig{AllowAnonymous: true}, rec.handle, "#")
	sub := mustDial(t, brokerURL(e), "sub")
	got := make(chan paho.Message, 1)
	if err := waitToken(t, sub.Subscribe("out/#", 1, func(_ paho.Client, m paho.Message) { got <- m })); err != nil {
		t.Fatal(err)
	}
	if err := e.Publish(context.Background(), "out/1", []byte("result"), 1, false); err != nil {
		t.Fatal(err)
	}
	select {
	case m := <-got:
		if string(m.Payload()) != "result" || m.Qos() != 1 {
			t.Fatalf("got %q qos %d", m.Payload(), m.Qos())
		}
	case <-time.After(5 * time.Second):
		t.Fatal("subscriber did not receive the local publish")
	}
	if rec.len() != 0 {
		t.Fatal("local publish was passed to the handler")
	}
	if err := e.Publish(context.Background(), "out/+", nil, 0, false); !errors.Is(err, ErrInvalidTopic) {
		t.Fatalf("wildcard publish: %v", err)
	}
	if err := e.Publish(context.Background(), "out/x", nil, 3, false); !errors.Is(err, ErrInvalidQoS) {
		t.Fatalf("qos 3: %v", err)
	}
	if st := e.Stats(); st.Published != 1 {
		t.Fatalf("stats = %+v", st)
	}
}

// Close stops intake, lets the in-flight handler finish and acknowledge,
// then disconnects.
func TestEmbeddedCloseWaitsForHandlers(t *testing.T) {
	release := make(chan struct{})
	entered := make(chan struct{}, 1)
	e, err := NewEmbedded(EmbeddedConfig{Listen: "127.0.0.1:0", AllowAnonymous: true}, testLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	_ = e.SetFilters(context.Background(), []string{"#"})
	if err := e.Start(context.Background(), func(ctx context.Context, m *Message) error {
		entered <- struct{}{}
		<-release
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	c := mustDial(t, brokerURL(e), "dev")
	tok := c.Publish("x", 1, false, []byte{})
	<-entered
	closed := make(chan error, 1)
	go func() { closed <- e.Close(context.Background()) }()
	waitFor(t, "not ready", 5*time.Second, func() bool { return !e.Ready() })
	// The listener closes (a moment after Ready turns false) before the
	// handler finishes: this waits while the handler is still blocked.
	waitFor(t, "the listener closed while the handler runs", 5*time.Second, func() bool {
		c, err := net.DialTimeout("tcp", e.Addr().String(), time.Second)
		if err == nil {
			c.Close()
		}
		return err != nil
	})
	select {
	case <-closed:
		t.Fatal("Close returned with a handler in flight")
	case <-time.After(100 * time.Millisecond):
	}
	close(release)
	if err := <-closed; err != nil {
		t.Fatal(err)
	}
	if err := waitToken(t, tok); err != nil {
		t.Fatalf("in-flight publish not acknowledged: %v", err)
	}
	if err := e.Publish(context.Background(), "x", nil, 0, false); !errors.Is(err, ErrClosed) {
		t.Fatalf("Publish after Close: %v", err)
	}
}

// When Close's context ends, the handlers' context is cancelled.
func TestEmbeddedCloseDeadlineCancelsHandlers(t *testing.T) {
	entered := make(chan struct{}, 1)
	e, err := NewEmbedded(EmbeddedConfig{Listen: "127.0.0.1:0", AllowAnonymous: true}, testLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	_ = e.SetFilters(context.Background(), []string{"#"})
	_ = e.Start(context.Background(), func(ctx context.Context, m *Message) error {
		entered <- struct{}{}
		<-ctx.Done()
		return ctx.Err()
	})
	c := mustDial(t, brokerURL(e), "dev")
	c.Publish("x", 1, false, []byte{})
	<-entered
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	if err := e.Close(ctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Close = %v", err)
	}
	if st := e.Stats(); st.RejectedHandler != 1 || st.Accepted != 0 {
		t.Fatalf("stats = %+v", st)
	}
}

func TestEmbeddedWebSocket(t *testing.T) {
	var rec recorder
	e := startEmbedded(t, EmbeddedConfig{AllowAnonymous: true, WebSocketListen: "127.0.0.1:0"}, rec.handle, "#")
	c := mustDial(t, "ws://"+e.WebSocketAddr().String(), "ws-dev")
	if err := waitToken(t, c.Publish("ws/t", 1, false, []byte("over websocket"))); err != nil {
		t.Fatal(err)
	}
	if rec.len() != 1 || string(rec.get(0).Payload) != "over websocket" {
		t.Fatalf("handled %d", rec.len())
	}
}

func TestEmbeddedLifecycleErrors(t *testing.T) {
	e, err := NewEmbedded(EmbeddedConfig{Listen: "127.0.0.1:0", AllowAnonymous: true}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := e.Publish(context.Background(), "x", nil, 0, false); !errors.Is(err, ErrNotStarted) {
		t.Fatalf("Publish before Start: %v", err)
	}
	if e.Ready() || e.Addr() != nil {
		t.Fatal("ready before Start")
	}
	if err := e.Start(context.Background(), nil); !errors.Is(err, ErrConfig) {
		t.Fatalf("nil handler: %v", err)
	}
	h := func(context.Context, *Message) error { return nil }
	if err := e.Start(context.Background(), h); err != nil {
		t.Fatal(err)
	}
	if err := e.Start(context.Background(), h); !errors.Is(err, ErrAlreadyStarted) {
		t.Fatalf("second Start: %v", err)
	}
	if err := e.Close(context.Background()); err != nil {
		t.Fatal(err)
	}
	if err := e.Close(context.Background()); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	if err := e.Start(context.Background(), h); !errors.Is(err, ErrClosed) {
		t.Fatalf("Start after Close: %v", err)
	}
	// Port in use.
	l, _ := net.Listen("tcp", "127.0.0.1:0")
	defer l.Close()
	e2, _ := NewEmbedded(EmbeddedConfig{Listen: l.Addr().String(), AllowAnonymous: true}, nil)
	if err := e2.Start(context.Background(), h); err == nil {
		t.Fatal("Start on a busy port succeeded")
	}
}

func TestHashPassword(t *testing.T) {
	h, err := HashPassword("correct horse")
	if err != nil {
		t.Fatal(err)
	}
	if bcrypt.CompareHashAndPassword([]byte(h), []byte("correct horse")) != nil {
		t.Fatal("hash does not verify")
	}
	if cost, _ := bcrypt.Cost([]byte(h)); cost != bcrypt.DefaultCost {
		t.Fatalf("cost %d", cost)
	}
	if _, err := HashPassword(""); !errors.Is(err, ErrConfig) {
		t.Fatalf("empty password: %v", err)
	}
}

// A socket that never sends CONNECT is closed after the connect timeout.
func TestEmbeddedConnectTimeout(t *testing.T) {
	e, err := NewEmbedded(EmbeddedConfig{Listen: "127.0.0.1:0", AllowAnonymous: true}, testLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	e.connectTimeout = 200 * time.Millisecond
	if err := e.Start(context.Background(), func(context.Context, *Message) error { return nil }); err != nil {
		t.Fatal(err)
	}
	defer e.Close(context.Background())
	c, err := net.Dial("tcp", e.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	start := time.Now()
	expectClosed(t, c)
	if d := time.Since(start); d < 150*time.Millisecond {
		t.Fatalf("closed after %v, before the timeout", d)
	}
	// A client that connects in time is not affected by the deadline later.
	dev := mustDial(t, brokerURL(e), "dev", func(o *paho.ClientOptions) { o.SetKeepAlive(2 * time.Second) })
	_ = e.SetFilters(context.Background(), []string{"#"})
	time.Sleep(400 * time.Millisecond) // longer than the connect timeout, on purpose
	if err := waitToken(t, dev.Publish("x", 1, false, []byte{})); err != nil || !dev.IsConnectionOpen() {
		t.Fatalf("connected client hit the connect deadline: %v", err)
	}
}

// An MQTT v5 device sees DISCONNECT with reason 0x80 when the handler fails,
// and no PUBACK.
func TestEmbeddedV5HandlerErrorDisconnects(t *testing.T) {
	e := startEmbedded(t, EmbeddedConfig{AllowAnonymous: true}, func(ctx context.Context, m *Message) error {
		return errors.New("inbox unavailable")
	}, "#")
	c, err := net.DialTimeout("tcp", e.Addr().String(), 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	// CONNECT v5: "MQTT", level 5, clean start, keepalive 60, no properties, id "v5dev".
	connect := append(append(rawString("MQTT"), 5, 0x02, 0, 60, 0), rawString("v5dev")...)
	// PUBLISH v5 QoS 1: topic, packet id 9, no properties, payload.
	publish := append(append(rawString("devices/x/t"), 0, 9, 0), "hi"...)
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := c.Write(append(rawPacket(0x10, connect), rawPacket(0x32, publish)...)); err != nil {
		t.Fatal(err)
	}
	var got []byte
	buf := make([]byte, 512)
	for {
		n, err := c.Read(buf)
		got = append(got, buf[:n]...)
		if err != nil {
			break
		}
	}
	// CONNACK first, then DISCONNECT (0xE0) with reason 0x80; never PUBACK (0x40).
	if len(got) < 2 || got[0] != 0x20 {
		t.Fatalf("no CONNACK: % x", got)
	}
	rest := got[2+int(got[1]):]
	if len(rest) < 3 || rest[0] != 0xE0 || rest[2] != 0x80 {
		t.Fatalf("after CONNACK want DISCONNECT 0x80, got % x", rest)
	}
	if st := e.Stats(); st.RejectedHandler != 1 || st.Accepted != 0 {
		t.Fatalf("stats = %+v", st)
	}
}

// A panicking Handler does not crash the broker: the message is treated as
// not accepted and redelivered.
func TestEmbeddedHandlerPanic(t *testing.T) {
	var calls atomic.Int32
	var rec recorder
	e := startEmbedded(t, EmbeddedConfig{AllowAnonymous: true}, func(ctx context.Context, m *Message) error {
		if calls.Add(1) == 1 {
			panic("bug in the gateway")
		}
		return rec.handle(ctx, m)
	}, "#")
	c := mustDial(t, brokerURL(e), "dev", func(o *paho.ClientOptions) {
		o.SetCleanSession(false).SetAutoReconnect(true).SetMaxReconnectInterval(200 * time.Millisecond)
	})
	c.Publish("p/1", 1, false, []byte("x"))
	waitFor(t, "redelivery after panic", 10*time.Second, func() bool { return rec.len() == 1 })
	// Accepted is counted after the handler returns.
	waitFor(t, "the redelivery counted as accepted", 5*time.Second, func() bool { return e.Stats().Accepted == 1 })
	if st := e.Stats(); st.RejectedHandler != 1 || st.Accepted != 1 {
		t.Fatalf("stats = %+v", st)
	}
}

func TestEmbeddedMaxClients(t *testing.T) {
	e := startEmbedded(t, EmbeddedConfig{AllowAnonymous: true, MaxClients: 2}, func(context.Context, *Message) error { return nil }, "#")
	mustDial(t, brokerURL(e), "c1")
	mustDial(t, brokerURL(e), "c2")
	if _, err := dial(t, brokerURL(e), "c3"); err == nil {
		t.Fatal("third client accepted with MaxClients 2")
	}
}

// A handler that blocks longer than 1.5x the client's keep-alive still gets
// its PUBACK out (the connection deadline is renewed after the handler).
func TestEmbeddedAckAfterLongBlock(t *testing.T) {
	e := startEmbedded(t, EmbeddedConfig{AllowAnonymous: true}, func(ctx context.Context, m *Message) error {
		time.Sleep(2 * time.Second) // longer than 1.5 x the 1 s keep-alive, on purpose
		return nil
	}, "#")
	c, err := net.DialTimeout("tcp", e.Addr().String(), 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := c.Write(append(rawConnectKA("slow", "", "", 1), rawPublish("t", 1, 5, []byte("x"))...)); err != nil {
		t.Fatal(err)
	}
	resp := make([]byte, 8)
	if _, err := io.ReadFull(c, resp); err != nil {
		t.Fatalf("read CONNACK+PUBACK: %v (got % x)", err, resp)
	}
	if resp[0] != 0x20 || resp[4] != 0x40 || resp[7] != 5 {
		t.Fatalf("want CONNACK then PUBACK for id 5, got % x", resp)
	}
}

// TestEmbeddedWillACL: the broker publishes a last will for the client, so
// a will outside the user's publish ACL is refused at CONNECT (otherwise
// device alice could make her will a command to bob's device).
func TestEmbeddedWillACL(t *testing.T) {
	var rec recorder
	e := startEmbedded(t, EmbeddedConfig{Users: testUsers(t), AllowAnonymous: true}, rec.handle, "#")
	url := brokerURL(e)
	withWill := func(topic string) clientOpt {
		return func(o *paho.ClientOptions) { o.SetWill(topic, "offline", 1, false) }
	}
	for _, topic := range []string{"devices/bob/cmd", "cmd/x", "$SYS/x"} {
		if _, err := dial(t, url, "alice-w", withCreds("alice", "s3cret"), withWill(topic)); err == nil {
			t.Fatalf("will on %s accepted", topic)
		}
	}
	if st := e.Stats(); st.RejectedUnauthorized != 3 {
		t.Fatalf("RejectedUnauthorized = %d, want 3", st.RejectedUnauthorized)
	}
	// A will under her own prefix is accepted.
	mustDial(t, url, "alice-w", withCreds("alice", "s3cret"), withWill("devices/alice/status"))
}

// Retained messages are bounded: past MaxRetained topics, a retained publish
// to a new topic is delivered but not kept; replacing and clearing the
// retained message of a topic still work, from devices and from Publish.
func TestEmbeddedMaxRetained(t *testing.T) {
	ctx := context.Background()
	e := startEmbedded(t, EmbeddedConfig{AllowAnonymous: true}, func(context.Context, *Message) error { return nil }, "nothing/matches")
	base := e.srv.Topics.Retained.Len() // $SYS topics
	e.cfg.MaxRetained = base + 3
	dev := mustDial(t, brokerURL(e), "dev")
	live := newInbox()
	watcher := mustDial(t, brokerURL(e), "live")
	if err := waitToken(t, watcher.Subscribe("r/#", 1, live.handler)); err != nil {
		t.Fatal(err)
	}
	for _, tp := range []string{"r/1", "r/2", "r/3", "r/4"} {
		if err := waitToken(t, dev.Publish(tp, 1, true, "v-"+tp)); err != nil {
			t.Fatal(err)
		}
	}
	if err := e.Publish(ctx, "r/5", []byte("v-r/5"), 1, true); err != nil {
		t.Fatal(err)
	}
	if err := waitToken(t, dev.Publish("r/1", 1, true, "new")); err != nil { // replaces
		t.Fatal(err)
	}
	// Every message was delivered to the subscriber that was there.
	live.wait(t, 6)
	// What the broker keeps for later subscribers.
	retained := func() []string {
		var out []string
		for tp, pk := range e.srv.Topics.Retained.GetAll() {
			if strings.HasPrefix(tp, "r/") {
				out = append(out, tp+"="+string(pk.Payload))
			}
		}
		slices.Sort(out)
		return out
	}
	if got := fmt.Sprint(retained()); got != "[r/1=new r/2=v-r/2 r/3=v-r/3]" {
		t.Fatalf("retained = %s, want the first three topics, r/1 replaced", got)
	}
	if st := e.Stats(); st.RetainedRefused != 2 || st.Retained != int64(e.cfg.MaxRetained) {
		t.Fatalf("RetainedRefused = %d, want 2 (r/4 from a device, r/5 from Publish); Retained = %d, want %d", st.RetainedRefused, st.Retained, e.cfg.MaxRetained)
	}
	// Clearing one makes room for another.
	if err := waitToken(t, dev.Publish("r/2", 1, true, "")); err != nil {
		t.Fatal(err)
	}
	if err := waitToken(t, dev.Publish("r/4", 1, true, "v-r/4")); err != nil {
		t.Fatal(err)
	}
	if got := fmt.Sprint(retained()); got != "[r/1=new r/3=v-r/3 r/4=v-r/4]" {
		t.Fatalf("retained after clearing r/2 = %s", got)
	}
	if _, err := NewEmbedded(EmbeddedConfig{MaxRetained: -1}, nil); !errors.Is(err, ErrConfig) {
		t.Fatalf("negative MaxRetained: %v", err)
	}
}

// TestEmbeddedACLClientID: {clientid} in a user's filters is the client id
// of the connection (one account shared by a fleet, a prefix per device);
// a client id that is not a valid topic level matches no such filter. It
// was documented and accepted by the configuration, but never replaced:
// the devices' own publishes were refused (and, at MQTT 3.1.1, silently
// dropped).
func TestEmbeddedACLClientID(t *testing.T) {
	hash, err := HashPassword("pw")
	if err != nil {
		t.Fatal(err)
	}
	var rec recorder
	e := startEmbedded(t, EmbeddedConfig{Users: []User{{Username: "fleet", PasswordHash: hash,
		Publish: []string{"devices/{clientid}/#", "fleet/{username}/{clientid}"}, Subscribe: []string{"devices/{clientid}/cmd"}}}}, rec.handle, "#")
	url := brokerURL(e)
	dev := mustDial(t, url, "dev-7", withCreds("fleet", "pw"))
	for _, topic := range []string{"devices/dev-7/telemetry", "fleet/fleet/dev-7", "devices/dev-8/telemetry", "devices/{clientid}/telemetry", "fleet/fleet/dev-8"} {
		if err := waitToken(t, dev.Publish(topic, 1, false, []byte("x"))); err != nil {
			t.Fatalf("publish %s: %v", topic, err)
		}
	}
	if rec.len() != 2 || rec.get(0).Topic != "devices/dev-7/telemetry" || rec.get(1).Topic != "fleet/fleet/dev-7" {
		t.Fatalf("handled %d messages, want the 2 under the client's own id", rec.len())
	}
	if st := e.Stats(); st.Accepted != 2 || st.RejectedUnauthorized != 3 {
		t.Fatalf("accepted %d, refused %d: want 2 and 3", st.Accepted, st.RejectedUnauthorized)
	}
	for filter, want := range map[string]byte{"devices/dev-7/cmd": 1, "devices/dev-8/cmd": 0x80, "devices/+/cmd": 0x80} {
		tok := dev.Subscribe(filter, 1, nil)
		if err := waitToken(t, tok); err != nil {
			t.Fatal(err)
		}
		if code := tok.(*paho.SubscribeToken).Result()[filter]; code != want {
			t.Errorf("SUBACK for %s = %#x, want %#x", filter, code, want)
		}
	}
	// A client id with a '+' is not a topic level: it matches nothing.
	odd := mustDial(t, url, "a+b", withCreds("fleet", "pw"))
	tok := odd.Subscribe("devices/+/cmd", 1, nil)
	if err := waitToken(t, tok); err != nil {
		t.Fatal(err)
	}
	if code := tok.(*paho.SubscribeToken).Result()["devices/+/cmd"]; code != 0x80 {
		t.Errorf("client id a+b: SUBACK for devices/+/cmd = %#x, want 0x80", code)
	}
}
