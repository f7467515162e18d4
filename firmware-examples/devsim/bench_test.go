package devsim

import (
	"context"
	"log/slog"
	"testing"

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
