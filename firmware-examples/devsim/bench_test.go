package devsim

import (
	"context"
	"fmt"
	"log/slog"
	"runtime"
	"sync/atomic"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"

	"github.com/moongate-edge/moongate/mqtt"
)

// BenchmarkFleetQoS1 measures the simulator with the embedded broker and a
// Handler that accepts at once (no store, no function): 100 devices, one
// op is one telemetry message published and acknowledged. It is the
// ceiling of what devsim plus the broker can drive on this machine, to read
// next to the gateway's end-to-end figures.
func BenchmarkFleetQoS1(b *testing.B) {
	e, err := mqtt.NewEmbedded(mqtt.EmbeddedConfig{Listen: "127.0.0.1:0", AllowAnonymous: true}, slog.New(slog.DiscardHandler))
	if err != nil {
		b.Fatal(err)
	}
	if err := e.SetFilters(context.Background(), []string{"devices/+/telemetry"}); err != nil {
		b.Fatal(err)
	}
	if err := e.Start(context.Background(), func(context.Context, *mqtt.Message) error { return nil }); err != nil {
		b.Fatal(err)
	}
	defer e.Close(context.Background())
	const devices = 100
	count := max(b.N/devices, 1)
	b.ResetTimer()
	r, err := Run(context.Background(), Config{Broker: "tcp://" + e.Addr().String(), Devices: devices,
		Rate: MaxRate, QoS: 1, Count: count, ConnectRate: 10000, NoStatus: true})
	b.StopTimer()
	if err != nil {
		b.Fatal(err)
	}
	if r.Acked != uint64(devices*count) {
		b.Fatalf("acked %d of %d", r.Acked, devices*count)
	}
	b.ReportMetric(float64(r.Acked)/b.Elapsed().Seconds(), "msg/s")
	b.ReportMetric(r.Latency.P99, "p99-ack-ms")
}

// BenchmarkClientCost compares what one connected device costs in this
// process, broker side included: a paho client (clean session off, one
// subscription, one QoS 1 publish) against a devsim device doing the same.
// It reports goroutines and Go heap per device; ns/op is meaningless.
func BenchmarkClientCost(b *testing.B) {
	const n = 200
	e, err := mqtt.NewEmbedded(mqtt.EmbeddedConfig{Listen: "127.0.0.1:0", AllowAnonymous: true}, slog.New(slog.DiscardHandler))
	if err != nil {
		b.Fatal(err)
	}
	if err := e.SetFilters(context.Background(), []string{"devices/+/telemetry"}); err != nil {
		b.Fatal(err)
	}
	if err := e.Start(context.Background(), func(context.Context, *mqtt.Message) error { return nil }); err != nil {
		b.Fatal(err)
	}
	defer e.Close(context.Background())
	url := "tcp://" + e.Addr().String()
	heap := func() uint64 {
		runtime.GC()
		var m runtime.MemStats
		runtime.ReadMemStats(&m)
		return m.HeapInuse
	}
	// Fresh client ids every iteration: the broker keeps the persistent
	// sessions of earlier ones.
	iter := 0
	b.Run("paho", func(b *testing.B) {
		for range b.N {
			iter++
			g0, h0 := runtime.NumGoroutine(), heap()
			var cs []paho.Client
			for i := range n {
				c := paho.NewClient(paho.NewClientOptions().AddBroker(url).SetClientID(fmt.Sprintf("paho%d-%d", iter, i)).SetCleanSession(false))
				if tok := c.Connect(); !tok.WaitTimeout(30*time.Second) || tok.Error() != nil {
					b.Fatal(tok.Error())
				}
				if tok := c.Subscribe(fmt.Sprintf("devices/paho%d-%d/cmd", iter, i), 1, func(paho.Client, paho.Message) {}); !tok.WaitTimeout(30*time.Second) || tok.Error() != nil {
					b.Fatal(tok.Error())
				}
				if tok := c.Publish(fmt.Sprintf("devices/paho%d-%d/telemetry", iter, i), 1, false, "{}"); !tok.WaitTimeout(30*time.Second) || tok.Error() != nil {
					b.Fatal(tok.Error())
				}
				cs = append(cs, c)
			}
			b.ReportMetric(float64(runtime.NumGoroutine()-g0)/n, "goroutines/device")
			b.ReportMetric(float64(heap()-h0)/n/1024, "heap-KB/device")
			for _, c := range cs {
				c.Disconnect(0)
			}
		}
	})
	b.Run("devsim", func(b *testing.B) {
		for range b.N {
			iter++
			g0, h0 := runtime.NumGoroutine(), heap()
			ctx, cancel := context.WithCancel(context.Background())
			var acked atomic.Int64
			done := make(chan struct{})
			go func() {
				defer close(done)
				_, _ = Run(ctx, Config{Broker: url, Devices: n, QoS: 1, Count: 1, Rate: 100, Linger: time.Minute, ConnectRate: 10000,
					DevicePrefix: fmt.Sprintf("devsim%d-", iter),
					NoStatus:     true, OnAck: func(Ack) { acked.Add(1) }})
			}()
			for acked.Load() < n {
				time.Sleep(time.Millisecond)
			}
			b.ReportMetric(float64(runtime.NumGoroutine()-g0)/n, "goroutines/device")
			b.ReportMetric(float64(heap()-h0)/n/1024, "heap-KB/device")
			cancel()
			<-done
		}
	})
}
