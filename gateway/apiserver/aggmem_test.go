package apiserver_test

import (
	"encoding/json"
	"sync"
	"testing"
	"time"
)

// An aggregate reads one numeric field, but store.jsonField decodes each
// record's whole JSON (~20 times its size), and aggregates were not
// bounded in number: 16 concurrent REST aggregates of one read-token
// client over 8 records of ~0.9 MB took 412 MiB (8 over 4 records: ~200).
// At most two run at once now: 71-96 MiB measured (the heap in use counts
// garbage not yet collected), 250 MiB without the bound; the bar is 160.
func TestAggregateMemoryBounded(t *testing.T) {
	e := startDaemon(t, daemonConfig(t.TempDir(), ""))
	e.mustCall(200, "POST", "/v1/functions", adminToken, obj{"name": "big",
		"source": `function handle(event, ctx)
  local p = {}
  for i = 1, 450000 do p[i] = 0 end
  emit("big", {t = 1, p = p})
  return nil
end`,
		"limits": obj{"timeout": "10s", "max_steps": "100000000", "max_memory_bytes": "134217728", "max_effect_bytes": "1000000"}}, nil)
	for i := 0; i < 4; i++ {
		var inv obj
		e.mustCall(200, "POST", "/v1/functions/big:invoke", adminToken, obj{"dry_run": false}, &inv)
		if inv["error"] != "" {
			t.Fatalf("invoke: %v", inv["error"])
		}
	}
	// Two at a time, each decoding every record (slow under -race, beside
	// other packages' tests): the calls may wait longer than the client's
	// usual 30 s.
	e.client.Timeout = 3 * time.Minute
	var sum float64
	var mu sync.Mutex
	grown := peakHeapGrowth(func() {
		var wg sync.WaitGroup
		for i := 0; i < 8; i++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				code, b := e.call("GET", "/v1/records:aggregate?stream=big&field=t", readToken, nil)
				if code != 200 {
					t.Errorf("aggregate: %d %s", code, b)
					return
				}
				var out obj
				if err := json.Unmarshal(b, &out); err != nil {
					t.Error(err)
					return
				}
				c, _ := field(out, "buckets.0.count").(string)
				mu.Lock()
				if c == "4" {
					sum++
				}
				mu.Unlock()
			}()
		}
		wg.Wait()
	})
	t.Logf("8 concurrent REST aggregates over 4 records of ~0.9 MB (answers of one bucket): heap in use grew by up to %d MiB", grown>>20)
	if sum != 8 {
		t.Fatalf("%v of 8 aggregates counted 4 records", sum)
	}
	if grown > 160<<20 {
		t.Fatalf("8 aggregates of one read-token client took %d MiB of heap to answer one bucket each", grown>>20)
	}
}
