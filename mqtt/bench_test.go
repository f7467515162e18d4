package mqtt

import (
	"context"
	"fmt"
	"net"
	"runtime"
	"sync/atomic"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"
	"github.com/moongate-edge/moongate/mqtt/mqtttest"
)

// BenchmarkEmbeddedQoS1RoundTrip measures one device publish at QoS 1
// through the embedded broker: paho client -> broker -> Handler -> PUBACK
// -> token complete, sequentially.
func BenchmarkEmbeddedQoS1RoundTrip(b *testing.B) {
	e := startEmbedded(b, EmbeddedConfig{AllowAnonymous: true}, func(ctx context.Context, m *Message) error {
		return nil
	}, "devices/+/telemetry")
	c := mustDial(b, brokerURL(e), "bench")
	payload := []byte(`{"temp":21.5,"hum":40}`)
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		if err := waitToken(b, c.Publish("devices/bench/telemetry", 1, false, payload)); err != nil {
			b.Fatal(err)
		}
	}
	b.StopTimer()
	if st := e.Stats(); st.Accepted != uint64(b.N) {
		b.Fatalf("accepted %d of %d", st.Accepted, b.N)
	}
}

// BenchmarkEmbeddedQoS1Parallel measures throughput with 8 devices
// publishing concurrently.
func BenchmarkEmbeddedQoS1Parallel(b *testing.B) {
	e := startEmbedded(b, EmbeddedConfig{AllowAnonymous: true}, func(ctx context.Context, m *Message) error { return nil }, "devices/#")
	const devices = 8
	work := make(chan struct{}, 64)
	done := make(chan error, devices)
	for i := 0; i < devices; i++ {
		c := mustDial(b, brokerURL(e), fmt.Sprintf("dev-%d", i))
		topic := fmt.Sprintf("devices/dev-%d/telemetry", i)
		go func() {
			for range work {
				if err := waitToken(b, c.Publish(topic, 1, false, []byte(`{"v":1}`))); err != nil {
					done <- err
					return
				}
			}
			done <- nil
		}()
	}
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		work <- struct{}{}
	}
	close(work)
	for i := 0; i < devices; i++ {
		if err := <-done; err != nil {
			b.Fatal(err)
		}
	}
	b.StopTimer()
	if st := e.Stats(); st.Accepted != uint64(b.N) {
		b.Fatalf("accepted %d of %d", st.Accepted, b.N)
	}
}

// BenchmarkEmbeddedClientMemory reports heap plus goroutine stacks per connected idle
// client (100 raw MQTT 3.1.1 clients), the figure that decides how many
// devices fit on a small gateway. ns/op is the time to connect them all.
func BenchmarkEmbeddedClientMemory(b *testing.B) {
	e := startEmbedded(b, EmbeddedConfig{AllowAnonymous: true}, func(ctx context.Context, m *Message) error { return nil }, "#")
	const clients = 100
	var perClient float64
	for i := 0; i < b.N; i++ {
		runtime.GC()
		var before, after runtime.MemStats
		runtime.ReadMemStats(&before)
		conns := make([]net.Conn, clients)
		for j := range conns {
			conns[j] = rawDial(b, e.Addr().String(), fmt.Sprintf("mem-%d-%d", i, j))
		}
		runtime.GC()
		runtime.ReadMemStats(&after)
		perClient = float64(int64(after.HeapInuse+after.StackInuse)-int64(before.HeapInuse+before.StackInuse)) / clients
		for _, c := range conns {
			c.Close()
		}
		waitFor(b, "clients gone", 10*time.Second, func() bool { return e.srv.Clients.Len() == 1 }) // the inline client stays
	}
	b.ReportMetric(perClient, "B/client")
}

// BenchmarkExternalQoS1Throughput measures messages per second through a
// real mosquitto (default max_inflight_messages 20) into External: a
// publisher sends b.N QoS 1 messages as fast as the broker acknowledges them,
// and the clock stops when the Handler has accepted all of them.
func BenchmarkExternalQoS1Throughput(b *testing.B) {
	m := mqtttest.StartMosquitto(b)
	got := newCountdown(b.N)
	startExternal(b, m.URL(), "gw-bench", func(ctx context.Context, msg *Message) error {
		got.add()
		return nil
	}, "bench/#")
	pub := mustDial(b, m.URL(), "bench-pub", func(o *paho.ClientOptions) { o.SetMaxResumePubInFlight(100) })
	payload := []byte(`{"temp":21.5,"hum":40}`)
	b.ResetTimer()
	toks := make([]paho.Token, 0, 256)
	for i := 0; i < b.N; i++ {
		toks = append(toks, pub.Publish("bench/dev", 1, false, payload))
		if len(toks) == cap(toks) {
			for _, t := range toks {
				if err := waitToken(b, t); err != nil {
					b.Fatal(err)
				}
			}
			toks = toks[:0]
		}
	}
	got.wait(b, "handler")
	b.StopTimer()
}

// BenchmarkExternalPublishQoS1: the gateway's local publishes through an
// external broker, one Publish at a time (each waits for its PUBACK) and in
// runs of 256 with PublishAll. A subscriber receives them all.
func BenchmarkExternalPublishQoS1(b *testing.B) {
	for _, mode := range []string{"each", "all"} {
		b.Run(mode, func(b *testing.B) {
			m := mqtttest.StartMosquitto(b)
			x := startExternal(b, m.URL(), "gw-pub-"+mode, func(context.Context, *Message) error { return nil })
			got := newCountdown(b.N)
			sub := mustDial(b, m.URL(), "sub-"+mode)
			if err := waitToken(b, sub.Subscribe("out/#", 1, func(paho.Client, paho.Message) { got.add() })); err != nil {
				b.Fatal(err)
			}
			payload := []byte(`{"fan":"on"}`)
			ctx := context.Background()
			b.ResetTimer()
			if mode == "each" {
				for range b.N {
					if err := x.Publish(ctx, "out/dev/cmd", payload, 1, false); err != nil {
						b.Fatal(err)
					}
				}
			} else {
				run := make([]Outgoing, 0, 256)
				for i := range b.N {
					run = append(run, Outgoing{Topic: "out/dev/cmd", Payload: payload, QoS: 1})
					if len(run) == cap(run) || i == b.N-1 {
						if k, err := x.PublishAll(ctx, run); err != nil {
							b.Fatalf("published %d of %d: %v", k, len(run), err)
						}
						run = run[:0]
					}
				}
			}
			got.wait(b, "subscriber")
			b.StopTimer()
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "msgs/s")
		})
	}
}

// countdown counts arrivals (from any goroutine) and lets a benchmark wait
// until n have come, or fail after a minute.
type countdown struct {
	n    int64
	got  atomic.Int64
	done chan struct{}
}

func newCountdown(n int) *countdown { return &countdown{n: int64(n), done: make(chan struct{})} }

func (c *countdown) add() {
	if c.got.Add(1) == c.n {
		close(c.done)
	}
}

func (c *countdown) wait(b testing.TB, who string) {
	b.Helper()
	select {
	case <-c.done:
	case <-time.After(60 * time.Second):
		b.Fatalf("%s saw %d of %d", who, c.got.Load(), c.n)
	}
}
