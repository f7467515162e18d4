package gateway

import (
	"fmt"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"
)

// TestBackpressure: a slow function and publishers far faster than it. The
// in-memory backlog never passes the inbox limit (intake stops, devices
// wait), the heap stays bounded, and every acknowledged event is processed
// exactly once.
func TestBackpressure(t *testing.T) {
	const clients, perClient, window, limit = 50, 100, 50, 100
	payload := make([]byte, 2048)
	for i := range payload {
		payload[i] = 'x'
	}
	fnDir := t.TempDir()
	writeFunction(t, fnDir, "slow", `
function handle(e)
  local x = 0
  for i = 1, 2000 do x = x + i end
  return {len = #e.payload}
end`, "triggers:\n  - mqtt: devices/{device}/telemetry\n")
	p := startInProcess(t, testConfig(t.TempDir(), fnDir, fmt.Sprintf("pipeline: {inbox_limit: %d, workers: 4}\n", limit)))
	url := "tcp://" + p.d.MQTTAddr().String()

	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	baseHeap := ms.HeapAlloc

	var maxBacklog atomic.Int64
	var peakHeap atomic.Uint64
	stopSampling := make(chan struct{})
	sampled := make(chan struct{})
	go func() {
		defer close(sampled)
		tick := time.NewTicker(time.Millisecond)
		defer tick.Stop()
		n := 0
		for {
			select {
			case <-stopSampling:
				return
			case <-tick.C:
			}
			if b := int64(p.d.Gateway().Stats().Backlog); b > maxBacklog.Load() {
				maxBacklog.Store(b)
			}
			if n++; n%20 == 0 {
				var m runtime.MemStats
				runtime.ReadMemStats(&m)
				if m.HeapAlloc > peakHeap.Load() {
					peakHeap.Store(m.HeapAlloc)
				}
			}
		}
	}()

	var wg sync.WaitGroup
	for c := range clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			cl, err := tryConnect(t, url, fmt.Sprintf("bp%d", c), true, nil)
			if err != nil {
				t.Error(err)
				return
			}
			var toks []paho.Token
			for i := range perClient {
				toks = append(toks, cl.Publish(fmt.Sprintf("devices/bp%d/telemetry", c), 1, false, payload))
				if len(toks) == window || i == perClient-1 {
					for _, tok := range toks {
						if !tok.WaitTimeout(120*time.Second) || tok.Error() != nil {
							t.Errorf("publish: %v", tok.Error())
							return
						}
					}
					toks = toks[:0]
				}
			}
		}()
	}
	wg.Wait()
	st := p.d.Store()
	waitFor(t, 120*time.Second, "all records", func() bool { return len(allRecords(t, st, "slow")) >= clients*perClient })
	close(stopSampling)
	<-sampled

	if n := len(allRecords(t, st, "slow")); n != clients*perClient {
		t.Errorf("records: %d, want %d", n, clients*perClient)
	}
	if b := maxBacklog.Load(); b > limit {
		t.Errorf("in-memory backlog reached %d, limit %d", b, limit)
	}
	growth := int64(peakHeap.Load()) - int64(baseHeap)
	t.Logf("offered %d KiB; max backlog %d; peak heap growth %d KiB; redeliveries recognised %d",
		clients*perClient*len(payload)>>10, maxBacklog.Load(), growth>>10, p.d.Gateway().Stats().Redelivered)
	// The offered load is 10 MiB; the clients hold at most clients x window
	// messages (5 MiB) of it. Without flow control the gateway would hold
	// the rest on top.
	if growth > 48<<20 {
		t.Errorf("heap grew by %d MiB", growth>>20)
	}
}
