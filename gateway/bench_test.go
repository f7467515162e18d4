package gateway

import (
	"fmt"
	"sync"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"
)

// BenchmarkEndToEndEmbedded measures durable throughput of the whole
// pipeline: 128 devices publish QoS 1 telemetry to the embedded broker (up to
// 16 in flight each), the reference function runs, its record is committed
// with durability "always". One op is one event, from publish to committed
// record.
//
//	go test -run '^$' -bench EndToEnd -benchtime 20000x ./gateway/
func BenchmarkEndToEndEmbedded(b *testing.B) {
	const devices, window = 128, 16
	fnDir := b.TempDir()
	writeFunction(b, fnDir, "reference", referenceLua, referenceManifest)
	p := startInProcess(b, testConfig(b.TempDir(), fnDir, ""))
	url := "tcp://" + p.d.MQTTAddr().String()
	clients := make([]paho.Client, devices)
	for i := range clients {
		clients[i] = connect(b, url, fmt.Sprintf("bench%d", i), true)
	}
	start := p.d.Gateway().Stats().Processed
	b.ReportAllocs()
	b.ResetTimer()
	var wg sync.WaitGroup
	for i, c := range clients {
		n := b.N / devices
		if i < b.N%devices {
			n++
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			topic := fmt.Sprintf("devices/bench%d/telemetry", i)
			toks := make([]paho.Token, 0, window)
			for k := range n {
				toks = append(toks, c.Publish(topic, 1, false, fmt.Sprintf(`{"temp":%d,"hum":40}`, k%100)))
				if len(toks) == window || k == n-1 {
					for _, t := range toks {
						t.Wait()
					}
					toks = toks[:0]
				}
			}
		}()
	}
	wg.Wait()
	deadline := time.Now().Add(5 * time.Minute)
	for p.d.Gateway().Stats().Processed-start < uint64(b.N) {
		if time.Now().After(deadline) {
			b.Fatalf("processed %d of %d", p.d.Gateway().Stats().Processed-start, b.N)
		}
		time.Sleep(time.Millisecond)
	}
	b.StopTimer()
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "events/s")
}
