package mqtt

import (
	"context"
	"errors"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"
)

// laneMsg is a QoS 1 delivery that reports its acknowledgement.
type laneMsg struct {
	topic, payload string
	acked          chan struct{}
}

func newLaneMsg(topic, payload string) *laneMsg {
	return &laneMsg{topic: topic, payload: payload, acked: make(chan struct{})}
}

func (m *laneMsg) Duplicate() bool   { return false }
func (m *laneMsg) Qos() byte         { return 1 }
func (m *laneMsg) Retained() bool    { return false }
func (m *laneMsg) Topic() string     { return m.topic }
func (m *laneMsg) MessageID() uint16 { return 1 }
func (m *laneMsg) Payload() []byte   { return []byte(m.payload) }
func (m *laneMsg) Ack()              { close(m.acked) }

// paho starts the reconnection and runs OnConnectionLost in goroutines of
// their own: the new connection may deliver before the connection-lost
// handler runs. Its deliveries must still be handled and acknowledged
// (they were tagged with the old generation, then skipped when the
// handler bumped it: never acknowledged on a live connection). The
// handlers are called here in that order, as paho may.
func TestExternalGenerationFollowsConnection(t *testing.T) {
	x, err := NewExternal(ExternalConfig{Broker: "tcp://127.0.0.1:1"}, testLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	defer x.hcancel()
	release := make(chan struct{})
	running := make(chan string, 4)
	x.h = func(ctx context.Context, m *Message) error {
		running <- string(m.Payload)
		if string(m.Payload) == "old" {
			<-release
		}
		return nil
	}
	x.filters.set([]string{"#"})

	// First connection: one delivery, its handler still running.
	x.onNotify(nil, paho.ConnectionNotificationConnecting{})
	old := newLaneMsg("t", "old")
	x.onMessage(nil, old)
	if got := <-running; got != "old" {
		t.Fatalf("handler got %q", got)
	}
	// The connection is lost. paho's reconnection dials (and the new
	// connection delivers) before the connection-lost handler runs.
	x.onReconnecting(nil, nil)
	x.onNotify(nil, paho.ConnectionNotificationConnecting{IsReconnect: true})
	fresh := newLaneMsg("t", "new") // same topic: queued behind "old"
	x.onMessage(nil, fresh)
	x.onLost(nil, errors.New("EOF"))
	close(release)

	select {
	case <-fresh.acked:
	case <-time.After(10 * time.Second):
		t.Fatal("the new connection's delivery was never acknowledged")
	}
	if got := <-running; got != "new" {
		t.Fatalf("handler got %q", got)
	}
	select {
	case <-old.acked:
		t.Fatal("the lost connection's delivery was acknowledged on the new one")
	default:
	}
}

// Close while reconnectLoop is forcing a reconnection (a handler failed)
// leaves no client behind: reconnectLoop, past its stop check, called
// Connect after Close had disconnected, and the client went on connecting
// (and receiving) after Close returned.
func TestExternalCloseDuringForcedReconnect(t *testing.T) {
	e := startEmbedded(t, EmbeddedConfig{AllowAnonymous: true}, acceptAll, "#")
	x, err := NewExternal(ExternalConfig{Broker: brokerURL(e), ClientID: "gw", ConnectTimeout: 3 * time.Second}, testLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { x.client.Disconnect(10) }) // when the test fails
	reached := make(chan struct{})
	x.testBeforeRedial = func() {
		close(reached)
		<-x.stopC
		// Hold the redial until Close has disconnected the client
		// (connected is cleared after its Disconnect returns).
		deadline := time.Now().Add(10 * time.Second)
		for x.connected.Load() && time.Now().Before(deadline) {
			time.Sleep(time.Millisecond)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := x.Start(ctx, acceptAll); err != nil {
		t.Fatal(err)
	}
	x.reconnectC <- struct{}{} // as leave does once a failed handler's peers are done
	select {
	case <-reached:
	case <-ctx.Done():
		t.Fatal("reconnectLoop did not start a reconnection")
	}
	if err := x.Close(ctx); err != nil {
		t.Fatal(err)
	}
	if x.client.IsConnected() {
		t.Fatal("the client is connecting again after Close")
	}
}
