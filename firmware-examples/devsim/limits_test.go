package devsim

import (
	"context"
	"testing"
	"time"

	"github.com/moongate-edge/moongate/mqtt"
)

// TestMaxInflightOneDoesNotStallOnStatusAck: with MaxInflight 1 (one
// reading in flight at a time, as the example devices do) the retained
// "online" status takes the only slot right after the connect; its PUBACK
// freed the slot without waking the publisher, which then waited for room
// until the publishing phase ended (for ever without Duration).
func TestMaxInflightOneDoesNotStallOnStatusAck(t *testing.T) {
	b := startBroker(t, mqtt.EmbeddedConfig{})
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	r, err := Run(ctx, Config{Broker: b.url, Devices: 5, Rate: 1000, QoS: 1, Count: 20, MaxInflight: 1})
	if err != nil {
		t.Fatal(err)
	}
	if r.Acked != 100 {
		t.Fatalf("%+v", r)
	}
}

// TestMaxInflightLimit: 65535 in flight was accepted, but only 65534
// packet ids exist (0 and the subscription's excluded), and the two status
// messages take ids too: once they were all in use the id allocation spun
// for ever holding the device's lock (Run never returned).
func TestMaxInflightLimit(t *testing.T) {
	for n, ok := range map[int]bool{65535: false, 65532: false, MaxInflightLimit: true} {
		err := (&Config{Broker: "tcp://127.0.0.1:1", MaxInflight: n}).Validate()
		if (err == nil) != ok {
			t.Errorf("MaxInflight %d: %v", n, err)
		}
	}
	if ids := 65535 - 1; MaxInflightLimit+2 > ids {
		t.Fatalf("MaxInflightLimit %d + 2 status messages > %d publish ids", MaxInflightLimit, ids)
	}
}

// TestQoS0BusyConnectionIsNotDropped: a QoS 0 device publishing all the
// time wrote often (so sent no PINGREQ) and read nothing back: its
// reader's deadline (1.5 keep-alives without a byte) dropped a healthy
// connection every 45 s by default.
func TestQoS0BusyConnectionIsNotDropped(t *testing.T) {
	b := startBroker(t, mqtt.EmbeddedConfig{})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	r, err := Run(ctx, Config{Broker: b.url, Devices: 3, Rate: 20, QoS: 0, KeepAlive: time.Second,
		Duration: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	if r.Errors != 0 || r.Reconnects != 0 {
		t.Fatalf("healthy connections dropped: %v", r)
	}
}
