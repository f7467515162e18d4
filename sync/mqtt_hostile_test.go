package sync

import (
	"context"
	"log/slog"
	"net"
	"runtime"
	"testing"
	"time"
)

// TestMQTTTargetRefusesHugePacket: an upstream broker (hostile, or
// impersonated on a plain connection) that announces a 256 MiB packet
// loses the connection at once; paho would allocate the whole announced
// length (+256 MiB of heap, held until the keep-alive expired).
func TestMQTTTargetRefusesHugePacket(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	hold := make(chan struct{})
	defer close(hold)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		buf := make([]byte, 4096)
		if _, err := c.Read(buf); err != nil { // CONNECT
			return
		}
		c.Write([]byte{0x20, 0x02, 0x00, 0x00})             // CONNACK, accepted
		c.Write([]byte{0x30, 0xff, 0xff, 0xff, 0x7f, 0x00}) // a PUBLISH of 268,435,455 bytes to come
		<-hold
	}()
	cfg := TargetConfig{Name: "up", Type: "mqtt", MQTT: MQTTConfig{Broker: "tcp://" + ln.Addr().String()}}
	cfg.withDefaults()
	tg, err := newMQTTTarget(cfg, Env{GatewayID: "gw", Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	defer tg.Close()
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := tg.(Connector).Connect(ctx); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for tg.(*mqttTarget).Connected() {
		if time.Now().After(deadline) {
			t.Fatal("still connected after the broker announced a 256 MiB packet")
		}
		time.Sleep(10 * time.Millisecond)
	}
	runtime.ReadMemStats(&after)
	if grew := int64(after.TotalAlloc) - int64(before.TotalAlloc); grew > 64<<20 {
		t.Fatalf("allocated %d MiB for the announced packet", grew>>20)
	}
}
