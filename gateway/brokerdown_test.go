package gateway

import (
	"context"
	"io"
	"log/slog"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"

	"github.com/moongate-edge/moongate/gateway/config"
	"github.com/moongate-edge/moongate/luavm"
	"github.com/moongate-edge/moongate/mqtt/mqtttest"
)

// TestTimersRunWhileExternalBrokerDown: the external broker is down when
// the daemon starts (still booting, or gone). Timer functions do not need
// it and run at once (Run waited in Ingest.Start, so nothing ran until the
// broker came up); their local publishes wait in the publish outbox and go
// out once it is up, and device events flow from then on. (Found by a
// review: TestRev8TimersRunWhileExternalBrokerDown.)
func TestTimersRunWhileExternalBrokerDown(t *testing.T) {
	m := mqtttest.StartMosquitto(t)
	m.Stop() // its port is known, nothing listens there
	dataDir, fnDir := t.TempDir(), t.TempDir()
	writeFunction(t, fnDir, "tick", `function handle(e)
  mqtt.publish("out/tick", "tick", {qos = 1})
  return {trigger = e.trigger}
end`, "triggers:\n  - timer: \"@every 1s\"\n")
	writeFunction(t, fnDir, "status", statusLua, "triggers:\n  - mqtt: devices/{device}/status\n")
	cfg, err := config.Parse("test.yaml", []byte(testConfig(dataDir, fnDir, externalMQTT(m.URL(), "moongate-down"))))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	d, err := NewDaemon(ctx, cfg, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		cancel()
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- d.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("daemon run: %v", err)
			}
		case <-time.After(30 * time.Second):
			t.Error("daemon did not stop")
		}
	})
	waitFor(t, 15*time.Second, "a record of the timer function while the broker is down", func() bool {
		return len(allRecords(t, d.Store(), "tick")) > 0
	})
	if d.Gateway().Ready() {
		t.Fatal("the gateway says ready with its broker down")
	}
	// A replay (dead letters) works too: it needs the inbox, not the broker.
	ev := &luavm.Event{Payload: []byte("replayed"), Captures: map[string]string{"device": "d0"}, Trigger: "mqtt"}
	if err := d.Gateway().Requeue(ctx, "status", "d0", encodeEvent(ev), 0); err != nil {
		t.Fatalf("requeue while the broker is down: %v", err)
	}
	waitFor(t, 15*time.Second, "the replayed event's record", func() bool { return len(allRecords(t, d.Store(), "status")) == 1 })

	m.Restart()
	got := make(chan struct{}, 1)
	sub := connect(t, m.URL(), "watcher", true)
	if tok := sub.Subscribe("out/tick", 1, func(paho.Client, paho.Message) {
		select {
		case got <- struct{}{}:
		default:
		}
	}); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatalf("subscribe: %v", tok.Error())
	}
	waitFor(t, 30*time.Second, "gateway ready once the broker is up", d.Gateway().Ready)
	select {
	case <-got:
	case <-time.After(30 * time.Second):
		t.Fatal("no publish of the timer function reached the broker once it was up")
	}
	dev := connect(t, m.URL(), "d1", true)
	publish(t, dev, "devices/d1/status", 1, []byte("online"))
	waitFor(t, 20*time.Second, "the device event's record", func() bool { return len(allRecords(t, d.Store(), "status")) == 2 })
}
