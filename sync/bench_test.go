package sync

import (
	"bytes"
	"compress/gzip"
	"context"
	"flag"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"runtime/pprof"
	gosync "sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/moongate-edge/moongate/mqtt/mqtttest"
	"github.com/moongate-edge/moongate/store"
)

// benchBacklog is the backlog each benchmark iteration drains. The smoke
// run (-benchtime 1x) uses the default; the figures in docs/performance.md
// use -sync.backlog=1000000.
var benchBacklog = flag.Int("sync.backlog", 20000, "records in the backlog drained by the sync benchmarks")

// fillBacklog writes n records routed to target into a fresh store (fast,
// without fsync), then reopens it with durability always, as a gateway
// runs: the acknowledgements of the drain are durable writes.
func fillBacklog(b *testing.B, target string, n int) *store.Store {
	b.Helper()
	dir := b.TempDir()
	st, err := store.Open(context.Background(), store.Options{Dir: dir, GatewayID: "gw", Durability: store.DurabilityNone, Logger: quietLogger(),
		Quotas: map[string]store.Quota{"records": {MaxBytes: 1 << 40}, "outbox": {MaxBytes: 1 << 40}}})
	if err != nil {
		b.Fatal(err)
	}
	var wg gosync.WaitGroup
	var next atomic.Int64
	errs := make(chan error, 4)
	for range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				start := int(next.Add(100)) - 100
				if start >= n {
					return
				}
				c := &store.Commit{}
				for i := start; i < min(start+100, n); i++ {
					c.Records = append(c.Records, store.Record{Stream: fmt.Sprintf("s%d", i%4), Function: "f", Device: fmt.Sprintf("d%d", i%50),
						EventID: fmt.Sprintf("e%d", i), EventTS: 1764115200000 + int64(i), Data: []byte(fmt.Sprintf(`{"temp":%d.5,"temp_f":%d.9,"seq":%d}`, i%40, i%100, i))})
					c.Records[len(c.Records)-1].Targets = []string{target}
				}
				if _, err := st.Commit(context.Background(), c); err != nil {
					errs <- err
					return
				}
			}
		}()
	}
	wg.Wait()
	select {
	case err := <-errs:
		b.Fatal(err)
	default:
	}
	if err := st.Close(); err != nil {
		b.Fatal(err)
	}
	st, err = store.Open(context.Background(), store.Options{Dir: dir, GatewayID: "gw", Logger: quietLogger(),
		Quotas: map[string]store.Quota{"records": {MaxBytes: 1 << 40}, "outbox": {MaxBytes: 1 << 40}}})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = st.Close() })
	if got := st.OutboxStats(target).Backlog; got != int64(n) {
		b.Fatalf("backlog %d, want %d", got, n)
	}
	return st
}

// drain runs a manager until target's outbox is empty (every record
// acknowledged upstream and deleted from the store) and reports records/s.
func drain(b *testing.B, tc TargetConfig, delivered func() int64) {
	n := *benchBacklog
	var total time.Duration
	for range b.N {
		b.StopTimer()
		st := fillBacklog(b, tc.Name, n)
		var before int64
		if delivered != nil {
			before = delivered()
		}
		if f := os.Getenv("SYNC_BENCH_PROFILE"); f != "" {
			pf, _ := os.Create(f)
			_ = pprof.StartCPUProfile(pf)
			defer pprof.StopCPUProfile()
		}
		b.StartTimer()
		start := time.Now()
		m, stop := startManager(b, st, tc)
		for st.OutboxStats(tc.Name).Backlog > 0 {
			time.Sleep(5 * time.Millisecond) // poll for the end of the drain
		}
		el := time.Since(start)
		total += el
		b.StopTimer()
		stop()
		if got := statusOf(m, tc.Name).Delivered; got != int64(n) {
			b.Fatalf("manager delivered %d of %d records", got, n)
		}
		if delivered != nil {
			if got := delivered() - before; got < int64(n) {
				b.Fatalf("upstream got %d of %d records", got, n)
			}
		}
		_ = st.Close()
	}
	b.ReportMetric(float64(n)*float64(b.N)/total.Seconds(), "records/s")
	b.ReportMetric(0, "ns/op")
}

// BenchmarkDrainHTTP: the backlog to an HTTP upstream on loopback (NDJSON,
// gzip, default batch of 500 records); the server gunzips and counts lines.
func BenchmarkDrainHTTP(b *testing.B) {
	var count atomic.Int64
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		zr, err := gzip.NewReader(r.Body)
		if err != nil {
			http.Error(w, err.Error(), 400)
			return
		}
		body, err := io.ReadAll(zr)
		if err != nil {
			http.Error(w, err.Error(), 400)
			return
		}
		count.Add(int64(bytes.Count(body, []byte{'\n'})))
		w.WriteHeader(http.StatusNoContent)
	}))
	defer srv.Close()
	tc := TargetConfig{Name: "cloud", Type: "http", HTTP: HTTPConfig{URL: srv.URL}}
	drain(b, tc, count.Load)
}

// BenchmarkDrainNATS: the backlog to nats-server -js (file storage,
// duplicate window 2 min) on loopback, default window of 256 acks.
func BenchmarkDrainNATS(b *testing.B) {
	ns := startNATS(b)
	createStream(b, ns.url())
	tc := TargetConfig{Name: "js", Type: "nats", NATS: NATSConfig{URL: ns.url()}}
	drain(b, tc, func() int64 { return int64(max(streamCount(ns.url()), 0)) })
}

// BenchmarkDrainMQTT: the backlog to mosquitto on loopback, QoS 1, default
// window of 256 unacknowledged messages.
func BenchmarkDrainMQTT(b *testing.B) {
	mq := mqtttest.StartMosquitto(b, mqtttest.WithoutPersistence(), mqtttest.WithConfig("max_inflight_messages 0"))
	tc := TargetConfig{Name: "broker", Type: "mqtt", MQTT: MQTTConfig{Broker: mq.URL()}}
	drain(b, tc, nil) // every record was acknowledged by mosquitto (PUBACK); no subscriber counts them
}
