package gateway

import (
	"context"
	"log/slog"
	"testing"
	"time"

	"github.com/moongate-edge/moongate/gateway/config"
	"github.com/moongate-edge/moongate/mqtt/mqtttest"
)

// TestFunctionDeployedWhileSubscribingIsSubscribed: a function deployed
// (functions_dir) while Run subscribes at start (the SUBACK held back by a
// proxy) gets its subscription. Run read the filters, subscribed them, and
// only then was ready; the deploy in between saw it not ready and left the
// subscriptions to Run, which subscribed the list it had read before: the
// broker acknowledged the new function's events and dropped them.
func TestFunctionDeployedWhileSubscribingIsSubscribed(t *testing.T) {
	m := mqtttest.StartMosquitto(t)
	proxy := mqtttest.StartSubackHold(t, m.Addr())
	dataDir, fnDir := t.TempDir(), t.TempDir()
	writeFunction(t, fnDir, "a", recordPayloadLua, "triggers:\n  - mqtt: a/{device}\n")
	cfgYAML := testConfig(dataDir, fnDir, externalMQTT(proxy.URL(), "moongate-startrace"))
	cfg, err := config.Parse("test.yaml", []byte(cfgYAML))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	d, err := NewDaemon(ctx, cfg, slog.New(slog.DiscardHandler))
	if err != nil {
		cancel()
		t.Fatal(err)
	}
	d.FunctionsPoll = 20 * time.Millisecond
	done := make(chan error, 1)
	go func() { done <- d.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		select {
		case <-done:
		case <-time.After(30 * time.Second):
			t.Errorf("daemon did not stop")
		}
	})
	select {
	case <-proxy.Subscribed():
	case <-time.After(20 * time.Second):
		t.Fatal("the gateway never subscribed")
	}
	// The gateway is in Run's SetFilters, its SUBACK held. A new function
	// arrives meanwhile.
	writeFunction(t, fnDir, "b", recordPayloadLua, "triggers:\n  - mqtt: b/{device}\n")
	waitFor(t, 20*time.Second, "function b deployed", func() bool {
		for _, f := range d.Gateway().Functions() {
			if f.Name == "b" {
				return true
			}
		}
		return false
	})
	proxy.Release()
	waitFor(t, 20*time.Second, "ready", d.Gateway().Ready)
	dev := connect(t, m.URL(), "d1", true)
	publish(t, dev, "b/d1", 1, []byte("for b"))
	publish(t, dev, "a/d1", 1, []byte("marker"))
	waitFor(t, 20*time.Second, "function a's record", func() bool { return len(allRecords(t, d.Store(), "a")) == 1 })
	if !poll(5*time.Second, func() bool { return len(allRecords(t, d.Store(), "b")) == 1 }) {
		t.Fatalf("the event for function b (deployed while the gateway subscribed at start) was never processed: gateway %+v", d.Gateway().Stats())
	}
}

const recordPayloadLua = `
function handle(e, ctx)
  return {p = e.payload}
end
`
