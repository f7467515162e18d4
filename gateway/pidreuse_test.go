package gateway

import (
	"context"
	"errors"
	"sync/atomic"
	"testing"
	"time"

	"github.com/moongate-edge/moongate/mqtt"
	"github.com/moongate-edge/moongate/mqtt/mqtttest"
)

// failingIngest is the daemon's External with a handler that fails (as on
// a disk error) for the messages fail picks.
type failingIngest struct {
	*mqtt.External
	fail func(*mqtt.Message) bool
}

func (f *failingIngest) Start(ctx context.Context, h mqtt.Handler) error {
	return f.External.Start(ctx, func(ctx context.Context, m *mqtt.Message) error {
		if f.fail(m) {
			return errors.New("test: inbox write failed")
		}
		return h(ctx, m)
	})
}

// TestExternalReusedPacketIDNotTakenForRedelivery: a broker that lost
// moongate's session (mosquitto restarted without persistence) numbers its
// packets from 1 again. A new message with the topic and payload of an old
// one and its packet id, whose first delivery failed, came back with DUP
// set, matched the old message's fingerprint, and was acknowledged as a
// redelivery and never run. Deliveries of a new broker session carry a new
// epoch (mqtt.ExternalConfig.SessionFile) in their fingerprint.
func TestExternalReusedPacketIDNotTakenForRedelivery(t *testing.T) {
	m := mqtttest.StartMosquitto(t, mqtttest.WithoutPersistence())
	dataDir, fnDir := t.TempDir(), t.TempDir()
	writeFunction(t, fnDir, "press", recordPayloadLua, "triggers:\n  - mqtt: devices/{device}/press\n")
	var armed atomic.Bool
	var failed atomic.Int64
	p := startInProcessWith(t, testConfig(dataDir, fnDir, externalMQTT(m.URL(), "moongate-pid")), nil, func(d *Daemon) {
		d.gw.opts.Ingest = &failingIngest{External: d.ingest.(*mqtt.External), fail: func(msg *mqtt.Message) bool {
			if armed.Load() && !msg.Duplicate && failed.Add(1) == 1 {
				return true
			}
			return false
		}}
	})
	records := func() int { return len(allRecords(t, p.d.Store(), "press")) }
	dev := connect(t, m.URL(), "button", true)
	for range 3 {
		publish(t, dev, "devices/button/press", 1, []byte("pressed"))
	}
	waitFor(t, 20*time.Second, "three records", func() bool { return records() == 3 })

	// The broker restarts; moongate's session there is new.
	m.Restart()
	waitFor(t, 20*time.Second, "ready after the broker restart", p.d.Gateway().Ready)
	dev2 := connect(t, m.URL(), "button-2", true)
	armed.Store(true)
	publish(t, dev2, "devices/button/press", 1, []byte("pressed"))
	// The first delivery fails; the broker redelivers it with DUP.
	waitFor(t, 20*time.Second, "the failed delivery", func() bool { return failed.Load() >= 1 })
	if !poll(10*time.Second, func() bool { return records() == 4 }) {
		t.Fatalf("4 presses, %d records: the fourth was acknowledged to the broker and never processed (gateway %+v)", records(), p.d.Gateway().Stats())
	}
}
