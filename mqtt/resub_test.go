package mqtt

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/eclipse/paho.mqtt.golang/packets"

	"github.com/moongate-edge/moongate/mqtt/mqtttest"
)

// TestExternalTriggerChangeLeavesNoGap: replacing a filter by another that
// also covers the topic (t/+ by t/+/#, a trigger changed by a deploy) while
// a device publishes: every message the broker acknowledged to the device
// reaches the Handler, once. The old filter was unsubscribed before the new
// one was subscribed, and messages in between were delivered to nobody.
func TestExternalTriggerChangeLeavesNoGap(t *testing.T) {
	m := mqtttest.StartMosquitto(t)
	ps := newPayloadSet()
	x := startExternal(t, m.URL(), "gw-gap", func(ctx context.Context, msg *Message) error { ps.add(msg); return nil }, "t/+")
	pub := mustDial(t, m.URL(), "device")
	var sent atomic.Int64
	stop := make(chan struct{})
	done := make(chan error, 1)
	go func() {
		for n := 0; ; n++ {
			select {
			case <-stop:
				done <- nil
				return
			default:
			}
			tok := pub.Publish("t/d1", 1, false, []byte(fmt.Sprintf("%d", n)))
			if !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
				done <- fmt.Errorf("publish %d: %v", n, tok.Error())
				return
			}
			sent.Add(1)
		}
	}()
	filters := [][]string{{"t/+"}, {"t/+/#"}}
	for i := 1; i <= 50; i++ {
		if err := x.SetFilters(context.Background(), filters[i%2]); err != nil {
			t.Fatal(err)
		}
		time.Sleep(5 * time.Millisecond)
	}
	close(stop)
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	n := int(sent.Load())
	deadline := time.Now().Add(10 * time.Second)
	for ps.distinct() < n && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if got := ps.distinct(); got != n {
		t.Fatalf("%d messages acknowledged to the device by the broker, %d reached the Handler", n, got)
	}
	// And once each: mosquitto's default (allow_duplicate_messages false)
	// sends one copy per client while both filters are subscribed.
	ps.mu.Lock()
	defer ps.mu.Unlock()
	for payload, k := range ps.seen {
		if k != 1 {
			t.Fatalf("message %s reached the Handler %d times", payload, k)
		}
	}
}

// TestExternalRetainedReplayNotHandled: every connection subscribes again,
// and the broker replays each retained message matching a filter with the
// RETAIN flag set: a device's retained status ran again at every restart
// or reconnect. A replay is acknowledged and not handled; a retained
// message published while moongate is subscribed arrives with RETAIN clear
// and is handled once.
func TestExternalRetainedReplayNotHandled(t *testing.T) {
	m := mqtttest.StartMosquitto(t)
	pub := mustDial(t, m.URL(), "device")
	if err := waitToken(t, pub.Publish("r/before", 1, true, []byte("before"))); err != nil {
		t.Fatal(err)
	}
	rec := &recorder{}
	x := startExternal(t, m.URL(), "gw-retained", rec.handle, "r/#")
	if err := waitToken(t, pub.Publish("r/status", 1, true, []byte("online"))); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the live retained publish", 10*time.Second, func() bool { return rec.len() == 1 })
	if err := x.Close(context.Background()); err != nil {
		t.Fatal(err)
	}
	x = startExternal(t, m.URL(), "gw-retained", rec.handle, "r/#")
	// The broker replays the two retained topics when it takes the
	// SUBSCRIBE, before the marker exists.
	if err := waitToken(t, pub.Publish("r/x", 1, false, []byte("marker"))); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the marker", 10*time.Second, func() bool { return rec.len() == 2 })
	rec.mu.Lock()
	defer rec.mu.Unlock()
	var got []string
	for _, msg := range rec.msgs {
		got = append(got, fmt.Sprintf("%s=%s retain=%v", msg.Topic, msg.Payload, msg.Retain))
	}
	if fmt.Sprint(got) != "[r/status=online retain=false r/x=marker retain=false]" {
		t.Fatalf("handled %v", got)
	}
	// (Topics are handled in parallel lanes: the replays may be counted
	// after the marker was handled.)
	waitFor(t, "two replays counted (r/before, r/status)", 10*time.Second, func() bool { return x.Stats().RetainedReplays == 2 })
}

// TestExternalSessionEpoch: with a SessionFile, deliveries carry the broker
// session's epoch as their ClientID: bumped and synced when the broker
// answers without a session (the first connection, a broker that lost its
// state), kept when it holds the session (a moongate restart), so that a
// packet id the broker numbers again in a new session does not look like a
// redelivery of the old session's message.
func TestExternalSessionEpoch(t *testing.T) {
	m := mqtttest.StartMosquitto(t, mqtttest.WithoutPersistence())
	file := filepath.Join(t.TempDir(), "session")
	rec := &recorder{}
	start := func() *External {
		t.Helper()
		x, err := NewExternal(ExternalConfig{Broker: m.URL(), ClientID: "gw-epoch", KeepAlive: 5 * time.Second,
			ConnectTimeout: 3 * time.Second, MaxReconnectInterval: 200 * time.Millisecond, SessionFile: file}, testLogger(t))
		if err != nil {
			t.Fatal(err)
		}
		if err := x.SetFilters(context.Background(), []string{"e/#"}); err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := x.Start(ctx, rec.handle); err != nil {
			t.Fatal(err)
		}
		return x
	}
	pub := mustDial(t, m.URL(), "device")
	send := func(payload string, want int) string {
		t.Helper()
		if err := waitToken(t, pub.Publish("e/x", 1, false, []byte(payload))); err != nil {
			t.Fatal(err)
		}
		waitFor(t, payload, 10*time.Second, func() bool { return rec.len() == want })
		return rec.get(want - 1).ClientID
	}
	epochOnDisk := func() string {
		b, err := os.ReadFile(file)
		if err != nil {
			t.Fatal(err)
		}
		return strings.TrimSpace(string(b))
	}
	x := start()
	if got := send("a", 1); got != "broker-session/1" || epochOnDisk() != "1" {
		t.Fatalf("first session: ClientID %q, file %q", got, epochOnDisk())
	}
	// moongate restarts; the broker kept the session: same epoch.
	if err := x.Close(context.Background()); err != nil {
		t.Fatal(err)
	}
	x = start()
	if got := send("b", 2); got != "broker-session/1" {
		t.Fatalf("after a restart of moongate: ClientID %q", got)
	}
	// The broker restarts without persistence: a new session.
	m.Restart()
	waitFor(t, "reconnected", 10*time.Second, x.Ready)
	pub = mustDial(t, m.URL(), "device2")
	if got := send("c", 3); got != "broker-session/2" || epochOnDisk() != "2" {
		t.Fatalf("after the broker lost the session: ClientID %q, file %q", got, epochOnDisk())
	}
	if err := x.Close(context.Background()); err != nil {
		t.Fatal(err)
	}
	// A file that is not an epoch is a configuration error, not a reset.
	if err := os.WriteFile(file, []byte("garbage"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := NewExternal(ExternalConfig{Broker: m.URL(), ClientID: "gw-epoch", SessionFile: file}, testLogger(t)); !errors.Is(err, ErrConfig) {
		t.Fatalf("malformed session file: %v, want ErrConfig", err)
	}
}

// TestExternalSubscribeRetriedAfterTimeout: the broker does not answer the
// SUBSCRIBE of a connection in time. The client stayed connected and not
// ready until some later reconnect (a broker that had lost the session
// sent nothing meanwhile); it now subscribes again on that connection.
func TestExternalSubscribeRetriedAfterTimeout(t *testing.T) {
	m := mqtttest.StartMosquitto(t)
	proxy := mqtttest.StartSubackHold(t, m.Addr())
	x, err := NewExternal(ExternalConfig{Broker: proxy.URL(), ClientID: "gw-slow", KeepAlive: 30 * time.Second,
		ConnectTimeout: 300 * time.Millisecond, MaxReconnectInterval: time.Second}, testLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	if err := x.SetFilters(context.Background(), []string{"s/#"}); err != nil {
		t.Fatal(err)
	}
	rec := &recorder{}
	started := make(chan error, 1)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	go func() { started <- x.Start(ctx, rec.handle) }()
	t.Cleanup(func() { _ = x.Close(context.Background()) })
	select {
	case <-proxy.Subscribed():
	case <-time.After(10 * time.Second):
		t.Fatal("no SUBSCRIBE")
	}
	// The broker is slow: its SUBACK comes after the client gave up on it.
	time.Sleep(3 * 300 * time.Millisecond)
	proxy.Release()
	if err := <-started; err != nil {
		t.Fatalf("Start: %v (ready %v)", err, x.Ready())
	}
	pub := mustDial(t, m.URL(), "device")
	if err := waitToken(t, pub.Publish("s/1", 1, false, []byte("after"))); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the message", 10*time.Second, func() bool { return rec.len() == 1 })
}

// TestPublishPacketSize: the size max_packet_size is compared with is the
// size of the packet paho writes.
func TestPublishPacketSize(t *testing.T) {
	for _, c := range []struct {
		topic   string
		qos     byte
		payload int
	}{{"t", 0, 0}, {"t", 1, 0}, {"out/big", 1, 4090}, {"a", 0, 123}, {"a", 0, 124}, {"a/b", 1, 16370}, {"a/b", 1, 16371}, {"x", 2, 2097140}, {"x", 2, 2097160}} {
		pk := packets.NewControlPacket(packets.Publish).(*packets.PublishPacket)
		pk.TopicName, pk.Qos, pk.Payload = c.topic, c.qos, make([]byte, c.payload)
		if c.qos > 0 {
			pk.MessageID = 1
		}
		var b bytes.Buffer
		if err := pk.Write(&b); err != nil {
			t.Fatal(err)
		}
		if got := publishPacketSize(c.topic, c.qos, c.payload); got != b.Len() {
			t.Errorf("%+v: %d, paho writes %d bytes", c, got, b.Len())
		}
	}
}
