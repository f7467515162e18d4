package mqtt

import (
	"context"
	"testing"
	"time"

	"github.com/moongate-edge/moongate/mqtt/mqtttest"
)

// A SetFilters (a deploy adding a trigger) made while connected whose
// SUBACK comes late is tried again on this connection. It returned nil
// ("applied on reconnect") and nothing subscribed again: the client stayed
// not ready (/readyz) until some later reconnect, though the broker had
// answered.
func TestSetFiltersTimeoutRetried(t *testing.T) {
	m := mqtttest.StartMosquitto(t)
	proxy := mqtttest.StartSubackHold(t, m.Addr())
	x, err := NewExternal(ExternalConfig{Broker: proxy.URL(), ClientID: "gw-slow-setfilters", KeepAlive: 60 * time.Second,
		ConnectTimeout: 500 * time.Millisecond, MaxReconnectInterval: time.Second}, testLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	rec := &recorder{}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if err := x.Start(ctx, rec.handle); err != nil { // no filters yet: ready at once
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = x.Close(context.Background()) })
	if !x.Ready() {
		t.Fatal("not ready after Start")
	}
	// A deploy adds a trigger while the broker is busy.
	err = x.SetFilters(ctx, []string{"s/#"})
	t.Logf("SetFilters: %v", err)
	// The broker answers now.
	proxy.Release()
	pub := mustDial(t, m.URL(), "device-sf")
	if err := waitToken(t, pub.Publish("s/1", 1, false, []byte("after"))); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the message", 10*time.Second, func() bool { return rec.len() == 1 })
	deadline := time.Now().Add(10 * time.Second)
	for !x.Ready() {
		if time.Now().After(deadline) {
			t.Fatalf("connected and subscribed (a message arrived), but Ready() is still false 10 s after the broker answered; SetFilters returned %v", err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}
